"""Credentials for a DICOMweb PACS, from the environment or from files it names; never
from a parameter (parameters are printed and stored in Prefect's database), never shown.

RENALFLOW_PACS_TOKEN (a bearer token), or RENALFLOW_PACS_USER with RENALFLOW_PACS_PASSWORD
(basic authentication). Each may instead be given as a file: RENALFLOW_PACS_TOKEN_FILE,
RENALFLOW_PACS_PASSWORD_FILE (the way container secrets are mounted). Dask workers on
other machines need the same variables.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from renalflow.tasks.errors import InputError

TOKEN_ENV = "RENALFLOW_PACS_TOKEN"
USER_ENV = "RENALFLOW_PACS_USER"
PASSWORD_ENV = "RENALFLOW_PACS_PASSWORD"
FILE_SUFFIX = "_FILE"


@dataclass(frozen=True)
class PacsCredentials:
    """What a DICOMweb request carries; the secrets stay out of repr and logs."""

    token: str | None = field(default=None, repr=False)
    user: str | None = None
    password: str | None = field(default=None, repr=False)

    @property
    def kind(self) -> str:
        if self.token:
            return "bearer token"
        if self.user:
            return f"user {self.user!r}"
        return "no credentials"


def _secret(name: str) -> str | None:
    """The value of `name`, or the content of the file `name`_FILE names."""
    value = os.environ.get(name)
    path = os.environ.get(name + FILE_SUFFIX)
    if value and path:
        raise InputError(f"set {name} or {name}{FILE_SUFFIX}, not both")
    if path:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as err:
            raise InputError(
                f"{name}{FILE_SUFFIX} names {path}, which cannot be read ({err.strerror}); "
                "give a readable file"
            ) from err
        value = text.strip()
        if not value:
            raise InputError(f"{name}{FILE_SUFFIX} names {path}, which is empty")
    return value or None


def credentials_from_env() -> PacsCredentials:
    """The DICOMweb credentials this process has (none is fine: an open PACS)."""
    token = _secret(TOKEN_ENV)
    user = os.environ.get(USER_ENV) or None
    password = _secret(PASSWORD_ENV)
    if token and (user or password):
        raise InputError(
            f"set {TOKEN_ENV} (bearer token) or {USER_ENV} and {PASSWORD_ENV} (basic "
            "authentication), not both"
        )
    if bool(user) != bool(password):
        raise InputError(f"basic authentication needs both {USER_ENV} and {PASSWORD_ENV}")
    return PacsCredentials(token=token, user=user, password=password)

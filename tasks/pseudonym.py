"""Keyed pseudonyms: what leaves the radiology department instead of identifiers.

A pseudonym is HMAC-SHA256(key, value) in hex, with a secret key the department keeps.
The same key gives the same pseudonym for the same PatientID on every run, so cohort
studies can follow patients over time; without the key nobody can recompute or reverse
them (a plain hash of a PatientID could be reversed by hashing every possible ID).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping

from renalflow.tasks.errors import InputError

KEY_ENV = "RENALFLOW_PSEUDONYM_KEY"
MIN_KEY_LENGTH = 16

NO_KEY_HELP = (
    "no pseudonymisation key is configured, so renalflow will not write results that "
    "leave the department. Set the environment variable RENALFLOW_PSEUDONYM_KEY to a long "
    'random secret (for example the output of `python -c "import secrets; '
    'print(secrets.token_hex(32))"`), or store it in a Prefect Secret block and pass '
    "--key-secret BLOCK_NAME. Keep the key: the same key gives the same pseudonyms on "
    "every run, and a new key makes new, unlinkable ones."
)


def check_key(key: str) -> bytes:
    """The key as bytes, refusing keys too short to be secret."""
    if len(key.strip()) < MIN_KEY_LENGTH:
        raise InputError(
            f"the pseudonymisation key is {len(key.strip())} characters long; use at least "
            f"{MIN_KEY_LENGTH} random characters (64 hex digits from "
            "`secrets.token_hex(32)` are a good choice)"
        )
    return key.strip().encode("utf-8")


def key_from_env(environ: Mapping[str, str] | None = None) -> bytes | None:
    """The key from RENALFLOW_PSEUDONYM_KEY, or None when it is not set."""
    value = (os.environ if environ is None else environ).get(KEY_ENV)
    return check_key(value) if value else None


def pseudonym(key: bytes, value: str) -> str:
    """HMAC-SHA256 of `value` (a PatientID or UID) under `key`, as 64 hex digits."""
    return hmac.new(key, value.encode("utf-8"), hashlib.sha256).hexdigest()


def normalise_patient_id(value: object) -> str:
    """A PatientID as it is pseudonymised everywhere: text, without the spaces around it
    (DICOM pads values with a space; spreadsheets add stray ones). Nothing else changes:
    case, inner spaces and leading zeros are part of the ID."""
    return str(value).strip()


def patient_pseudonym(key: bytes, patient_id: object) -> str:
    """The one pseudonym of a PatientID, for the results tables and for any outside table
    that should join them (`renalflow pseudonymise`)."""
    return pseudonym(key, normalise_patient_id(patient_id))


def key_id(key: bytes) -> str:
    """A short public fingerprint of the key: rows with different key ids have
    pseudonyms that cannot be linked. Reveals nothing about the key itself."""
    return hmac.new(key, b"renalflow key id", hashlib.sha256).hexdigest()[:12]

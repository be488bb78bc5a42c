"""What the web page decides, as plain functions: its configuration, who may use it
(exposure, token, Host and Origin rules), and the scoring of one upload with the same
conversion, vote and deciding slices as `renalflow score`. flows/web.py only wires
these to HTTP.
"""

from __future__ import annotations

import base64
import hmac
import io
import os
import string
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from renalflow.tasks.config import Label
from renalflow.tasks.convert import convert_file
from renalflow.tasks.errors import InputError
from renalflow.tasks.explain import heatmaps, write_overlay
from renalflow.tasks.inference import cached_model
from renalflow.tasks.ingest import FILE_ERRORS, as_reject
from renalflow.tasks.model import predict_probabilities
from renalflow.tasks.model_dir import read_model_info
from renalflow.tasks.score import ScoreConfig
from renalflow.tasks.upload import MAX_FILES, UploadLimits, original_name
from renalflow.tasks.vote import deciding_slices, malignant_images, vote

LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})
TOKEN_ENV = "RENALFLOW_WEB_TOKEN"
TOKEN_COOKIE = "renalflow_token"
MIN_TOKEN_CHARS = 16
_TOKEN_CHARS = frozenset(string.ascii_letters + string.digits + "-_.~")
RETRY_AFTER_S = 10
"""Our choice: what a busy page asks the browser to wait before trying again."""


@dataclass(frozen=True)
class WebConfig:
    model_dir: str
    workdir: str
    max_upload_mb: int = 500
    max_files: int = MAX_FILES
    keep_uploads: bool = False
    score: ScoreConfig = field(default_factory=ScoreConfig)
    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = field(default=None, repr=False)  # required on every request when set
    allowed_hosts: tuple[str, ...] = ()  # Host names the page answers to besides its own
    max_concurrent: int = 2  # uploads taken at once; more get 503 with Retry-After

    @property
    def limits(self) -> UploadLimits:
        return UploadLimits(max_bytes=self.max_upload_mb * 2**20, max_files=self.max_files)

    @property
    def hosts(self) -> frozenset[str]:
        """Host header values (without port) the page answers to."""
        own = {self.host.lower()} | (set(LOOPBACK) if self.host in LOOPBACK else set())
        return frozenset(own | {h.lower() for h in self.allowed_hosts})


def check_exposure(config: WebConfig) -> None:
    """Refuse to listen beyond this machine without a token (one line, before start)."""
    if config.host not in LOOPBACK and not config.token:
        raise InputError(
            f"--host {config.host} puts the page on the network: give it a token with "
            f"--token-file FILE or {TOKEN_ENV} (every request must then carry it), or keep "
            "the default 127.0.0.1"
        )


def read_token(token_file: str | None) -> str | None:
    """The page's token from --token-file or RENALFLOW_WEB_TOKEN (never printed)."""
    if token_file:
        try:
            token = Path(token_file).read_text().strip()
        except (OSError, UnicodeDecodeError) as err:
            reason = err.strerror if isinstance(err, OSError) else "not text"
            raise InputError(f"cannot read the token file {token_file}: {reason}") from err
        where = f"the token in {token_file}"
    else:
        token = os.environ.get(TOKEN_ENV, "").strip()
        where = TOKEN_ENV
        if not token:
            return None
    if len(token) < MIN_TOKEN_CHARS or not all(c in _TOKEN_CHARS for c in token):
        raise InputError(
            f"{where} must be at least {MIN_TOKEN_CHARS} letters, digits or - _ . ~ "
            "(it travels in a URL and a cookie), e.g. the output of `openssl rand -hex 24`"
        )
    return token


def hostname(netloc: str) -> str:
    """`host:port` or `[::1]:port` -> the host alone, lower case."""
    if netloc.startswith("["):
        return netloc[1 : netloc.find("]")].lower()
    return netloc.rsplit(":", 1)[0].lower() if netloc.count(":") == 1 else netloc.lower()


def _port(netloc: str) -> str:
    tail = netloc.rsplit("]", 1)[-1]
    return tail.rsplit(":", 1)[1] if ":" in tail else ""


def same_origin(origin: str, host_header: str) -> bool:
    """True when a request's Origin (scheme://host[:port]) is the page the Host header
    names: same host and same port (a scheme's default when none is written)."""
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return False  # "null" (sandboxed frames, file:) and anything odd
    default = "443" if parts.scheme == "https" else "80"
    return hostname(parts.netloc) == hostname(host_header) and (_port(parts.netloc) or default) == (
        _port(host_header) or default
    )


def token_matches(given: str | None, token: str) -> bool:
    """A constant-time comparison that any header text can be given to."""
    return given is not None and hmac.compare_digest(given.encode(), token.encode())


def bearer(authorization: str) -> str | None:
    """The credentials of `Authorization: Bearer ...`."""
    scheme, _, credentials = authorization.partition(" ")
    return (credentials.strip() or None) if scheme.lower() == "bearer" else None


def cookie(header: str, name: str) -> str | None:
    """One cookie's value from a Cookie header."""
    for part in header.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None


def score_upload(paths: list[Path], config: WebConfig) -> dict[str, Any]:
    """Convert, score and vote one upload; a JSON-ready result for the page. Only the
    errors a file can cause become its verdict; anything else fails, the file named."""
    info = read_model_info(config.model_dir)
    converted, rejects = [], []
    for path in paths:
        try:
            converted.append((path, convert_file(str(path), info.preprocess, str(path))))
        except FILE_ERRORS as err:  # the file's own defect: a verdict, never a failed upload
            reject = as_reject(str(path), err)
            rejects.append(
                {"file": original_name(path), "code": reject.code.value, "reason": reject.reason}
            )
        except Exception as err:
            # A bug or a storage failure, not a bad file: fail loudly, with the file named.
            err.add_note(f"renalflow: while converting the upload {path}")
            raise
    if not converted:
        reasons = Counter(r["code"] for r in rejects)
        summary = ", ".join(f"{n} {code}" for code, n in reasons.most_common())
        raise InputError(
            "none of the uploaded files is a usable axial CT slice "
            f"({summary or 'no files'}); upload the DICOM files of one CT series"
        )
    patients = {c.header.patient_id for _, c in converted}
    if len(patients) > 1:
        raise InputError(
            f"the upload holds slices of {len(patients)} patients; upload one patient at a time"
        )
    # One slice per SOPInstanceUID, as in the slice store.
    unique = {c.header.sop_instance_uid: c for _, c in converted}
    slices = sorted(unique.values(), key=lambda c: (c.header.z is None, c.header.z or 0.0))
    images = np.stack([c.pixels for c in slices])
    model = cached_model(info.model_dir, info.model_version)
    score = config.score
    probabilities = predict_probabilities(model, images, score.batch_size)
    outcome = vote(probabilities, score.image_threshold, score.vote_threshold)
    decided = outcome.vote.value
    malignant = malignant_images(probabilities, score.image_threshold)
    picks = deciding_slices(probabilities, decided, score.explain_per_side, score.image_threshold)
    maps, method = heatmaps(model, images[picks], decided)
    pictures = []
    for i, heat in zip(picks, maps, strict=True):
        buffer = io.BytesIO()
        header = slices[i].header
        caption = f"P(malignant) {probabilities[i]:.2f}"
        write_overlay(
            images[i], heat, caption, buffer,
            phase=str(header.phase), z=header.z, method=method, target=decided,
        )  # fmt: skip
        pictures.append(
            {
                "probability": float(probabilities[i]),
                "z": slices[i].header.z,
                "side": "winning" if malignant[i] == (decided == Label.MALIGNANT) else "losing",
                "png": "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode(),
            }
        )  # fmt: skip
    return {
        "vote": decided,
        "n_images": outcome.n_images,
        "n_malignant": outcome.n_malignant,
        "fraction_malignant": outcome.fraction_malignant,
        "vote_threshold": score.vote_threshold,
        "image_threshold": score.image_threshold,
        "slices": [
            {"z": c.header.z, "phase": str(c.header.phase), "probability": float(p)}
            for c, p in zip(slices, probabilities, strict=True)
        ],
        "heatmaps": pictures,
        "heatmap_method": method,
        "rejects": rejects,
        "model_version": info.model_version,
        "model_profile": info.profile,
    }

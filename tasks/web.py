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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pandas as pd

from renalflow.tasks.annotations import AnnotationFound, LesionRow, lesion_flags
from renalflow.tasks.config import Label, StudyStatus
from renalflow.tasks.convert import ConvertedSlice, convert_file
from renalflow.tasks.errors import InputError
from renalflow.tasks.explain import heatmaps, write_overlay
from renalflow.tasks.inference import SelectorRef, cached_model, load_selector
from renalflow.tasks.ingest import FILE_ERRORS, as_reject
from renalflow.tasks.model import predict_probabilities
from renalflow.tasks.model_dir import ModelInfo, read_model_info
from renalflow.tasks.score import ScoreConfig
from renalflow.tasks.selection import (
    SeriesDecision,
    annotated,
    header_text,
    select_series,
    select_slices,
)
from renalflow.tasks.selector import selected_slices
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
    selector: str | None = None  # a slice selector's model folder (tasks/selector.py)

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


def selection_rule(selector: SelectorRef | None, all_slices: bool) -> str:
    """What the page tells its users decides which uploaded slices vote."""
    then = (
        f"else the slice selector {selector.model_version} (slices with P(renal mass) of at "
        f"least {selector.threshold:.3g})"
        if selector
        else "else every slice (this page was started for curated slices through the mass)"
        if all_slices
        else "and without one the upload is refused (this page has no slice selector)"
    )
    return (
        "Only abdominal series are screened, one of two reconstructions. The slices that "
        f"vote are those a lesion annotation (DICOM SEG) uploaded with the study marks, {then}."
    )


def score_upload(paths: list[Path], config: WebConfig) -> dict[str, Any]:
    """Convert, select, score and vote one upload; a JSON-ready result for the page.

    Selection as in `renalflow score` (tasks/selection.py): the abdominal series of the
    upload (one of two reconstructions), then the lesion slices a DICOM SEG uploaded with
    them marks, else the page's slice selector's, else (only when the page was started
    with --all-slices) every slice. An upload where nothing can select is refused; one
    where nothing is selected gets `no_mass_found`, never a vote. Only the errors a file
    can cause become its verdict; anything else fails, the file named."""
    info = read_model_info(config.model_dir)
    selector = load_selector(config.selector, info) if config.selector else None
    score = config.score
    converted, rejects, lesions = _convert_upload(paths, info)
    patients = {c.header.patient_id for c in converted}
    if len(patients) > 1:
        raise InputError(
            f"the upload holds slices of {len(patients)} patients; upload one patient at a time"
        )
    # One slice per SOPInstanceUID, as in the slice store; in series, then z, order.
    unique = {c.header.sop_instance_uid: c for c in converted}
    slices = sorted(unique.values(), key=_series_and_z)
    frame = pd.DataFrame([asdict(c.header) for c in slices])
    frame["lesion"] = lesion_flags(frame, pd.DataFrame([asdict(row) for row in lesions]))
    if selector is None and not score.all_slices and not annotated(frame).any():
        raise InputError(
            "nothing says which of these slices show the renal mass: upload the study's "
            "lesion annotation (DICOM SEG) with it, or start the page with --selector "
            "MODEL_DIR (a slice selector), or with --all-slices for curated slices through "
            "the mass only"
        )
    series = select_series(frame, score.series_rule)
    screened = (
        frame["series_instance_uid"]
        .isin(
            series.loc[series["decision"] == SeriesDecision.SELECTED.value, "series_instance_uid"]
        )
        .to_numpy(dtype=bool)
    )
    images = np.stack([c.pixels for c in slices])
    found = np.full(len(slices), np.nan, dtype=np.float32)
    decisions = None
    if selector is not None and screened.any():
        selector_model = cached_model(selector.model_dir, selector.model_version)
        found[screened] = predict_probabilities(selector_model, images[screened], score.batch_size)
        decisions = dict(
            zip(frame["sop_instance_uid"], selected_slices(found, selector.threshold), strict=True)
        )
    selections = select_slices(frame, series, selector=decisions, all_slices=score.all_slices)
    voted_uids = set().union(*(s.selected for s in selections))
    voted = frame["sop_instance_uid"].isin(voted_uids).to_numpy(dtype=bool)
    sources = sorted({s.source.value for s in selections if s.source is not None})
    probabilities = np.full(len(slices), np.nan, dtype=np.float32)
    result: dict[str, Any] = {
        "status": StudyStatus.NO_MASS_FOUND.value,
        "vote": None,
        "n_images": 0,
        "n_malignant": 0,
        "fraction_malignant": None,
        "heatmaps": [],
        "heatmap_method": None,
    }
    if voted.any():
        model = cached_model(info.model_dir, info.model_version)
        probabilities[voted] = predict_probabilities(model, images[voted], score.batch_size)
        chosen = [slices[i] for i in np.flatnonzero(voted)]
        result.update(_vote_and_explain(model, images[voted], probabilities[voted], chosen, score))
    result.update(
        {
            "vote_threshold": score.vote_threshold,
            "image_threshold": score.image_threshold,
            "selection": {
                "source": ", ".join(sources) or None,
                "slices_in_upload": len(slices),
                "slices_screened": int(screened.sum()),
                "slices_voted": int(voted.sum()),
                "selector_version": selector.model_version if selector else None,
                "selector_threshold": selector.threshold if selector else None,
                "series": _series_rows(series),
            },
            "slices": [
                {
                    "series_instance_uid": c.header.series_instance_uid,
                    "z": c.header.z,
                    "phase": str(c.header.phase),
                    "screened": bool(screened[i]),
                    "voted": bool(voted[i]),
                    "probability": _number(probabilities[i]),
                    "selector_probability": _number(found[i]),
                }
                for i, c in enumerate(slices)
            ],
            "rejects": rejects,
            "model_version": info.model_version,
            "model_profile": info.profile,
        }
    )
    return result


def _convert_upload(
    paths: list[Path], info: ModelInfo
) -> tuple[list[ConvertedSlice], list[dict[str, str]], list[LesionRow]]:
    """The upload's slices, the verdicts on its other files, and the lesion truth of
    any DICOM SEG among them."""
    converted: list[ConvertedSlice] = []
    rejects: list[dict[str, str]] = []
    lesions: list[LesionRow] = []
    for path in paths:
        try:
            converted.append(convert_file(str(path), info.preprocess, str(path)))
        except FILE_ERRORS as err:  # the file's own defect: a verdict, never a failed upload
            if isinstance(err, AnnotationFound):
                lesions.extend(err.rows)
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
            f"({summary or 'no files'}); upload the DICOM files of one CT study"
        )
    return converted, rejects, lesions


def _series_and_z(converted: ConvertedSlice) -> tuple[str, bool, float]:
    header = converted.header
    return (header.series_instance_uid, header.z is None, header.z or 0.0)


def _number(value: float) -> float | None:
    return None if np.isnan(value) else float(value)


def _series_rows(series: pd.DataFrame) -> list[dict[str, Any]]:
    """What the page shows of each uploaded series and what selection decided."""
    return [
        {
            "series_instance_uid": row["series_instance_uid"],
            "description": header_text(row["series_description"]),
            "body_part": header_text(row["body_part_examined"]),
            "slices": int(row["slices"]),
            "thickness_mm": _number(float(row["slice_thickness"]))
            if row["slice_thickness"] is not None
            else None,
            "decision": row["decision"],
            "reason": row["reason"],
        }
        for row in series.to_dict("records")
    ]


def _vote_and_explain(
    model: Any,
    images: np.ndarray,
    probabilities: np.ndarray,
    slices: list[ConvertedSlice],
    score: ScoreConfig,
) -> dict[str, Any]:
    """The vote over the selected slices and heat maps of those that decided it."""
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
                "z": header.z,
                "side": "winning" if malignant[i] == (decided == Label.MALIGNANT) else "losing",
                "png": "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode(),
            }
        )  # fmt: skip
    return {
        "status": StudyStatus.VOTED.value,
        "vote": decided,
        "n_images": outcome.n_images,
        "n_malignant": outcome.n_malignant,
        "fraction_malignant": outcome.fraction_malignant,
        "heatmaps": pictures,
        "heatmap_method": method,
    }

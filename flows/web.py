"""`renalflow web`: a page where a urologist uploads one patient's CT series and sees
the vote, the share of malignant slices against the 51% line, the probability of every
slice along z, and heat maps of the slices that decided the vote.

Uploads are converted with the preprocessing the model was trained on and scored with
the same functions and thresholds as `renalflow score`, so the page and the batch
scorer give the same vote for the same series. Files land in a private folder under
the working directory and are removed after scoring unless the server keeps them.
"""

import base64
import io
import shutil
import tempfile
import uuid
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from renalflow.flows.web_page import render_page
from renalflow.tasks.config import Label, Profile
from renalflow.tasks.convert import convert_file
from renalflow.tasks.errors import InputError
from renalflow.tasks.explain import heatmaps, write_overlay
from renalflow.tasks.inference import cached_model
from renalflow.tasks.ingest import as_reject
from renalflow.tasks.model import predict_probabilities
from renalflow.tasks.model_dir import read_model_info
from renalflow.tasks.score import ScoreConfig
from renalflow.tasks.vote import deciding_slices, malignant_images, vote


@dataclass(frozen=True)
class WebConfig:
    model_dir: str
    workdir: str
    max_upload_mb: int = 500
    max_files: int = 3000
    keep_uploads: bool = False
    score: ScoreConfig = field(default_factory=ScoreConfig)


def _safe_name(name: str) -> str:
    """A file name with no folders in it (uploads never choose where they land)."""
    base = Path(name.replace("\\", "/")).name
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in base) or "file"


def save_uploads(files: list[tuple[str, bytes]], folder: Path, config: WebConfig) -> list[Path]:
    """Write uploaded files (and the members of uploaded zips) into `folder` only."""
    saved: list[Path] = []
    total = 0
    limit = config.max_upload_mb * 2**20

    def add(name: str, data: bytes) -> None:
        nonlocal total
        total += len(data)
        if total > limit:
            raise InputError(
                f"the upload is larger than {config.max_upload_mb} MB; send one series "
                "at a time or ask for a higher --max-upload-mb"
            )
        if len(saved) >= config.max_files:
            raise InputError(f"more than {config.max_files} files; send one series at a time")
        path = folder / f"{len(saved):05d}-{_safe_name(name)}"
        path.write_bytes(data)
        saved.append(path)

    for name, data in files:
        if name.lower().endswith(".zip") or data[:4] == b"PK\x03\x04":
            try:
                archive = zipfile.ZipFile(io.BytesIO(data))
            except zipfile.BadZipFile as err:
                raise InputError(f"{_safe_name(name)} is not a readable zip file") from err
            for member in archive.infolist():
                if member.is_dir():
                    continue
                if member.file_size > limit:
                    raise InputError(f"{member.filename} in the zip is too large")
                add(member.filename, archive.read(member))
        else:
            add(name, data)
    return saved


def score_upload(paths: list[Path], config: WebConfig) -> dict[str, Any]:
    """Convert, score and vote one upload; a JSON-ready result for the page."""
    info = read_model_info(config.model_dir)
    converted, rejects = [], []
    for path in paths:
        try:
            converted.append((path, convert_file(str(path), info.preprocess)))
        except Exception as err:  # every file gets a verdict; none fails the upload
            reject = as_reject(str(path), err)
            rejects.append(
                {"file": path.name.split("-", 1)[-1], "code": reject.code.value,
                 "reason": reject.reason}
            )  # fmt: skip
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


def create_app(config: WebConfig) -> Any:
    """The FastAPI application (pages and API); nothing is loaded until it is asked."""
    # FastAPI comes with the `web` extra: only `renalflow web` needs it.
    from fastapi import FastAPI, File, UploadFile
    from fastapi.responses import HTMLResponse, JSONResponse

    app = FastAPI(title="renalflow", docs_url=None, redoc_url=None)
    workdir = Path(config.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    info = read_model_info(config.model_dir)  # refuse to start without a model

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        note = "" if info.profile == Profile.PAPER else "cpu-demo model: not the paper's network."
        model = f"{info.model_version} ({info.profile})"
        return render_page(model, note, config.score.vote_threshold)

    @app.post("/api/score")
    async def score(files: list[UploadFile] = File(...)) -> Any:  # noqa: B008
        folder = Path(tempfile.mkdtemp(prefix=f"upload-{uuid.uuid4().hex[:8]}-", dir=workdir))
        try:
            uploads = [(f.filename or "file", await f.read()) for f in files]
            paths = save_uploads(uploads, folder, config)
            result = score_upload(paths, config)
            result["kept_in"] = str(folder) if config.keep_uploads else None
            return result
        except InputError as err:
            return JSONResponse({"error": str(err)}, status_code=422)
        finally:
            if not config.keep_uploads:
                shutil.rmtree(folder, ignore_errors=True)

    return app

"""flows/demo.py: the demo checks its folder before any step."""

from __future__ import annotations

import pytest

from renalflow.flows.cli import main


def test_demo_refuses_a_leftover_store_resized_otherwise_before_any_step(tmp_path, capsys):
    from renalflow.tasks.config import PreprocessConfig
    from renalflow.tasks.store import check_manifest

    config = PreprocessConfig()  # the paper's nearest, as `renalflow ingest` makes stores
    check_manifest(str(tmp_path / "store"), config.to_dict(), config.version)
    assert main(["demo", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "was made with nearest resizing, this demo resizes with box" in err
    assert "--interpolation nearest" in err
    assert not (tmp_path / "synthetic").exists()


@pytest.mark.slow
def test_demo_pacs_screens_a_local_orthanc_over_dicomweb(
    prefect_api, tmp_path, capsys, monkeypatch
):
    """`renalflow demo --pacs` at a tiny size: Orthanc started on loopback, the screening
    archive sent to it, scored over DICOMweb, one SR per study back on the PACS."""
    from renalflow.tasks.pseudonym import KEY_ENV
    from renalflow.tasks.query import run_query

    monkeypatch.delenv(KEY_ENV, raising=False)  # the demo sets its own; undone after
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--patients", "8", "--screening", "2", "--workers", "1",
            "--selector-patients", "6", "--selector-epochs", "1"]  # fmt: skip
    assert main([*args, "--pacs"]) == 0
    printed = capsys.readouterr().out
    assert "8/9 score from a PACS: Orthanc on loopback, over DICOMweb" in printed
    assert "6/9 train + evaluate the slice selector" in printed
    assert "--report-to-pacs" in printed
    votes = run_query(str(out / "results-pacs"), "select archive_uri from study_votes")
    assert votes.num_rows == 2
    assert all(
        uri.startswith("dicomweb+http://127.0.0.1:") for uri in votes["archive_uri"].to_pylist()
    )
    assert "the PACS now lists 2 renalflow SR series" in printed

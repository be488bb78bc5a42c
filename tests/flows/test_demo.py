"""flows/demo.py: the demo checks its folder before any step."""

from __future__ import annotations

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

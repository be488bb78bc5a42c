import json
from pathlib import Path

import pytest

from renalflow.flows.cli import build_parser, main


def test_help_explains_each_command(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for command in ("synth", "ingest", "demo"):
        assert command in out
    assert "51% majority vote" in out


def test_ingest_help_shows_paper_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["ingest", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "default nearest, as the paper's Keras load_img" in out
    assert "--dask-address" in out and "--labels" in out


def test_ingest_keeps_the_papers_resize_and_the_demo_averages():
    parse = build_parser().parse_args
    assert parse(["ingest", "a", "--store", "s"]).interpolation == "nearest"
    assert parse(["demo"]).interpolation == "box"
    assert parse(["demo", "--interpolation", "nearest"]).interpolation == "nearest"


def test_workers_and_dask_address_are_exclusive(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(
            ["ingest", "a", "--store", "s", "--workers", "2", "--dask-address", "x"]
        )
    assert "not allowed with argument" in capsys.readouterr().err


def test_train_region_and_weight_averaging_options(capsys):
    parse = build_parser().parse_args
    base = ["train", "--store", "s", "--model-dir", "m"]
    args = parse([*base, "--region", "0.2,0.9,0.1,0.9", "--ema", "0.995"])
    assert args.region == (0.2, 0.9, 0.1, 0.9) and args.ema == 0.995
    args = parse([*base, "--region", "full", "--ema", "none", "--schedule", "constant"])
    assert args.region == () and args.ema == 0.0 and args.schedule == "constant"
    with pytest.raises(SystemExit):
        parse([*base, "--region", "0.2,0.9"])
    assert "TOP,BOTTOM,LEFT,RIGHT as fractions" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse([*base, "--ema", "1.5"])
    assert "a momentum between 0 and 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse([*base, "--region", "0.9,0.2,0.1,0.8"])
    assert "top < bottom" in capsys.readouterr().err
    assert parse([*base, "--ema", "0.0"]).ema == 0.0


def test_contradicting_train_settings_are_a_clear_error(tmp_path: Path, capsys):
    where = ["--store", str(tmp_path), "--model-dir", str(tmp_path / "m")]
    code = main(["train", *where, "--schedule", "cosine", "--decay-after", "4"])
    assert code == 2
    err = capsys.readouterr().err
    assert "not with schedule cosine; see renalflow train --help" in err


def test_synth_writes_archive_labels_and_seed_record(tmp_path: Path, capsys):
    assert (
        main(
            [
                "synth",
                str(tmp_path / "out"),
                "--patients",
                "2",
                "--seed",
                "9",
                "--max-slices-per-series",
                "4",
                "--jobs",
                "1",
            ]
        )
        == 0
    )
    record = json.loads((tmp_path / "out" / "synth.json").read_text())
    assert record["seed"] == 9 and record["patients"] == 2 and record["slices"] > 0
    assert (tmp_path / "out" / "labels.csv").read_text().startswith("patient_id,label,histology")
    assert "2 patients" in capsys.readouterr().out


def test_missing_archive_fails_fast_with_a_clear_message(tmp_path: Path, capsys):
    code = main(["ingest", str(tmp_path / "nowhere"), "--store", str(tmp_path / "store")])
    assert code == 2
    err = capsys.readouterr().err
    assert "does not exist; give the folder that holds the DICOM files" in err
    assert not (tmp_path / "store").exists()


def test_bad_label_is_reported_with_its_line(tmp_path: Path, capsys):
    (tmp_path / "archive").mkdir()
    labels = tmp_path / "labels.csv"
    labels.write_text("patient_id,label\nP1,benign\nP2,cancer\n")
    code = main(
        [
            "ingest",
            str(tmp_path / "archive"),
            "--store",
            str(tmp_path / "s"),
            "--labels",
            str(labels),
        ]
    )
    assert code == 2
    assert "line 3: label 'cancer' for patient P2 must be 'benign' or 'malignant'" in (
        capsys.readouterr().err
    )


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

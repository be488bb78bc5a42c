import json
from pathlib import Path

import pytest

from renalflow.flows.cli import UsageError, build_parser, main, parse_params


def test_help_explains_each_command(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for command in ("synth", "ingest", "demo"):
        assert command in out
    assert "51% majority vote" in out
    assert "exit codes" in out and "%%" not in out


def test_version_is_the_installed_distributions(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"renalflow {version('renalflow')}"


def test_every_help_text_is_clean(capsys):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for command, subparser in sub.choices.items():
        text = subparser.format_help()
        assert "%%" not in text, command
        assert "--verbose" in text and "--debug" in text, command


def test_one_name_per_concept_across_commands():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    options = {o for p in sub.choices.values() for a in p._actions for o in a.option_strings}
    # Outputs are --out, workers are --workers, archives are positional ARCHIVE.
    for retired in ("--report", "--workdir", "--jobs", "--archive", "--batch-size-ingest"):
        assert retired not in options
    for command in ("ingest", "score", "serve"):
        positionals = [a.dest for a in sub.choices[command]._actions if not a.option_strings]
        assert positionals == ["archive"], command


def test_ingest_help_shows_paper_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["ingest", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "resize filter (paper: nearest, as the paper's Keras load_img) (default nearest)" in out
    assert "--dask-address" in out and "--labels" in out


def test_ingest_keeps_the_papers_resize_and_the_demo_averages():
    assert parse_params(["ingest", "a", "--store", "s"]).interpolation == "nearest"
    assert parse_params(["demo"]).interpolation == "box"
    assert parse_params(["demo", "--interpolation", "nearest"]).interpolation == "nearest"


def test_options_left_out_take_the_models_defaults():
    from renalflow.tasks.config import VOTE_THRESHOLD, PreprocessConfig

    params = parse_params(["score", "a", "--model-dir", "m", "--results", "r"])
    assert params.vote_threshold == VOTE_THRESHOLD
    ingest = parse_params(["ingest", "a", "--store", "s"])
    assert ingest.preprocess_config() == PreprocessConfig()


def test_a_value_the_model_refuses_names_the_option():
    with pytest.raises(UsageError, match=r"--size: .*greater than or equal to 8"):
        parse_params(["ingest", "a", "--store", "s", "--size", "3"])
    with pytest.raises(UsageError, match="--vote-threshold"):
        parse_params(["score", "a", "--model-dir", "m", "--results", "r", "--vote-threshold", "2"])


def test_usage_mistakes_exit_2_with_one_line(tmp_path, capsys):
    code = main(["ingest", str(tmp_path), "--store", "s", "--workers", "0"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("renalflow ingest: error: --workers")


def test_workers_and_dask_address_are_exclusive(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(
            ["ingest", "a", "--store", "s", "--workers", "2", "--dask-address", "x"]
        )
    assert "not allowed with argument" in capsys.readouterr().err


def test_train_region_and_weight_averaging_options():
    parse = parse_params
    base = ["train", "--store", "s", "--model-dir", "m"]
    args = parse([*base, "--region", "0.2,0.9,0.1,0.9", "--ema", "0.995"])
    assert args.region == (0.2, 0.9, 0.1, 0.9) and args.ema == 0.995
    args = parse([*base, "--region", "full", "--ema", "none", "--schedule", "constant"])
    assert args.region == () and args.ema == 0.0 and args.schedule == "constant"
    with pytest.raises(UsageError, match="TOP,BOTTOM,LEFT,RIGHT as fractions"):
        parse([*base, "--region", "0.2,0.9"])
    with pytest.raises(UsageError, match="a momentum between 0 and 1"):
        parse([*base, "--ema", "1.5"])
    with pytest.raises(UsageError, match="top < bottom"):
        parse([*base, "--region", "0.9,0.2,0.1,0.8"])
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
                "--out",
                str(tmp_path / "out"),
                "--patients",
                "2",
                "--seed",
                "9",
                "--max-slices-per-series",
                "4",
                "--lesion-only",
                "--workers",
                "1",
            ]
        )
        == 0
    )
    record = json.loads((tmp_path / "out" / "synth.json").read_text())
    assert record["seed"] == 9 and record["patients"] == 2 and record["slices"] > 0
    assert record["lesion_only"] is True and record["max_slices_per_series"] == 4
    assert (tmp_path / "out" / "labels.csv").read_text().startswith("patient_id,label,histology")
    assert "2 patients" in capsys.readouterr().out
    assert not (tmp_path / "out" / "lesions.csv").exists()


def test_synth_writes_whole_studies_with_their_lesion_truth_by_default(tmp_path: Path, capsys):
    out = tmp_path / "out"
    small = ["--matrix", "64", "--min-study-slices", "10", "--max-study-slices", "14"]
    args = ["synth", "--out", str(out), "--patients", "2", "--seed", "9", "--workers", "1"]
    assert main([*args, *small, "--chest-share", "1"]) == 0
    record = json.loads((out / "synth.json").read_text())
    assert record["lesion_only"] is False and record["studies"]["chest"] == 2
    assert record["study_slices"] == [10, 14] and record["matrix"] == 64
    assert record["seg_objects"] == record["lesion_series"] > 0
    printed = capsys.readouterr().out
    assert "lesion SEG objects" in printed and str(out / "lesions.csv") in printed
    assert (out / "series.csv").exists()


def test_synth_refuses_study_bounds_that_cross(tmp_path: Path, capsys):
    args = ["synth", "--out", str(tmp_path), "--min-study-slices", "50"]
    assert main([*args, "--max-study-slices", "40"]) == 2
    assert "--min-study-slices 50 is above --max-study-slices 40" in capsys.readouterr().err


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


def test_query_describe_prints_the_data_dictionary(capsys):
    assert main(["query", "--describe", "--format", "csv"]) == 0
    out = capsys.readouterr().out
    assert out.startswith('"column","tables","meaning"\n')
    assert '"in_training","study_votes, patient_votes"' in out
    assert '"outcome","reference_outcomes"' in out


@pytest.mark.parametrize(
    ("argv", "reason"),
    [
        (["query"], "give the SQL and --results"),
        (["query", "select 1", "--describe"], "SQL or --describe, not both"),
        (["extract", "--out", "x"], "give the SQL and --results, or --manifest"),
        (["extract", "--manifest", "m.json", "--as-of", "3", "--out", "x"], "give neither"),
    ],
)
def test_query_and_extract_say_what_they_need(argv, reason, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert reason in err and err.count("\n") == 1


def test_pseudonymise_under_another_key_ends_in_one_line(tmp_path, monkeypatch, capsys):
    from tests.tasks.test_results import score_cohort

    score_cohort(str(tmp_path / "R"), {"P1": 0.8})
    (tmp_path / "o.csv").write_text("patient_id,outcome\nP1,benign\n")
    monkeypatch.setenv("RENALFLOW_PSEUDONYM_KEY", "another-department-key-0123456789")
    argv = ["pseudonymise", str(tmp_path / "o.csv"), "--results", str(tmp_path / "R")]
    assert main([*argv, "--out", str(tmp_path / "p.csv")]) == 2
    err = capsys.readouterr().err
    assert "was written under key id" in err and err.count("\n") == 1
    assert "another-department-key" not in err and not (tmp_path / "p.csv").exists()

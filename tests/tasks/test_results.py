"""The Delta results table: idempotent merges, concurrent writers, time travel, queries."""

from __future__ import annotations

import json
import multiprocessing
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from renalflow.tasks.config import InTraining, SelectionSource
from renalflow.tasks.errors import InputError, StoreError
from renalflow.tasks.pseudonym import patient_pseudonym, pseudonym
from renalflow.tasks.query import format_result, run_query
from renalflow.tasks.results import (
    COLUMN_DOCS,
    DESCRIBED,
    FORBIDDEN_COLUMNS,
    PATIENT_VOTES,
    PATIENT_VOTES_SCHEMA,
    SLICE_SCORES,
    SLICE_SCORES_SCHEMA,
    STUDY_VOTES,
    STUDY_VOTES_SCHEMA,
    SelectorUsed,
    data_dictionary,
    ensure_tables,
    history,
    merge_rows,
    migrate_results,
    open_table,
    parse_as_of,
    result_rows,
    scored_studies,
    tally_votes,
    write_results,
)
from renalflow.tasks.score import ScoreConfig
from renalflow.tasks.selection import StudySelection
from tests.tasks.test_score import INFO, KEY, inventory


def vote_rows(studies: list[str], model: str = "m1", n_images: int = 12) -> pa.Table:
    now = datetime(2026, 11, 27, 2, 0, tzinfo=UTC)
    rows = [
        {
            "patient_key": f"p-{s}",
            "study_key": s,
            "key_id": "k",
            "study_year_month": "2017-03",
            "cohort": "screening",
            "manufacturer": "SIEMENS",
            "phases": "arterial,venous",
            "n_series": 2,
            "n_images": n_images,
            "n_malignant": 9,
            "fraction_malignant": 0.75,
            "status": "voted",
            "vote": "malignant",
            "vote_threshold": 0.51,
            "image_threshold": 0.5,
            "mean_probability": 0.7,
            "slices_in_study": n_images,
            "selection_source": "all",
            "selector_version": None,
            "selector_threshold": None,
            "series_used": "",
            "series_skipped": "",
            "reference_label": None,
            "qc_too_few_images": False,
            "qc_noncontrast_only": False,
            "qc_flags": "",
            "model_version": model,
            "model_profile": "cpu-demo",
            "preprocess_version": "pv",
            "scored_at": now,
            "flow_run_id": "run",
            "archive_uri": "/archive",
        }
        for s in studies
    ]
    return pa.Table.from_pylist(rows, schema=STUDY_VOTES_SCHEMA)


@pytest.fixture
def results(tmp_path) -> str:
    uri = str(tmp_path / "R")
    ensure_tables(uri)
    return uri


def count(results: str, sql: str = "select count(*) from study_votes") -> int:
    return int(run_query(results, sql).column(0)[0].as_py())


def test_merge_is_idempotent_and_model_versions_keep_their_own_rows(results):
    assert merge_rows(results, STUDY_VOTES, vote_rows(["a", "b"]))["inserted"] == 2
    assert merge_rows(results, STUDY_VOTES, vote_rows(["a", "b"]))["inserted"] == 0
    assert merge_rows(results, STUDY_VOTES, vote_rows(["b", "c"]))["inserted"] == 1
    assert merge_rows(results, STUDY_VOTES, vote_rows(["a"], model="m2"))["inserted"] == 1
    assert count(results) == 4
    assert scored_studies(results, "m1") == {"a": 12, "b": 12, "c": 12}
    assert scored_studies(results, "m2") == {"a": 12}


def test_a_study_with_more_images_replaces_its_vote(results):
    merge_rows(results, STUDY_VOTES, vote_rows(["a"]))
    written = merge_rows(
        results,
        STUDY_VOTES,
        vote_rows(["a"], n_images=20),
        replace_when="t.n_images <> s.n_images",
    )
    assert written == {"inserted": 0, "updated": 1}
    assert scored_studies(results, "m1") == {"a": 20}


def test_identifier_columns_are_refused(results):
    rows = vote_rows(["a"]).append_column("patient_id", pa.array(["PAT00001"]))
    with pytest.raises(InputError, match="identifier"):
        merge_rows(results, STUDY_VOTES, rows)
    assert count(results) == 0


def _merge_in_process(results: str, studies: list[str], start: float) -> None:
    import time

    while time.time() < start:
        time.sleep(0.001)
    merge_rows(results, STUDY_VOTES, vote_rows(studies))


def test_concurrent_writers_neither_duplicate_nor_lose_rows(results):
    import time

    start = time.time() + 1.5
    ctx = multiprocessing.get_context("spawn")
    # Four processes write overlapping sets of studies at the same moment.
    sets = [["a", "b", "c"], ["b", "c", "d"], ["c", "d", "e"], ["a", "e", "f"]]
    procs = [ctx.Process(target=_merge_in_process, args=(results, s, start)) for s in sets]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    keys = run_query(results, "select study_key from study_votes order by 1").column(0)
    assert keys.to_pylist() == ["a", "b", "c", "d", "e", "f"]


def test_as_of_reads_an_earlier_version_by_number_and_by_time(results):
    merge_rows(results, STUDY_VOTES, vote_rows(["a"]))
    first = datetime.now(UTC)
    import time

    time.sleep(1.1)
    merge_rows(results, STUDY_VOTES, vote_rows(["b", "c"]))
    versions = [h["version"] for h in history(results)]
    assert versions == [2, 1, 0]
    assert count(results) == 3
    assert int(run_query(results, "select count(*) from study_votes", 1).column(0)[0].as_py()) == 1
    assert (
        int(run_query(results, "select count(*) from study_votes", first).column(0)[0].as_py()) == 1
    )
    assert parse_as_of("1") == 1
    assert parse_as_of("2026-11-27T02:00:00Z") == datetime(2026, 11, 27, 2, tzinfo=UTC)
    with pytest.raises(InputError, match="version number"):
        parse_as_of("yesterday")
    with pytest.raises(InputError, match="no version"):
        open_table(results, STUDY_VOTES, 99)
    with pytest.raises(InputError):
        run_query(results, "select 1", first - timedelta(days=365))


def test_query_formats(results, tmp_path):
    merge_rows(results, STUDY_VOTES, vote_rows(["a", "b"]))
    table = run_query(
        results, "select vote, count(*) as n, max(scored_at) as t from study_votes group by vote"
    )
    text = format_result(table, "table")
    assert "malignant" in text and "(1 row)" in text
    assert format_result(table, "csv").splitlines()[0] == '"vote","n","t"'
    parsed = json.loads(format_result(table, "json"))
    assert parsed[0]["vote"] == "malignant" and parsed[0]["n"] == 2
    assert parsed[0]["t"].startswith("2026-11-27T02:00:00")
    path = tmp_path / "out.parquet"
    path.write_bytes(format_result(table, "parquet"))  # type: ignore[arg-type]
    assert pq.read_table(path).num_rows == 1
    # Filters on strings and self-joins, as in the README's examples.
    one = run_query(results, "select count(*) from study_votes where study_key = 'a'")
    assert one.column(0)[0].as_py() == 1
    pairs = run_query(
        results,
        "select count(*) from study_votes a join study_votes b using (study_key) "
        "where a.model_version = 'm1' and b.model_version = 'm1'",
    )
    assert pairs.column(0)[0].as_py() == 2
    with pytest.raises(InputError, match="query failed"):
        run_query(results, "select nonsense from study_votes")


def test_reading_a_missing_table_says_how_to_make_one(tmp_path):
    with pytest.raises(StoreError, match="renalflow score"):
        open_table(str(tmp_path / "nothing"), SLICE_SCORES)


def test_cohort_report_summarises_votes_by_year_vendor_and_phase(results, tmp_path):
    from renalflow.tasks.report import cohort_report

    merge_rows(results, STUDY_VOTES, vote_rows(["a", "b"]))
    merge_rows(results, STUDY_VOTES, vote_rows(["a"], model="m2"))
    path = cohort_report(results, tmp_path / "cohort").path
    page = path.read_text()
    for title in ("Votes by study year", "Votes by scanner vendor", "Votes by phase mix"):
        assert title in page
    assert page.count("data:image/png;base64,") == 3
    assert "<td>2017</td><td>m1</td><td>0</td><td>2</td>" in page
    assert "arterial,venous" in page and "SIEMENS" in page
    pinned = cohort_report(results, tmp_path / "pinned", 1).path.read_text()
    assert "m2" not in pinned.split("Model versions")[1].split("</table>")[0]


# The rows of R built from scored slices (moved here from test_score with result_rows).


def test_votes_follow_the_51_percent_rule_and_flag_qc():
    frame = inventory(
        {
            "1.1": ("PAT1", 10, ["arterial", "venous"]),  # 6 of 10 malignant -> malignant
            "1.2": ("PAT2", 10, ["venous"]),  # 5 of 10 -> benign (a tie is not 51%)
            "1.3": ("PAT3", 4, ["noncontrast"]),  # few images, no contrast
        }
    )
    probabilities = {}
    for study, positives in (("1.1", 6), ("1.2", 5), ("1.3", 4)):
        uids = frame.loc[frame["study_instance_uid"] == study, "sop_instance_uid"]
        for i, uid in enumerate(uids):
            probabilities[uid] = 0.9 if i < positives else 0.1
    slices, votes = result_rows(frame, probabilities, KEY, INFO, ScoreConfig(), "/archive", "run-1")
    by_study = {r["study_key"]: r for r in votes.to_pylist()}
    first = by_study[pseudonym(KEY, "1.1")]
    assert first["vote"] == "malignant" and first["n_malignant"] == 6 and first["n_series"] == 2
    assert first["phases"] == "arterial,venous" and first["study_year_month"] == "2017-03"
    assert first["patient_key"] == pseudonym(KEY, "PAT1")
    assert by_study[pseudonym(KEY, "1.2")]["vote"] == "benign"
    third = by_study[pseudonym(KEY, "1.3")]
    assert third["qc_too_few_images"] and third["qc_noncontrast_only"]
    assert third["qc_flags"] == "too_few_images,noncontrast_only"
    assert slices.num_rows == 24 and votes.num_rows == 3


def test_no_identifier_reaches_the_result_rows():
    frame = inventory({"1.2.840.99.1": ("SECRET-PATIENT-ID", 10, ["venous"])})
    probabilities = dict.fromkeys(frame["sop_instance_uid"], 0.7)
    tables = result_rows(frame, probabilities, KEY, INFO, ScoreConfig(), "/archive", "r")
    identifiers = {"SECRET-PATIENT-ID", "1.2.840.99.1", "20170314", *frame["sop_instance_uid"]}
    identifiers |= set(frame["series_instance_uid"])
    for table in tables:
        assert not FORBIDDEN_COLUMNS & set(table.column_names)
        for column in table.columns:
            values = {str(v) for v in column.to_pylist()}
            assert not values & identifiers


def test_every_planned_slice_must_be_scored():
    frame = inventory({"1.1": ("PAT1", 3, ["venous"])})
    with pytest.raises(Exception, match="never scored"):
        result_rows(frame, {}, KEY, INFO, ScoreConfig(), "/archive", "r")


def test_tally_counts_votes_and_qc_flags():
    frame = inventory({"1.1": ("PAT1", 4, ["noncontrast"]), "1.2": ("PAT2", 30, ["venous"])})
    probabilities = dict.fromkeys(frame["sop_instance_uid"], 0.9)
    _, votes = result_rows(frame, probabilities, KEY, INFO, ScoreConfig(), "/archive", "r")
    assert tally_votes(votes) == (
        {"malignant": 2},
        {"too_few_images": 1, "noncontrast_only": 1},
    )


def test_write_results_writes_scores_then_votes_and_replaces_grown_studies(tmp_path):
    results = str(tmp_path / "R")
    ensure_tables(results)
    frame = inventory({"1.1": ("PAT1", 20, ["venous"])})
    probabilities = dict.fromkeys(frame["sop_instance_uid"], 0.9)
    slices, votes = result_rows(frame, probabilities, KEY, INFO, ScoreConfig(), "/archive", "r1")
    assert write_results(results, slices, votes, "r1") == {
        "slice_rows_inserted": 20,
        "vote_rows_inserted": 1,
        "vote_rows_updated": 0,
        "patient_rows_inserted": 1,
        "patient_rows_updated": 0,
    }
    assert write_results(results, slices, votes, "r2")["vote_rows_inserted"] == 0
    grown = inventory({"1.1": ("PAT1", 25, ["venous"])})
    probabilities = dict.fromkeys(grown["sop_instance_uid"], 0.9)
    slices, votes = result_rows(grown, probabilities, KEY, INFO, ScoreConfig(), "/archive", "r3")
    written = write_results(results, slices, votes, "r3")
    assert written == {
        "slice_rows_inserted": 5,
        "vote_rows_inserted": 0,
        "vote_rows_updated": 1,
        "patient_rows_inserted": 0,
        "patient_rows_updated": 1,  # the patient's vote now counts 25 images
    }
    assert scored_studies(results, INFO.model_version) == {pseudonym(KEY, "1.1"): 25}
    patient = run_query(results, "select n_studies, n_images, vote from patient_votes")
    assert patient.to_pylist() == [{"n_studies": 1, "n_images": 25, "vote": "malignant"}]


# Selection: what voted, study and patient votes, and tables from before study_votes.


def _selection(frame, study: str, selected, source=SelectionSource.SELECTOR):
    group = frame[frame["study_instance_uid"] == study]
    return StudySelection(
        study_instance_uid=study,
        slices_in_study=len(group),
        series_used=tuple(sorted(set(group["series_instance_uid"]))),
        source=source,
        selected=frozenset(selected),
    )


def test_a_patient_votes_over_the_selected_slices_of_all_studies(tmp_path):
    results = str(tmp_path / "R")
    ensure_tables(results)
    frame = inventory({"1.1": ("PAT1", 30, ["venous"]), "1.2": ("PAT1", 20, ["venous"])})
    first = frame.loc[frame["study_instance_uid"] == "1.1", "sop_instance_uid"].tolist()
    mass = first[10:20]  # ten slices through the mass, the rest of the study elsewhere
    probabilities = {uid: (0.9 if i < 6 else 0.2) for i, uid in enumerate(mass)}
    found = {uid: (0.95 if uid in mass else 0.01) for uid in first}
    selections = [_selection(frame, "1.1", mass), _selection(frame, "1.2", [])]
    found.update(
        dict.fromkeys(frame.loc[frame["study_instance_uid"] == "1.2", "sop_instance_uid"], 0.02)
    )
    slices, votes = result_rows(
        frame,
        probabilities,
        KEY,
        INFO,
        ScoreConfig(),
        "/archive",
        "r1",
        selections=selections,
        selector_probabilities=found,
        selector=SelectorUsed("sel-1", 0.4),
    )
    by_study = {r["study_key"]: r for r in votes.to_pylist()}
    voted, empty = by_study[pseudonym(KEY, "1.1")], by_study[pseudonym(KEY, "1.2")]
    assert (voted["status"], voted["vote"], voted["n_images"]) == ("voted", "malignant", 10)
    assert voted["slices_in_study"] == 30 and voted["selection_source"] == "selector"
    assert (voted["selector_version"], voted["selector_threshold"]) == ("sel-1", 0.4)
    # No slice selected: no vote, never a benign one.
    assert (empty["status"], empty["vote"], empty["fraction_malignant"]) == (
        "no_mass_found",
        None,
        None,
    )
    assert tally_votes(votes)[0] == {"malignant": 1, "no_mass_found": 1}
    # Every slice the selector saw has a row; only the selected ones a probability.
    assert slices.num_rows == 50
    assert sum(slices.column("voted").to_pylist()) == 10
    assert slices.column("probability").null_count == 40
    write_results(results, slices, votes, "r1")
    patient = run_query(results, "select * from patient_votes").to_pylist()
    assert len(patient) == 1
    assert patient[0]["n_studies"] == 2 and patient[0]["n_images"] == 10
    assert (patient[0]["status"], patient[0]["vote"]) == ("voted", "malignant")
    assert patient[0]["selection_sources"] == "selector"


LEGACY_VOTES = pa.schema(
    [f for f in STUDY_VOTES_SCHEMA if f.name not in {
        "status", "slices_in_study", "selection_source", "selector_version",
        "selector_threshold", "series_used", "series_skipped"}]
)  # fmt: skip
LEGACY_SCORES = pa.schema(
    [f for f in SLICE_SCORES_SCHEMA if f.name not in {"voted", "selector_probability"}]
)


def test_a_results_table_from_before_study_votes_is_refused_then_migrated(tmp_path):
    """A table written by an earlier renalflow: patient_votes held one vote per study."""
    from deltalake import write_deltalake

    results = str(tmp_path / "R")
    frame = inventory({"1.1": ("PAT1", 12, ["venous"]), "1.2": ("PAT1", 12, ["venous"])})
    probabilities = dict.fromkeys(frame["sop_instance_uid"], 0.8)
    slices, votes = result_rows(frame, probabilities, KEY, INFO, ScoreConfig(), "/a", "old")
    write_deltalake(f"{results}/patient_votes", votes.select(LEGACY_VOTES.names).cast(LEGACY_VOTES))
    write_deltalake(
        f"{results}/slice_scores", slices.select(LEGACY_SCORES.names).cast(LEGACY_SCORES)
    )

    for attempt in (lambda: ensure_tables(results), lambda: run_query(results, "select 1")):
        with pytest.raises(InputError, match="renalflow migrate-results --results"):
            attempt()
    migrated = migrate_results(results)
    assert migrated == {STUDY_VOTES: 2, SLICE_SCORES: 24, PATIENT_VOTES: 1}
    studies = run_query(results, "select status, selection_source, slices_in_study, vote "
                        "from study_votes").to_pylist()  # fmt: skip
    assert studies == [{"status": "voted", "selection_source": "all", "slices_in_study": 12,
                        "vote": "malignant"}] * 2  # fmt: skip
    assert [h["version"] for h in history(results)][-1] == 0  # its history came along
    patient = run_query(results, "select n_studies, n_images, vote from patient_votes")
    assert patient.to_pylist() == [{"n_studies": 2, "n_images": 24, "vote": "malignant"}]
    # Scoring carries on: the same rows again add nothing.
    assert write_results(results, slices, votes, "new")["vote_rows_inserted"] == 0


def _create_tables(results: str) -> None:
    ensure_tables(results)


def test_runs_racing_to_create_the_tables_create_each_once(tmp_path):
    """deltalake alone let two of four racing creators commit a second CREATE."""
    import os

    spawn = multiprocessing.get_context("spawn")
    for trial in range(3):
        results = str(tmp_path / f"R{trial}")
        racers = [spawn.Process(target=_create_tables, args=(results,)) for _ in range(3)]
        for racer in racers:
            racer.start()
        for racer in racers:
            racer.join(120)
        assert [r.exitcode for r in racers] == [0, 0, 0]
        for name in (STUDY_VOTES, PATIENT_VOTES, SLICE_SCORES):
            log = sorted(os.listdir(f"{results}/{name}/_delta_log"))
            assert [f for f in log if f.endswith(".json")] == ["00000000000000000000.json"]


def test_a_table_written_under_another_key_is_refused(tmp_path):
    results = str(tmp_path / "R")
    ensure_tables(results, KEY)
    frame = inventory({"1.1": ("PAT1", 12, ["venous"])})
    probabilities = dict.fromkeys(frame["sop_instance_uid"], 0.8)
    slices, votes = result_rows(frame, probabilities, KEY, INFO, ScoreConfig(), "/a", "r1")
    write_results(results, slices, votes, "r1")
    ensure_tables(results, KEY)  # the same key again: fine
    other = b"another-department-key-0123456789"
    with pytest.raises(InputError, match="made under another key") as info:
        ensure_tables(results, other)
    assert other.decode() not in str(info.value)  # fingerprints only, never a key


# Training membership, the data dictionary and the in_training migration.


def score_cohort(
    results: str,
    votes: dict[str, float],
    membership: dict[str, InTraining] | None = None,
    key: bytes = KEY,
    manufacturer: str = "SIEMENS",
    run_id: str = "r1",
) -> None:
    """Score one 12-image study per patient into R: every image of a patient has the
    probability `votes[patient]` (0.8: a malignant vote, 0.2: a benign one)."""
    studies = {f"1.{i}.{patient}": (patient, 12, ["venous"]) for i, patient in enumerate(votes)}
    frame = inventory(studies)
    frame["manufacturer"] = manufacturer
    probabilities = {
        uid: votes[p] for uid, p in zip(frame["sop_instance_uid"], frame["patient_id"], strict=True)
    }
    slices, rows = result_rows(
        frame, probabilities, key, INFO, ScoreConfig(), "/a", run_id, membership=membership
    )
    ensure_tables(results, key)
    write_results(results, slices, rows, run_id)


def test_votes_say_whether_their_model_trained_on_the_patient(tmp_path):
    membership = {
        patient_pseudonym(KEY, "P1"): InTraining.TRAINING,
        patient_pseudonym(KEY, "P2"): InTraining.VALIDATION,
    }
    results = str(tmp_path / "R")
    score_cohort(results, {"P1": 0.8, "P2": 0.8, "P3": 0.2}, membership)
    for table in ("study_votes", "patient_votes"):
        rows = run_query(results, f"select in_training, count(*) as n from {table} group by 1 "
                         "order by 1").to_pylist()  # fmt: skip
        assert rows == [{"in_training": "none", "n": 1}, {"in_training": "training", "n": 1},
                        {"in_training": "validation", "n": 1}]  # fmt: skip
    unknown = str(tmp_path / "U")
    score_cohort(unknown, {"P1": 0.8})  # the model directory had no split
    assert run_query(unknown, "select in_training from patient_votes").to_pylist() == [
        {"in_training": "unknown"}
    ]


def test_a_patient_id_with_surrounding_spaces_gets_the_same_pseudonym():
    assert patient_pseudonym(KEY, " 0042 ") == patient_pseudonym(KEY, "0042")
    assert patient_pseudonym(KEY, "0042") != patient_pseudonym(KEY, "42")  # zeros matter
    assert patient_pseudonym(KEY, "0042") == pseudonym(KEY, "0042")


def test_every_column_is_documented_once_and_stored_as_its_comment(results):
    from deltalake import DeltaTable

    columns = {name for schema in DESCRIBED.values() for name in schema.names}
    assert set(COLUMN_DOCS) == columns
    entries = data_dictionary()
    assert len(entries) == len(columns) == len({e["column"] for e in entries})
    assert {e["column"]: e["tables"] for e in entries}["in_training"] == (
        "study_votes, patient_votes"
    )
    stored = DeltaTable(f"{results}/study_votes").schema().fields
    assert {f.name: f.metadata["comment"] for f in stored} == {
        name: COLUMN_DOCS[name] for name in STUDY_VOTES_SCHEMA.names
    }


def test_a_table_without_in_training_is_refused_then_migrated(tmp_path):
    """A table written before votes said whether their model trained on the patient."""
    from deltalake import write_deltalake

    results = str(tmp_path / "R")
    frame = inventory({"1.1": ("P1", 12, ["venous"]), "1.2": ("P2", 12, ["venous"]),
                       "1.3": ("P3", 12, ["venous"])})  # fmt: skip
    probabilities = dict.fromkeys(frame["sop_instance_uid"], 0.8)
    slices, votes = result_rows(frame, probabilities, KEY, INFO, ScoreConfig(), "/a", "old")
    write_deltalake(f"{results}/slice_scores", slices)
    write_deltalake(f"{results}/study_votes", votes.drop_columns(["in_training"]))
    write_deltalake(
        f"{results}/patient_votes",
        pa.Table.from_pylist(
            [{**votes.to_pylist()[0], "n_studies": 1, "selection_sources": "all"}],
            schema=PATIENT_VOTES_SCHEMA,
        ).drop_columns(["in_training"]),
    )
    for attempt in (lambda: ensure_tables(results), lambda: run_query(results, "select 1")):
        with pytest.raises(InputError, match=r"in_training.*renalflow migrate-results"):
            attempt()
    membership = {
        INFO.model_version: {patient_pseudonym(KEY, "P1"): InTraining.TRAINING},
        "another-model": None,
    }
    assert migrate_results(results, membership) == {STUDY_VOTES: 3, PATIENT_VOTES: 1}
    rows = run_query(results, "select in_training, count(*) as n from study_votes group by 1 "
                     "order by 1").to_pylist()  # fmt: skip
    # P1 trained the model; the model's split does not list P2 and P3: never seen.
    assert rows == [{"in_training": "none", "n": 2}, {"in_training": "training", "n": 1}]
    assert run_query(results, "select in_training from patient_votes").to_pylist() == [
        {"in_training": "training"}
    ]
    # Read as it was before the migration, the column is there, null.
    before = run_query(results, "select count(*) as n from study_votes where in_training "
                       "is null", as_of=0).to_pylist()  # fmt: skip
    assert before == [{"n": 3}]
    with pytest.raises(InputError, match="nothing to migrate"):
        migrate_results(results)
    write_results(results, slices, votes, "new")  # scoring carries on


def test_a_version_of_study_votes_reads_the_patient_votes_its_run_left(tmp_path):
    results = str(tmp_path / "R")
    score_cohort(results, {"P1": 0.8, "P2": 0.2})
    first = history(results)[0]["version"]
    score_cohort(results, {"P3": 0.8}, run_id="r2")
    sql = "select count(*) from patient_votes"
    assert int(run_query(results, sql, as_of=first).column(0)[0].as_py()) == 2
    assert int(run_query(results, sql, as_of=first + 1).column(0)[0].as_py()) == 3

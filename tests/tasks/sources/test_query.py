"""What renalflow asks a PACS for and what it fetches of the answers."""

from __future__ import annotations

import pytest

from renalflow.tasks.config import SeriesRule
from renalflow.tasks.errors import InputError
from renalflow.tasks.sources.query import (
    InstanceRef,
    PacsSettings,
    SeriesRef,
    StudyRef,
    date_range,
    dicom_range,
    instance_wanted,
    newest_date,
    parse_study_dates,
    series_skip_reason,
    study_skip_reason,
)

RULE = SeriesRule()


@pytest.mark.parametrize(
    ("text", "expected", "dicom"),
    [
        (None, None, ""),
        ("20240101-20241231", ("20240101", "20241231"), "20240101-20241231"),
        ("20240101-", ("20240101", ""), "20240101-"),
        ("-20241231", ("", "20241231"), "-20241231"),
        ("20240229", ("20240229", "20240229"), "20240229"),
    ],
)
def test_study_date_ranges(text, expected, dicom):
    assert parse_study_dates(text) == expected
    assert dicom_range(expected) == dicom


@pytest.mark.parametrize("text", ["2024", "20241301-", "20240102-20240101", "-", "yesterday"])
def test_bad_study_date_ranges_are_one_line(text):
    with pytest.raises(InputError, match=r"YYYYMMDD|range ends|not a date"):
        parse_study_dates(text)


def test_a_run_starts_a_few_days_before_the_newest_study_delivered():
    assert date_range(PacsSettings(), None) is None  # first run: everything
    assert date_range(PacsSettings(lookback_days=3), "20240301") == ("20240227", "")
    asked = PacsSettings(study_dates=("20230101", "20230131"))
    assert date_range(asked, "20240301") == ("20230101", "20230131")  # asked for wins
    assert newest_date(["20240102", "", "20231231"], "20240101") == "20240102"
    assert newest_date([""], None) is None


def test_studies_without_ct_or_of_another_region_are_not_fetched():
    assert study_skip_reason(StudyRef("1", modalities_in_study=("CT", "SR")), RULE) is None
    assert "no CT" in str(study_skip_reason(StudyRef("1", modalities_in_study=("MR",)), RULE))
    assert study_skip_reason(StudyRef("1", study_description="CT HEAD"), RULE)
    assert study_skip_reason(StudyRef("1", study_description="CT CHEST ABDOMEN"), RULE) is None
    assert study_skip_reason(StudyRef("1", study_description=""), RULE) is None


def test_series_are_judged_by_the_series_selection_words():
    def reason(**kw: str) -> str | None:
        return series_skip_reason(SeriesRef("1", **kw), RULE)

    assert reason(modality="CT", body_part_examined="ABDOMEN") is None
    assert reason(modality="CT", series_description="Nieren arteriell") is None
    assert reason(modality="CT") is None  # nothing tells: kept
    assert "HEAD" in str(reason(modality="CT", body_part_examined="HEAD"))
    assert "topogram" in str(reason(modality="CT", series_description="Topogram 0.6 T20f"))
    assert "modality SR" == reason(modality="SR", body_part_examined="ABDOMEN")
    assert reason(modality="SEG", series_description="Renal mass SEG") is None  # annotations


def test_localizers_are_never_fetched():
    assert instance_wanted(InstanceRef("1", ("ORIGINAL", "PRIMARY", "AXIAL")))
    assert instance_wanted(InstanceRef("1"))
    assert not instance_wanted(InstanceRef("1", ("ORIGINAL", "PRIMARY", "localizer")))


def test_the_keys_every_query_asks_for_are_what_the_readers_read():
    from pydicom.dataset import Dataset

    from renalflow.tasks.sources.query import (
        INSTANCE_KEYS,
        SERIES_KEYS,
        STUDY_KEYS,
        instance_refs,
        series_refs,
        study_matching,
        study_refs,
    )

    def answer(uid_key: str, keys: tuple[str, ...]) -> Dataset:
        ds = Dataset()
        setattr(ds, uid_key, "1.2.3")
        for key in keys:
            setattr(ds, key, "20240101" if key == "StudyDate" else "X")
        return ds

    def text(ds: Dataset, key: str) -> str:
        return str(ds.get(key, ""))

    def values(ds: Dataset, key: str) -> tuple[str, ...]:
        return (str(ds[key].value),) if key in ds else ()

    # An answer with only the asked keys fills every field of its reference.
    study = study_refs([answer("StudyInstanceUID", STUDY_KEYS)], text, values)[0]
    assert study == StudyRef("1.2.3", "20240101", "X", ("X",))
    series = series_refs([answer("SeriesInstanceUID", SERIES_KEYS)], text)[0]
    assert series == SeriesRef("1.2.3", "X", "X", "X")
    instance = instance_refs([answer("SOPInstanceUID", INSTANCE_KEYS)], text, values)[0]
    assert instance == InstanceRef("1.2.3", ("X",))
    assert study_matching(("20240101", "")) == {
        "ModalitiesInStudy": "CT",
        "StudyDate": "20240101-",
    }

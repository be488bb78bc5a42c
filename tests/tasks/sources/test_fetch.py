"""The cache of a PACS source: pruning a study keeps what SRs cite and frees the pixels."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file

from renalflow.tasks.sources import evidence_uri, instance_path, instances_folder, parse_source
from renalflow.tasks.sources.fetch import SourceSummary, cache_size, prune_study
from renalflow.tasks.sources.report import read_evidence

SOURCE = parse_source("dicomweb+http://127.0.0.1:8042/dicom-web")
# Real files in three encodings, not written by renalflow.
REAL = ("CT_small.dcm", "JPEG2000.dcm", "MR_small_RLE.dcm")


def _cache(store: Path, study: str) -> list[str]:
    folder = instances_folder(str(store), SOURCE)
    paths = []
    for number, name in enumerate(REAL):
        path = instance_path(folder, study, "1.2.3.4", f"1.2.3.4.{number}")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(get_testdata_file(name), path)
        paths.append(path)
    return paths


def test_a_pruned_study_keeps_each_header_where_an_sr_finds_it(tmp_path):
    paths = _cache(tmp_path, "1.2.3")
    files, size = cache_size(str(tmp_path), SOURCE)
    assert files == len(REAL)
    before = {p: pydicom.dcmread(p, stop_before_pixels=True) for p in paths}

    pruned = prune_study(str(tmp_path), SOURCE, "1.2.3")

    assert (pruned.files, pruned.kept) == (len(REAL), 0)
    assert cache_size(str(tmp_path), SOURCE) == (0, 0)
    assert 0 < pruned.bytes_freed < size
    assert not Path(instances_folder(str(tmp_path), SOURCE), "1.2.3").exists()
    for path, header in before.items():
        kept = pydicom.dcmread(evidence_uri(path))
        assert "PixelData" not in kept
        assert kept.SOPInstanceUID == header.SOPInstanceUID
        assert kept.file_meta.TransferSyntaxUID == header.file_meta.TransferSyntaxUID
    # What an SR cites is read from the kept headers once the instances are gone.
    cited = read_evidence(paths)
    assert [h.SOPInstanceUID for h in cited] == [h.SOPInstanceUID for h in before.values()]
    # Pruning again finds nothing to do.
    assert prune_study(str(tmp_path), SOURCE, "1.2.3").files == 0


def test_a_file_whose_header_cannot_be_read_is_kept(tmp_path):
    paths = _cache(tmp_path, "1.2.3")
    Path(paths[0]).write_bytes(b"not DICOM at all")
    pruned = prune_study(str(tmp_path), SOURCE, "1.2.3")
    assert (pruned.files, pruned.kept) == (len(REAL) - 1, 1)
    assert Path(paths[0]).exists() and not Path(paths[1]).exists()
    assert cache_size(str(tmp_path), SOURCE)[0] == 1


def test_the_source_summary_is_json_with_its_counts_by_reason():
    summary = SourceSummary("dicomweb+http://x/dicom-web", "/s/_pacs/x", "any")
    summary.studies_skipped["no CT series"] += 2
    summary.series_skipped["not the kidneys"] += 3
    data = json.loads(json.dumps(summary.to_dict()))
    assert data["studies_skipped"] == {"no CT series": 2}
    assert data["series_skipped"] == {"not the kidneys": 3}

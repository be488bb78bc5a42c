"""Archive URIs: which name a PACS, how they parse, and where a source's files go."""

from __future__ import annotations

import pytest

from renalflow.tasks.errors import InputError
from renalflow.tasks.sources import (
    SourceKind,
    archive_folder,
    instance_path,
    is_pacs,
    pacs_root,
    parse_source,
    plain_http_warning,
    uid_name,
)


def test_folders_and_buckets_are_not_pacs():
    for archive in ("/data/archive", "archive", "file:///data", "s3://bucket/ct", "memory://x"):
        assert not is_pacs(archive)
        assert archive_folder(archive, "/store") == archive


def test_dicomweb_uri_names_the_service_url():
    source = parse_source("dicomweb+https://pacs.hospital.example:8443/dicom-web/")
    assert source.kind is SourceKind.DICOMWEB
    assert source.url == "https://pacs.hospital.example:8443/dicom-web"
    assert (source.host, source.port) == ("pacs.hospital.example", 8443)
    assert parse_source("dicomweb+http://10.0.0.5/wado").port == 80
    assert parse_source("dicomweb+https://10.0.0.5/wado").port == 443


def test_dimse_uri_names_the_called_ae_title():
    source = parse_source("dimse://PACS_AE@10.1.2.3:104")
    assert source.kind is SourceKind.DIMSE
    assert (source.called_ae, source.host, source.port) == ("PACS_AE", "10.1.2.3", 104)


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("dimse://10.1.2.3:104", "dimse://AET@HOST:PORT"),
        ("dimse://PACS@10.1.2.3", "dimse://AET@HOST:PORT"),
        ("dimse://A_TITLE_LONGER_THAN_16@10.1.2.3:104", "not a valid AE title"),
        ("dimse://PACS@10.1.2.3:99999", "port"),
        ("dicomweb+https:///dicom-web", "no host"),
        ("dicomweb+https://user:secret@pacs/dicom-web", "do not put credentials"),
        ("dimse://PACS:secret@10.1.2.3:104", "do not put credentials"),
    ],
)
def test_bad_pacs_uris_are_one_line(uri, message):
    with pytest.raises(InputError, match=message) as caught:
        parse_source(uri)
    assert "\n" not in str(caught.value) and "secret" not in str(caught.value)


def test_each_source_has_its_own_folder_in_the_store():
    web = parse_source("dicomweb+https://pacs/dicom-web")
    other = parse_source("dicomweb+https://pacs/other-web")
    dimse = parse_source("dimse://PACS@pacs:104")
    roots = {pacs_root("/store", s) for s in (web, other, dimse)}
    assert len(roots) == 3
    assert all(root.startswith("/store/_pacs/") for root in roots)
    assert archive_folder("dimse://PACS@pacs:104", "s3://bucket/store/") == (
        f"s3://bucket/store/_pacs/{dimse.key}/instances"
    )


def test_uids_from_a_pacs_never_leave_the_cache():
    assert uid_name("1.2.840.113619.2.55") == "1.2.840.113619.2.55"
    for hostile in ("../../etc/passwd", "1.2/../..", "", "1.2\x00", "a" * 70):
        name = uid_name(hostile)
        assert name.startswith("x") and "/" not in name and ".." not in name
    path = instance_path("/cache", "1.2", "../..", "../../x")
    assert path.startswith("/cache/1.2/x") and ".." not in path


def test_plain_http_beyond_this_machine_is_warned_about():
    assert plain_http_warning(parse_source("dicomweb+https://pacs/dicom-web")) is None
    assert plain_http_warning(parse_source("dicomweb+http://127.0.0.1:8042/dicom-web")) is None
    warning = plain_http_warning(parse_source("dicomweb+http://pacs.hospital/dicom-web"))
    assert warning and "unencrypted" in warning


def test_a_pacs_source_needs_a_local_store():
    from renalflow.tasks.sources import check_pacs_store

    check_pacs_store("/data/store")
    check_pacs_store("file:///data/store")
    with pytest.raises(InputError, match="not s3://bucket/store: give --store a folder"):
        check_pacs_store("s3://bucket/store")

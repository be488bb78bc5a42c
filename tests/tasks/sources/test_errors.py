"""Every way a PACS can say no ends in one line, and only what may pass is retried:
a real HTTP server answering each status, and ports where nothing listens."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from renalflow.tasks.errors import InputError, is_transient_io
from renalflow.tasks.sources import PacsError, PacsUnavailableError, parse_source
from renalflow.tasks.sources.credentials import PacsCredentials
from renalflow.tasks.sources.dicomweb import DicomwebPacs
from renalflow.tasks.sources.dimse import DimsePacs
from renalflow.tasks.sources.query import PacsSettings
from tests.factory import free_port


class _Answer(BaseHTTPRequestHandler):
    status = 200
    delay = 0.0

    def do_GET(self) -> None:
        time.sleep(self.delay)
        self.send_response(self.status)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"[]")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[ThreadingHTTPServer, type[_Answer]]]:
    handler = type("Answer", (_Answer,), {})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd, handler
    httpd.shutdown()
    httpd.server_close()


def _client(port: int, credentials: PacsCredentials | None = None, timeout: float = 5.0):
    source = parse_source(f"dicomweb+http://127.0.0.1:{port}/dicom-web")
    return DicomwebPacs(source, PacsSettings(timeout_s=timeout), credentials or PacsCredentials())


@pytest.mark.parametrize("status", [429, 502, 503, 504])
def test_busy_answers_are_transient(server, status):
    httpd, handler = server
    handler.status = status
    with pytest.raises(PacsUnavailableError, match=f"busy \\(HTTP {status}\\)") as caught:
        _client(httpd.server_port).find_studies(None)
    assert is_transient_io(caught.value)


@pytest.mark.parametrize(
    ("status", "credentials", "message"),
    [
        (401, PacsCredentials(token="tok-secret"), "refused the credentials.*RENALFLOW_PACS_TOKEN"),
        (401, PacsCredentials(user="ris", password="pw-secret"), "user 'ris'.*RENALFLOW_PACS_USER"),
        (403, PacsCredentials(token="tok-secret"), "does not allow finding studies.*HTTP 403"),
        (404, None, "no DICOMweb service there \\(HTTP 404\\).*/dicom-web"),
        (500, None, "answered HTTP 500"),
    ],
)
def test_refusals_are_one_line_and_never_retried(server, status, credentials, message):
    httpd, handler = server
    handler.status = status
    with pytest.raises(PacsError, match=message) as caught:
        _client(httpd.server_port, credentials).find_studies(None)
    text = str(caught.value)
    assert "\n" not in text and "secret" not in text
    assert not is_transient_io(caught.value)


def test_a_missing_study_is_not_delivered_rather_than_a_setting(server):
    httpd, handler = server
    handler.status = 404
    with pytest.raises(PacsError, match="no longer has it") as caught:
        _client(httpd.server_port).find_series("1.2.3")
    assert type(caught.value).__name__ == "StudyNotDelivered"


def test_a_silent_pacs_times_out_as_transient(server):
    httpd, handler = server
    handler.delay = 2.0
    with pytest.raises(PacsUnavailableError, match="did not answer in time") as caught:
        _client(httpd.server_port, timeout=0.2).find_studies(None)
    assert is_transient_io(caught.value)


def test_nothing_listening_is_transient_for_both_protocols():
    port = free_port()
    with pytest.raises(PacsUnavailableError, match="cannot connect"):
        _client(port).check()
    dimse = DimsePacs(parse_source(f"dimse://PACS@127.0.0.1:{port}"), PacsSettings(timeout_s=5))
    with pytest.raises(PacsUnavailableError, match=r"cannot associate with PACS@127\.0\.0\.1"):
        dimse.check()


def test_a_bad_calling_ae_title_is_refused_before_any_connection():
    with pytest.raises(InputError, match="not a valid AE title"):
        DimsePacs(parse_source("dimse://PACS@127.0.0.1:104"), PacsSettings(calling_ae="A\\B"))

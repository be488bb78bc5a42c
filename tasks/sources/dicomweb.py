"""A PACS over DICOMweb: QIDO-RS to find studies, series and instances, WADO-RS to fetch
instances in the transfer syntax the PACS stores them in (no transcoding on the way).

Every failure becomes one line: 401/403 (credentials), 404 (URL or study), TLS
verification, or PacsUnavailableError for what may pass (429, 502-504, a refused or
dropped connection, a timeout), which the flows retry with backoff.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.datadict import tag_for_keyword
from requests.auth import HTTPBasicAuth

from renalflow.tasks.sources import PacsError, PacsSource, PacsUnavailableError, StudyNotDelivered
from renalflow.tasks.sources.credentials import (
    PASSWORD_ENV,
    TOKEN_ENV,
    USER_ENV,
    PacsCredentials,
    credentials_from_env,
)
from renalflow.tasks.sources.query import (
    INSTANCE_KEYS,
    SERIES_KEYS,
    STUDY_KEYS,
    InstanceRef,
    PacsSettings,
    SeriesRef,
    Sink,
    StudyRef,
    instance_refs,
    series_refs,
    study_matching,
    study_refs,
)

TRANSIENT_STATUS = frozenset({429, 502, 503, 504})
"""HTTP answers that say "later": too many requests, a gateway or the service busy."""

QIDO_PAGE = 1000
"""Results asked for per QIDO-RS request; pages follow with offset (our choice)."""

# Ask for each instance as stored: "*" lets the PACS send its own transfer syntax.
_AS_STORED = (("application/dicom", "*"),)


def _values(item: dict[str, Any], keyword: str) -> list[Any]:
    """An attribute's values in a QIDO-RS item (DICOM JSON, keyed by the hex tag)."""
    return list(item.get(f"{tag_for_keyword(keyword):08X}", {}).get("Value", []))


def _strings(item: dict[str, Any], keyword: str) -> tuple[str, ...]:
    return tuple(str(v) for v in _values(item, keyword))


def _paged(
    search: Callable[..., list[dict[str, Any]]], key: str, **kwargs: Any
) -> list[dict[str, Any]]:
    """Every result of a QIDO-RS search, a page at a time. A server that ignores offset
    (it answers the first page again) ends the paging instead of looping."""
    results: list[dict[str, Any]] = []
    seen: set[str] = set()
    while True:
        page = search(limit=QIDO_PAGE, offset=len(results), **kwargs)
        fresh = [item for item in page if _text(item, key) not in seen]
        results.extend(fresh)
        seen.update(_text(item, key) for item in fresh)
        if len(page) < QIDO_PAGE or not fresh:
            return results


def _study_filters(dates: tuple[str, str] | None) -> dict[str, str]:
    """QIDO-RS filters of the study query (an empty key is left out: any value)."""
    return {key: value for key, value in study_matching(dates).items() if value}


def _text(item: dict[str, Any], keyword: str) -> str:
    values = _values(item, keyword)
    return str(values[0]) if values else ""


class DicomwebPacs:
    """PacsClient over DICOMweb (dicomweb-client on a requests session)."""

    def __init__(
        self,
        source: PacsSource,
        settings: PacsSettings,
        credentials: PacsCredentials | None = None,
    ) -> None:
        self.source = source
        credentials = credentials or credentials_from_env()
        self._credentials = credentials
        session = requests.Session()
        session.verify = settings.verify_tls  # on by default; REQUESTS_CA_BUNDLE adds a CA
        headers: dict[str, str] = {}
        if credentials.token:
            headers["Authorization"] = f"Bearer {credentials.token}"
        elif credentials.user and credentials.password:
            session.auth = HTTPBasicAuth(credentials.user, credentials.password)
        self._session = session
        self._client = DICOMwebClient(
            source.url, session=session, headers=headers, timeout=settings.timeout_s
        )
        # Retries are the flows' (typed, with backoff, counted): none hidden in the library.
        self._client.set_http_retry_params(retry=False)

    # -- errors -------------------------------------------------------------------------

    @contextmanager
    def _errors(self, what: str, study: str | None = None) -> Iterator[None]:
        """Library errors as one line naming the PACS and what was asked."""
        where = self.source.url
        try:
            yield
        except requests.exceptions.SSLError as err:
            raise PacsError(
                f"{where}: the TLS certificate could not be verified ({what}); give the "
                "hospital's CA bundle in REQUESTS_CA_BUNDLE"
            ) from err
        except requests.exceptions.Timeout as err:
            raise PacsUnavailableError(f"{where} did not answer in time ({what})") from err
        except requests.exceptions.ConnectionError as err:
            raise PacsUnavailableError(
                f"cannot connect to {where} ({what}): check the URL and that the PACS is up "
                "and reachable from here"
            ) from err
        except requests.exceptions.HTTPError as err:
            raise self._http_error(err, what, study) from err
        except (
            requests.exceptions.ChunkedEncodingError,
            requests.exceptions.ContentDecodingError,
        ) as err:
            raise PacsUnavailableError(f"{where}: the answer broke off ({what})") from err

    def _http_error(
        self, err: requests.exceptions.HTTPError, what: str, study: str | None
    ) -> PacsError:
        status = err.response.status_code if err.response is not None else 0
        where = self.source.url
        if status in TRANSIENT_STATUS:
            return PacsUnavailableError(f"{where} is busy (HTTP {status}) ({what})")
        if status == 401:
            hint = (
                f"check {TOKEN_ENV}" if self._credentials.token else
                f"check {USER_ENV} and {PASSWORD_ENV}" if self._credentials.user else
                f"set {TOKEN_ENV}, or {USER_ENV} and {PASSWORD_ENV}"
            )  # fmt: skip
            return PacsError(
                f"{where} refused the credentials (HTTP 401, {self._credentials.kind}): {hint}"
            )
        if status == 403:
            return PacsError(
                f"{where} does not allow {what} for {self._credentials.kind} (HTTP 403): ask "
                "the PACS administrator for read access to QIDO-RS and WADO-RS (and STOW-RS "
                "to write results back)"
            )
        if status == 404:
            if study is not None:
                return StudyNotDelivered(f"{where} no longer has it (HTTP 404) ({what})")
            return PacsError(
                f"{where} has no DICOMweb service there (HTTP 404) ({what}): check the path "
                "(often /dicom-web or /dicomweb)"
            )
        return PacsError(f"{where} answered HTTP {status} ({what})")

    # -- PacsClient ---------------------------------------------------------------------

    def check(self) -> None:
        with self._errors("a first study query"):
            self._client.search_for_studies(limit=1, search_filters=_study_filters(None))

    def find_studies(self, dates: tuple[str, str] | None) -> list[StudyRef]:
        with self._errors("finding studies"):
            found = _paged(
                self._client.search_for_studies,
                "StudyInstanceUID",
                search_filters=_study_filters(dates),
                fields=list(STUDY_KEYS),
            )
        return study_refs(found, _text, _strings)

    def find_series(self, study: str) -> list[SeriesRef]:
        with self._errors(f"listing the series of study {study}", study):
            found = _paged(
                self._client.search_for_series,
                "SeriesInstanceUID",
                study_instance_uid=study,
                fields=list(SERIES_KEYS),
            )
        return series_refs(found, _text)

    def find_instances(self, study: str, series: str) -> list[InstanceRef]:
        with self._errors(f"listing the instances of series {series}", study):
            found = _paged(
                self._client.search_for_instances,
                "SOPInstanceUID",
                study_instance_uid=study,
                series_instance_uid=series,
                fields=list(INSTANCE_KEYS),
            )
        return instance_refs(found, _text, _strings)

    def fetch_series(self, study: str, series: str, sink: Sink) -> None:
        with self._errors(f"retrieving series {series}", study):
            for dataset in self._client.iter_series(study, series, media_types=_AS_STORED):
                sink(study, series, str(dataset.SOPInstanceUID), _encode(dataset))

    def fetch_instances(self, study: str, series: str, sops: list[str], sink: Sink) -> None:
        for sop in sops:
            with self._errors(f"retrieving instance {sop}", study):
                dataset = self._client.retrieve_instance(study, series, sop, media_types=_AS_STORED)
            sink(study, series, sop, _encode(dataset))

    def store(self, dataset: pydicom.Dataset) -> None:
        """STOW-RS of one instance; a PACS that refuses it answers with a failure list."""
        what = f"storing instance {dataset.SOPInstanceUID} (STOW-RS)"
        with self._errors(what):
            answer = self._client.store_instances([dataset])
        failed = answer.get("FailedSOPSequence", [])
        if failed:
            reason = failed[0].get("FailureReason", "no reason given")
            raise PacsError(
                f"{self.source.url} refused {what}: failure reason {reason}; ask the PACS "
                "administrator to allow STOW-RS for renalflow's account"
            )

    def close(self) -> None:
        self._session.close()


def _encode(dataset: pydicom.Dataset) -> bytes:
    """The instance as a Part 10 file, in the transfer syntax it arrived in."""
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, dataset, enforce_file_format=True)
    return buffer.getvalue()

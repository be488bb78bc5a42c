"""A PACS over DIMSE: C-FIND (Study Root) to find studies, series and instances, C-GET to
fetch them over the same association, in the transfer syntax the PACS stores them in
(one presentation context per syntax renalflow decodes, so the PACS need not transcode).

A refused association is one line naming the cause (the called or the calling AE title
unknown to the PACS); a peer that cannot be reached, times out, aborts or says it is out
of resources is a PacsUnavailableError, retried by the flows with backoff.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import (
    JPEG2000TransferSyntaxes,
    JPEGLSTransferSyntaxes,
    JPEGTransferSyntaxes,
    RLETransferSyntaxes,
    UncompressedTransferSyntaxes,
)
from pynetdicom import AE, build_role, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    EnhancedCTImageStorage,
    LegacyConvertedEnhancedCTImageStorage,
    SegmentationStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
)

from renalflow.tasks.sources import (
    PacsError,
    PacsSource,
    PacsUnavailableError,
    StudyNotDelivered,
    check_ae_title,
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

STORAGE_CLASSES = (
    CTImageStorage,
    EnhancedCTImageStorage,
    LegacyConvertedEnhancedCTImageStorage,
    SegmentationStorage,
)
"""The SOP classes of the series fetched: CT, and lesion annotations (SEG)."""
TRANSFER_SYNTAXES = (
    *UncompressedTransferSyntaxes,
    *JPEGTransferSyntaxes,
    *JPEGLSTransferSyntaxes,
    *JPEG2000TransferSyntaxes,
    *RLETransferSyntaxes,
)
"""The transfer syntaxes ingest decodes: each offered in a context of its own."""

_PENDING = (0xFF00, 0xFF01)
_BUSY = (0xA700, 0xA701, 0xA702)  # out of resources

# A-ASSOCIATE-RJ reasons from the service user (PS3.8 9.3.4).
_REJECT_REASONS = {
    1: "no reason given",
    2: "the application context is not supported",
    3: "the calling AE title {calling!r} is not known to the PACS: ask its administrator to "
    "register it (with this host and port), or give the registered one with --calling-ae",
    7: "the called AE title {called!r} is not the PACS's: check the AE title in the archive "
    "URI (dimse://AET@host:port)",
}


def _query(level: str, returned: tuple[str, ...] = (), **matching: str) -> Dataset:
    """A C-FIND or C-GET identifier at `level`: `returned` keys empty (the PACS fills
    them in), `matching` keys with their values."""
    query = Dataset()
    query.QueryRetrieveLevel = level
    for keyword in returned:
        setattr(query, keyword, "")
    for keyword, value in matching.items():
        setattr(query, keyword, value)
    return query


def _status(status: Dataset) -> int:
    return int(status.Status) if "Status" in status else -1


def _text(identifier: Dataset, keyword: str) -> str:
    value = identifier.get(keyword, "")
    if value is None:
        return ""
    return "\\".join(str(v) for v in value) if isinstance(value, list | tuple) else str(value)


def _multi(identifier: Dataset, keyword: str) -> tuple[str, ...]:
    value = identifier.get(keyword, None)
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        return tuple(v for v in value.split("\\") if v)
    return tuple(str(v) for v in value)


class DimsePacs:
    """PacsClient over DIMSE (pynetdicom). One association per call that needs one."""

    def __init__(self, source: PacsSource, settings: PacsSettings) -> None:
        self.source = source
        self.calling_ae = check_ae_title(settings.calling_ae, "the calling AE title")
        ae = AE(ae_title=self.calling_ae)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = settings.timeout_s
        ae.connection_timeout = settings.timeout_s
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
        for sop_class in STORAGE_CLASSES:
            for syntax in TRANSFER_SYNTAXES:
                ae.add_requested_context(sop_class, syntax)
        self._ae = ae
        self._roles = [build_role(sop_class, scp_role=True) for sop_class in STORAGE_CLASSES]
        self._where = f"{source.called_ae}@{source.host}:{source.port}"

    # -- associations -------------------------------------------------------------------

    @contextmanager
    def _association(self, handlers: list[Any] | None = None) -> Iterator[Association]:
        assoc = self._ae.associate(
            self.source.host,
            self.source.port,
            ae_title=self.source.called_ae,
            ext_neg=self._roles,  # type: ignore[arg-type]
            evt_handlers=handlers or [],
        )
        if assoc.is_rejected:
            raise self._rejected(assoc)
        if not assoc.is_established:
            raise PacsUnavailableError(
                f"cannot associate with {self._where}: no answer, or the connection was "
                "refused or aborted; check host and port, and that the PACS is up"
            )
        try:
            yield assoc
        finally:
            if assoc.is_established:
                assoc.release()

    def _rejected(self, assoc: Association) -> PacsError:
        primitive = assoc.acceptor.primitive
        source = getattr(primitive, "result_source", None)
        diagnostic = getattr(primitive, "diagnostic", None)
        if source == 1:
            reason = _REJECT_REASONS.get(int(diagnostic or 1), f"reason {diagnostic}")
            reason = reason.format(calling=self.calling_ae, called=self.source.called_ae)
            return PacsError(f"{self._where} refused the association: {reason}")
        if getattr(primitive, "result", None) == 2:  # rejected transient
            return PacsUnavailableError(f"{self._where} refused the association for now (busy)")
        return PacsError(
            f"{self._where} refused the association (source {source}, reason {diagnostic})"
        )

    def _find(self, assoc: Association, query: Dataset, what: str) -> list[Dataset]:
        found = []
        for status, identifier in assoc.send_c_find(
            query, StudyRootQueryRetrieveInformationModelFind
        ):
            code = _status(status)
            if code in _PENDING:
                if identifier is not None:
                    found.append(identifier)
                continue
            if code == 0x0000:
                return found
            raise self._failed(code, what)
        raise self._failed(-1, what)

    def _failed(self, code: int, what: str) -> PacsError:
        if code == -1:  # no status: the association timed out or was aborted
            return PacsUnavailableError(f"{self._where} stopped answering ({what})")
        if code in _BUSY:
            return PacsUnavailableError(
                f"{self._where} is out of resources (0x{code:04X}) ({what})"
            )
        if code == 0x0124:
            return PacsError(
                f"{self._where} does not allow {what} for the calling AE title "
                f"{self.calling_ae!r} (0x0124): ask its administrator to allow C-FIND and C-GET"
            )
        return StudyNotDelivered(f"{self._where} failed {what} (status 0x{code:04X})")

    # -- PacsClient ---------------------------------------------------------------------

    def check(self) -> None:
        """Associate and ask one study query: a PACS that does not know the calling AE
        title often accepts the association and only then aborts it, on the first C-FIND."""
        query = _query("STUDY", StudyInstanceUID="1.2.3.4")  # matches nothing: only the answer
        with self._association() as assoc:
            try:
                self._find(assoc, query, "a first study query")
            except PacsUnavailableError as err:
                raise PacsError(
                    f"{self._where} accepted the association but ended it on the first query: "
                    f"it may not allow the calling AE title {self.calling_ae!r} to query; ask "
                    "its administrator to register it (with this host), or give the "
                    "registered one with --calling-ae"
                ) from err

    def find_studies(self, dates: tuple[str, str] | None) -> list[StudyRef]:
        query = _query("STUDY", ("StudyInstanceUID", *STUDY_KEYS), **study_matching(dates))
        with self._association() as assoc:
            found = self._find(assoc, query, "finding studies")
        return study_refs(found, _text, _multi)

    def find_series(self, study: str) -> list[SeriesRef]:
        query = _query("SERIES", ("SeriesInstanceUID", *SERIES_KEYS), StudyInstanceUID=study)
        with self._association() as assoc:
            found = self._find(assoc, query, f"listing the series of study {study}")
        return series_refs(found, _text)

    def find_instances(self, study: str, series: str) -> list[InstanceRef]:
        query = _query(
            "IMAGE",
            ("SOPInstanceUID", *INSTANCE_KEYS),
            StudyInstanceUID=study,
            SeriesInstanceUID=series,
        )
        with self._association() as assoc:
            found = self._find(assoc, query, f"listing the instances of series {series}")
        return instance_refs(found, _text, _multi)

    def fetch_series(self, study: str, series: str, sink: Sink) -> None:
        query = _query("SERIES", StudyInstanceUID=study, SeriesInstanceUID=series)
        self._get([query], study, series, sink, f"retrieving series {series}")

    def fetch_instances(self, study: str, series: str, sops: list[str], sink: Sink) -> None:
        queries = [
            _query("IMAGE", StudyInstanceUID=study, SeriesInstanceUID=series, SOPInstanceUID=sop)
            for sop in sops
        ]
        self._get(queries, study, series, sink, f"retrieving instances of series {series}")

    def _get(self, queries: list[Dataset], study: str, series: str, sink: Sink, what: str) -> None:
        failures: list[BaseException] = []

        def on_store(event: Any) -> int:
            if failures:
                return 0xA700
            try:
                sink(
                    study,
                    series,
                    str(event.request.AffectedSOPInstanceUID),
                    event.encoded_dataset(),
                )
            except Exception as err:  # raised again below, after the C-GET: never swallowed
                failures.append(err)
                return 0xA700
            return 0x0000

        with self._association([(evt.EVT_C_STORE, on_store)]) as assoc:
            for query in queries:
                code = -1
                for status, _ in assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet):
                    code = _status(status)
                if failures:
                    raise failures[0]
                if code not in (0x0000, 0xB000):  # B000: some sub-operations failed
                    raise self._failed(code, what)

    def store(self, dataset: Dataset) -> None:
        """C-STORE of one instance, on an association of its own (the SOP class of
        results written back is not among those fetched)."""
        what = f"storing instance {dataset.SOPInstanceUID} (C-STORE)"
        ae = AE(ae_title=self.calling_ae)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self._ae.network_timeout
        ae.connection_timeout = self._ae.connection_timeout
        ae.add_requested_context(dataset.SOPClassUID, dataset.file_meta.TransferSyntaxUID)
        assoc = ae.associate(self.source.host, self.source.port, ae_title=self.source.called_ae)
        if assoc.is_rejected:
            raise self._rejected(assoc)
        if not assoc.is_established:
            raise PacsUnavailableError(f"cannot associate with {self._where} ({what})")
        try:
            status = assoc.send_c_store(dataset)
        finally:
            if assoc.is_established:
                assoc.release()
        code = _status(status)
        if code in (0x0000, 0xB000, 0xB007, 0xB006):  # B0xx: stored, with a warning
            return
        if code == -1:
            raise PacsUnavailableError(f"{self._where} stopped answering ({what})")
        if code in _BUSY:
            raise PacsUnavailableError(f"{self._where} is out of resources ({what})")
        raise PacsError(
            f"{self._where} refused {what} (status 0x{code:04X}): ask its administrator to "
            f"accept Enhanced SR from the AE title {self.calling_ae!r}"
        )

    def close(self) -> None:
        pass

"""One small hierarchy of renalflow errors; every message says what failed and how to fix it."""

import errno


class RenalflowError(Exception):
    """Base class for every error renalflow raises on purpose."""


class InputError(RenalflowError):
    """An input (DICOM file, labels file, archive path, argument) cannot be used as given."""


class StoreError(RenalflowError):
    """The slice store or results table cannot be read or written safely."""


class ModelError(RenalflowError):
    """A model cannot be built, loaded or used."""


def is_transient_io(error: BaseException | None) -> bool:
    """True for I/O failures worth retrying (timeouts, dropped connections, throttling).

    Anything about a file's content (decode errors, bad tags) is deterministic and is
    never retried: it becomes a reject instead.
    """
    seen = 0
    while error is not None and seen < 5:
        # Timeouts (socket timeouts included) and dropped or refused connections.
        if isinstance(error, TimeoutError | ConnectionError):
            return True
        # s3fs turns S3's SlowDown, ServiceUnavailable (503) and busy (409) answers into
        # OSError(EBUSY): typed, so no message text is matched.
        if isinstance(error, OSError) and error.errno == errno.EBUSY:
            return True
        error = error.__cause__
        seen += 1
    return False

"""One small hierarchy of renalflow errors; every message says what failed and how to fix it."""


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
        if isinstance(error, TimeoutError | ConnectionError):
            return True
        text = str(error).lower()
        if isinstance(error, OSError) and any(
            word in text for word in ("slowdown", "throttl", "503", "timed out", "reset by peer")
        ):
            return True
        error = error.__cause__
        seen += 1
    return False

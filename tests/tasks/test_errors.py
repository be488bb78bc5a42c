"""tasks/errors.py: which failures are worth a retry."""

from __future__ import annotations

from renalflow.tasks.errors import is_transient_io


def test_only_transient_io_errors_are_retried():
    assert is_transient_io(TimeoutError("read timed out"))
    assert is_transient_io(ConnectionResetError())
    from botocore.exceptions import ClientError
    from s3fs.errors import translate_boto_error

    # S3's throttling answer as s3fs raises it (its own translation of botocore's error).
    slow_down = {"Error": {"Code": "SlowDown", "Message": "Please reduce your request rate."}}
    wrapped = RuntimeError("write failed")
    wrapped.__cause__ = translate_boto_error(ClientError(slow_down, "PutObject"))
    assert is_transient_io(wrapped)
    assert not is_transient_io(OSError("file 503.dcm is unreadable"))  # words are not types
    assert not is_transient_io(ValueError("JPEG 2000 decoder failed"))
    assert not is_transient_io(FileNotFoundError("gone"))

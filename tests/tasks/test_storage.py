"""Object-storage mistakes end in one line: against a real S3 server (moto) that checks
credentials, an endpoint nobody listens on, and the CLI as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from renalflow.tasks.storage import StorageAccessError, check_location
from tests.factory import free_port, start_moto

KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_SESSION_TOKEN")


@pytest.fixture(scope="module")
def guarded_s3() -> Iterator[str]:
    """moto's S3 server with authentication on: unknown access keys get 403."""
    server, url = start_moto({"INITIAL_NO_AUTH_ACTION_COUNT": "0"})
    try:
        yield url
    finally:
        server.terminate()
        server.wait(30)


@pytest.fixture
def s3_env(monkeypatch):
    """A clean S3 environment: no credentials from this machine, no instance metadata."""
    import s3fs

    for key in KEYS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    s3fs.S3FileSystem.clear_instance_cache()
    yield monkeypatch
    s3fs.S3FileSystem.clear_instance_cache()


def test_refused_credentials_are_named(guarded_s3, s3_env):
    s3_env.setenv("AWS_ENDPOINT_URL", guarded_s3)
    s3_env.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONGWRONGWRONG")
    s3_env.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    with pytest.raises(StorageAccessError, match="refused access to the archive") as info:
        check_location("s3://pacs/export", "archive", must_exist=True)
    assert "AWS_ACCESS_KEY_ID" in str(info.value) and "\n" not in str(info.value)
    assert "wrong" not in str(info.value)  # the secret is never repeated


def test_missing_credentials_say_where_to_put_them(guarded_s3, s3_env):
    s3_env.setenv("AWS_ENDPOINT_URL", guarded_s3)
    with pytest.raises(StorageAccessError, match="no S3 credentials for the results table"):
        check_location("s3://research/results", "results table", must_exist=False)


def test_an_endpoint_nobody_answers_is_named(s3_env):
    dead = f"http://127.0.0.1:{free_port()}"
    s3_env.setenv("AWS_ENDPOINT_URL", dead)
    s3_env.setenv("AWS_ACCESS_KEY_ID", "a")
    s3_env.setenv("AWS_SECRET_ACCESS_KEY", "b")
    with pytest.raises(StorageAccessError, match=f"cannot reach the S3 endpoint {dead}"):
        check_location("s3://pacs/export", "archive", must_exist=True)


def test_missing_bucket_and_missing_prefix(s3, s3_env):
    # The shared moto server (no authentication) and its credentials.
    s3_env.setenv("AWS_ACCESS_KEY_ID", "renalflow-test")
    s3_env.setenv("AWS_SECRET_ACCESS_KEY", "renalflow-test")
    s3.mkdir("present")
    with pytest.raises(StorageAccessError, match="bucket 'absent' does not exist"):
        check_location("s3://absent/archive", "archive", must_exist=True)
    with pytest.raises(StorageAccessError, match="s3://present/nothing does not exist"):
        check_location("s3://present/nothing", "archive", must_exist=True)
    check_location("s3://present/new-store", "slice store", must_exist=False)
    s3.pipe("present/labels.csv", b"patient_id,label\n")
    s3.pipe("present/archive/a/1.dcm", b"x")
    check_location("s3://present/labels.csv", "labels file", must_exist=True)
    check_location("s3://present/archive", "archive", must_exist=True)
    check_location("/local/paths/are/not/checked/here", "archive", must_exist=True)


def test_the_cli_says_it_in_one_line(guarded_s3, s3_env, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in KEYS}
    env.update(AWS_ENDPOINT_URL=guarded_s3, AWS_ACCESS_KEY_ID="AKIAWRONG",
               AWS_SECRET_ACCESS_KEY="wrong")  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "renalflow.flows.cli", "query", "select 1", "--results",
         "s3://research/results"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "refused access to the results table" in lines[0], proc.stderr

"""Who may use the web page: the Host and Origin rules and the token, as plain
functions (the real server's answers are in tests/flows/test_web.py)."""

from __future__ import annotations

import pytest

from renalflow.tasks.errors import InputError
from renalflow.tasks.web import (
    TOKEN_ENV,
    WebConfig,
    bearer,
    check_exposure,
    cookie,
    hostname,
    read_token,
    same_origin,
    token_matches,
)


@pytest.mark.parametrize(
    ("netloc", "host"),
    [
        ("127.0.0.1:8000", "127.0.0.1"),
        ("[::1]:8000", "::1"),
        ("[::1]", "::1"),
        ("Screening.Example.ORG", "screening.example.org"),
        ("screening.example.org:443", "screening.example.org"),
    ],
)
def test_hostname_drops_the_port_and_case(netloc, host):
    assert hostname(netloc) == host


@pytest.mark.parametrize(
    ("origin", "host_header", "same"),
    [
        ("http://127.0.0.1:8000", "127.0.0.1:8000", True),
        ("https://screening.example.org", "screening.example.org", True),
        ("https://screening.example.org:443", "screening.example.org", True),
        ("http://127.0.0.1:9000", "127.0.0.1:8000", False),  # another local page
        ("http://evil.example", "127.0.0.1:8000", False),
        ("null", "127.0.0.1:8000", False),  # sandboxed frames, file: pages
        ("file://", "127.0.0.1:8000", False),
        ("http://[::1]:8000", "[::1]:8000", True),
    ],
)
def test_same_origin_needs_host_and_port(origin, host_header, same):
    assert same_origin(origin, host_header) is same


def test_hosts_the_page_answers_to():
    local = WebConfig(model_dir="m", workdir="w")
    assert {"127.0.0.1", "localhost", "::1"} <= local.hosts
    wide = WebConfig(model_dir="m", workdir="w", host="10.0.0.5", token="x" * 16,
                     allowed_hosts=("Screening.Example.org",))  # fmt: skip
    assert wide.hosts == {"10.0.0.5", "screening.example.org"}


def test_token_never_in_the_configs_repr():
    config = WebConfig(model_dir="m", workdir="w", token="s3cret-s3cret-s3cret")
    assert "s3cret" not in repr(config)


def test_off_loopback_without_a_token_is_one_line():
    with pytest.raises(InputError, match="--token-file"):
        check_exposure(WebConfig(model_dir="m", workdir="w", host="0.0.0.0"))
    check_exposure(WebConfig(model_dir="m", workdir="w", host="0.0.0.0", token="t" * 16))


def test_token_comparison_takes_any_header_text():
    assert token_matches("a" * 16, "a" * 16)
    assert not token_matches(None, "a" * 16)
    assert not token_matches("é" * 16, "a" * 16)  # non-ASCII never raises


def test_bearer_and_cookie():
    assert bearer("Bearer abc") == "abc"
    assert bearer("bearer  abc ") == "abc"
    assert bearer("Basic abc") is None
    assert bearer("Bearer ") is None
    assert cookie("a=1; renalflow_token=xyz; b=2", "renalflow_token") == "xyz"
    assert cookie("a=1", "renalflow_token") is None


def test_read_token_from_a_file_or_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    assert read_token(None) is None
    path = tmp_path / "token"
    path.write_text("0123456789abcdef0123\n")
    assert read_token(str(path)) == "0123456789abcdef0123"
    monkeypatch.setenv(TOKEN_ENV, "fedcba9876543210")
    assert read_token(None) == "fedcba9876543210"
    with pytest.raises(InputError, match="cannot read the token file"):
        read_token(str(tmp_path / "missing"))
    path.write_text("short")
    with pytest.raises(InputError, match="at least 16"):
        read_token(str(path))
    path.write_text("has spaces in it; and a semicolon")
    with pytest.raises(InputError, match="openssl rand"):
        read_token(str(path))
    path.write_bytes(b"\xff\xfe" * 20)
    with pytest.raises(InputError, match="not text"):
        read_token(str(path))

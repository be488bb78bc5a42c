"""DICOMweb credentials: from the environment or files it names, never shown."""

from __future__ import annotations

import pytest

from renalflow.tasks.errors import InputError
from renalflow.tasks.sources.credentials import (
    PASSWORD_ENV,
    TOKEN_ENV,
    USER_ENV,
    credentials_from_env,
)


@pytest.fixture(autouse=True)
def clean(monkeypatch):
    for name in (TOKEN_ENV, USER_ENV, PASSWORD_ENV):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name + "_FILE", raising=False)


def test_nothing_set_is_an_open_pacs():
    assert credentials_from_env().kind == "no credentials"


def test_token_and_basic_from_the_environment(monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, "tok-123")
    found = credentials_from_env()
    assert found.token == "tok-123" and found.kind == "bearer token"
    assert "tok-123" not in repr(found)
    monkeypatch.delenv(TOKEN_ENV)
    monkeypatch.setenv(USER_ENV, "ris")
    monkeypatch.setenv(PASSWORD_ENV, "pw-456")
    found = credentials_from_env()
    assert (found.user, found.password) == ("ris", "pw-456")
    assert "pw-456" not in repr(found)


def test_secrets_from_files(monkeypatch, tmp_path):
    (tmp_path / "token").write_text("tok-from-file\n")
    monkeypatch.setenv(TOKEN_ENV + "_FILE", str(tmp_path / "token"))
    assert credentials_from_env().token == "tok-from-file"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({TOKEN_ENV: "t", USER_ENV: "u", PASSWORD_ENV: "p"}, "not both"),
        ({USER_ENV: "u"}, "needs both"),
        ({PASSWORD_ENV: "p"}, "needs both"),
        ({TOKEN_ENV: "t", TOKEN_ENV + "_FILE": "/x"}, "not both"),
        ({TOKEN_ENV + "_FILE": "/nonexistent/token"}, "cannot be read"),
    ],
)
def test_contradicting_or_missing_settings_are_one_line(monkeypatch, settings, message):
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(InputError, match=message) as caught:
        credentials_from_env()
    assert "\n" not in str(caught.value)


def test_an_empty_secret_file_is_refused(monkeypatch, tmp_path):
    (tmp_path / "password").write_text("\n")
    monkeypatch.setenv(USER_ENV, "ris")
    monkeypatch.setenv(PASSWORD_ENV + "_FILE", str(tmp_path / "password"))
    with pytest.raises(InputError, match="empty"):
        credentials_from_env()

"""Keyed pseudonyms: stable under one key, unlinkable across keys, never a weak key."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from renalflow.tasks.errors import InputError
from renalflow.tasks.pseudonym import KEY_ENV, check_key, key_from_env, key_id, pseudonym

KEY = b"a-long-enough-secret-key-0123456789"


def test_pseudonym_is_hmac_sha256_of_the_value():
    expected = hmac.new(KEY, b"PAT00042", hashlib.sha256).hexdigest()
    assert pseudonym(KEY, "PAT00042") == expected
    assert len(expected) == 64


def test_same_key_same_pseudonym_other_key_other_pseudonym():
    assert pseudonym(KEY, "PAT1") == pseudonym(KEY, "PAT1")
    assert pseudonym(KEY, "PAT1") != pseudonym(KEY, "PAT2")
    assert pseudonym(KEY, "PAT1") != pseudonym(b"another-secret-key-of-some-length", "PAT1")
    # A plain hash (which anyone could recompute from a PatientID) is not what we write.
    assert pseudonym(KEY, "PAT1") != hashlib.sha256(b"PAT1").hexdigest()


def test_key_comes_from_the_environment_and_short_keys_are_refused():
    assert key_from_env({}) is None
    assert key_from_env({KEY_ENV: KEY.decode()}) == KEY
    with pytest.raises(InputError, match="at least 16"):
        check_key("short")


def test_key_id_identifies_the_key_without_revealing_it():
    assert key_id(KEY) == key_id(KEY)
    assert key_id(KEY) != key_id(b"another-secret-key-of-some-length")
    assert KEY.decode() not in key_id(KEY) and len(key_id(KEY)) == 12

"""Local artifact URLs stop working when they expire or are edited."""

from __future__ import annotations

import pytest

from dreamforge.storage.signing import SignatureError, sign, verify

SECRET = b"k"


def test_valid_until_expiry() -> None:
    verify("jobs/a/0.png", 1000, sign("jobs/a/0.png", 1000, SECRET), SECRET, now=999)


def test_expired() -> None:
    with pytest.raises(SignatureError) as info:
        verify("jobs/a/0.png", 1000, sign("jobs/a/0.png", 1000, SECRET), SECRET, now=1000)
    assert info.value.code == "url_expired"


@pytest.mark.parametrize(("key", "expires"), [("jobs/a/1.png", 1000), ("jobs/a/0.png", 2000)])
def test_tampered_key_or_expiry(key: str, expires: int) -> None:
    with pytest.raises(SignatureError) as info:
        verify(key, expires, sign("jobs/a/0.png", 1000, SECRET), SECRET, now=0)
    assert info.value.code == "invalid_signature"

"""API key material: shape, keyed hashing, and which bind addresses count as loopback."""

from __future__ import annotations

import pytest

from dreamforge.accounts.keys import KEY_PREFIX, key_digest, looks_like_key, new_key, shown_part
from dreamforge.accounts.service import ANYONE, Principal
from dreamforge.cli.main import is_loopback


def test_keys_are_random_scannable_and_stored_only_as_a_keyed_hash() -> None:
    a, b = new_key(), new_key()
    assert a != b and a.startswith(KEY_PREFIX) and len(a) == len(KEY_PREFIX) + 43
    assert looks_like_key(a) and not looks_like_key("sk-" + a)
    digest = key_digest(b"secret-1", a)
    assert len(digest) == 64 and a not in digest
    # Keyed: the same key under another service secret hashes differently.
    assert key_digest(b"secret-2", a) != digest
    assert shown_part(a) == a[: len(KEY_PREFIX) + 6]


def test_a_key_sees_its_own_jobs_an_admin_all_and_anyone_when_auth_is_off() -> None:
    import uuid

    mine, theirs = uuid.uuid4(), uuid.uuid4()
    key = Principal(key_id=mine, admin=False)
    assert key.can_see(mine) and not key.can_see(theirs) and not key.can_see(None)
    assert Principal(key_id=theirs, admin=True).can_see(mine)
    assert ANYONE.can_see(None) and ANYONE.can_see(mine)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.8.0.1", True), ("::1", True), ("[::1]", True), ("localhost", True),
     ("0.0.0.0", False), ("::", False), ("10.0.0.5", False), ("api.example.com", False)],
)  # fmt: skip
def test_only_loopback_binds_may_run_without_auth(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback

"""Issuing, revoking and checking API keys; staged in the caller's session, never committed here."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Session

from dreamforge.accounts import repository as keys_repo
from dreamforge.accounts.keys import key_digest, looks_like_key, new_key, shown_part
from dreamforge.db.tables import ApiKey, utcnow
from dreamforge.error_codes import ErrorCode
from dreamforge.errors import DreamForgeError

if TYPE_CHECKING:
    from psycopg import AsyncConnection

# What a 401 answer tells the client about how to authenticate (RFC 6750).
CHALLENGE = 'Bearer realm="dreamforge"'


class Unauthorized(DreamForgeError):
    """No usable API key came with a request that needs one (401 with `WWW-Authenticate`)."""

    code = ErrorCode.unauthorized
    status = 401

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message, details={"reason": reason}, headers={"WWW-Authenticate": CHALLENGE})


class KeyNameTaken(DreamForgeError):
    """An API key with this name exists already."""

    code = ErrorCode.key_name_taken
    status = 409


@dataclass(frozen=True)
class Principal:
    """Who a request acts for: a key (its id, admin or not), or anyone when auth is off."""

    key_id: uuid.UUID | None
    admin: bool
    name: str = ""
    max_active_jobs: int | None = None
    max_images_per_day: int | None = None

    def can_see(self, owner: uuid.UUID | None) -> bool:
        """True when a job owned by `owner` is this principal's to read and cancel."""
        return self.admin or (self.key_id is not None and self.key_id == owner)


# With DF_AUTH=off every request acts for everyone, as the seed's local dev mode does.
ANYONE = Principal(key_id=None, admin=True, name="anyone")


def issue_key(
    session: Session,
    signing_secret: bytes,
    *,
    name: str,
    admin: bool = False,
    max_active_jobs: int | None = None,
    max_images_per_day: int | None = None,
) -> tuple[ApiKey, str]:
    """Stage a new key; returns its row and the key itself (never stored, shown once)."""
    if keys_repo.get_key_by_name(session, name) is not None:
        raise KeyNameTaken(f"an API key named {name!r} exists already")
    key = new_key()
    row = ApiKey(
        id=uuid.uuid4(),
        name=name,
        shown=shown_part(key),
        digest=key_digest(signing_secret, key),
        admin=admin,
        max_active_jobs=max_active_jobs,
        max_images_per_day=max_images_per_day,
        created_at=utcnow(),
    )
    session.add(row)
    session.flush()
    return row, key


def revoke_key(session: Session, row: ApiKey) -> ApiKey:
    """Revoke `row` (from its next request on); revoking twice keeps the first time."""
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        session.flush()
    return row


def authenticate(session: Session, signing_secret: bytes, key: str | None) -> Principal:
    """The principal `key` stands for; `Unauthorized` when it is missing, unknown or revoked."""
    digest = _presented_digest(signing_secret, key)
    return _principal(keys_repo.get_key_by_digest(session, digest) if digest else None)


async def authenticate_async(
    connection: AsyncConnection[Any], dialect: Dialect, signing_secret: bytes, key: str | None
) -> Principal:
    """`authenticate` on an async psycopg connection (the polled reads on Postgres)."""
    digest = _presented_digest(signing_secret, key)
    return _principal(await keys_repo.key_facts_async(connection, dialect, digest) if digest else None)


def _presented_digest(signing_secret: bytes, key: str | None) -> str | None:
    """The keyed hash to look `key` up by; None for what cannot be a key. `Unauthorized` if none came."""
    if not key:
        raise Unauthorized(
            "an API key is required: send `Authorization: Bearer <key>` or `X-API-Key: <key>`", "missing"
        )
    return key_digest(signing_secret, key) if looks_like_key(key) else None


def _principal(row: keys_repo.KeyFacts | ApiKey | None) -> Principal:
    if row is None:
        raise Unauthorized("the API key is not valid", "invalid")
    if row.revoked_at is not None:
        raise Unauthorized("the API key was revoked", "revoked")
    return Principal(
        key_id=row.id,
        admin=row.admin,
        name=row.name,
        max_active_jobs=row.max_active_jobs,
        max_images_per_day=row.max_images_per_day,
    )

"""Queries over API keys. Nothing here commits."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, NamedTuple

from sqlalchemy import bindparam, or_, select
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Session

from dreamforge.db.compiled import CompiledSelect
from dreamforge.db.tables import ApiKey

if TYPE_CHECKING:
    from psycopg import AsyncConnection


class KeyFacts(NamedTuple):
    """What authenticating a request reads of its key."""

    id: uuid.UUID
    admin: bool
    name: str
    max_active_jobs: int | None
    max_images_per_day: int | None
    revoked_at: datetime | None


_KEY_FACTS = CompiledSelect(
    select(*(ApiKey.__table__.c[name] for name in KeyFacts._fields)).where(
        ApiKey.digest == bindparam("digest")
    )
)


async def key_facts_async(connection: AsyncConnection[Any], dialect: Dialect, digest: str) -> KeyFacts | None:
    """`get_key_by_digest`'s facts on an async psycopg connection."""
    rows = await _KEY_FACTS.rows_async(connection, dialect, {"digest": digest})
    return KeyFacts(*rows[0]) if rows else None


def get_key_by_digest(session: Session, digest: str) -> ApiKey | None:
    """The key whose keyed hash is `digest` (revoked ones too)."""
    return session.scalars(select(ApiKey).where(ApiKey.digest == digest)).first()


def get_key_by_name(session: Session, name: str) -> ApiKey | None:
    """The key with this unique name."""
    return session.scalars(select(ApiKey).where(ApiKey.name == name)).first()


def find_keys(session: Session, ref: str) -> Sequence[ApiKey]:
    """Keys matching `ref`: an id, a name, or the shown start of the key."""
    conditions = [ApiKey.name == ref, ApiKey.shown == ref]
    with contextlib.suppress(ValueError):
        conditions.append(ApiKey.id == uuid.UUID(ref))
    return session.scalars(select(ApiKey).where(or_(*conditions))).all()


def list_keys(session: Session, *, include_revoked: bool = False) -> Sequence[ApiKey]:
    """Keys, oldest first."""
    stmt = select(ApiKey)
    if not include_revoked:
        stmt = stmt.where(ApiKey.revoked_at.is_(None))
    return session.scalars(stmt.order_by(ApiKey.created_at)).all()

"""Queries over installed models. Nothing here commits."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from dreamforge.db.tables import Model


def get_model(session: Session, model_id: uuid.UUID) -> Model | None:
    """The model with this id."""
    return session.get(Model, model_id)


def get_model_by_name(session: Session, name: str) -> Model | None:
    """The model with this unique name."""
    return session.scalars(select(Model).where(Model.name == name)).first()


def list_models(
    session: Session, *, enabled: bool | None = True, installed_only: bool = True, kind: str | None = None
) -> Sequence[Model]:
    """Models, newest first; by default those installed and enabled, of every kind."""
    stmt = select(Model)
    if kind is not None:
        stmt = stmt.where(Model.kind == kind)
    if installed_only:
        stmt = stmt.where(Model.installed.is_(True))
    if enabled is not None:
        stmt = stmt.where(Model.enabled.is_(enabled))
    return session.scalars(stmt.order_by(Model.created_at.desc())).all()


def set_model_enabled(session: Session, model: Model, enabled: bool) -> Model:
    """Let jobs use the model, or stop new ones from using it (flushed, not committed)."""
    model.enabled = enabled
    session.flush()
    return model


def get_model_by_source(session: Session, source: str, revision: str) -> Model | None:
    """The model installed from this reference at this revision."""
    stmt = select(Model).where(Model.source == source, Model.revision == revision)
    return session.scalars(stmt).first()


def find_models_by_source(session: Session, source: str) -> Sequence[Model]:
    """Models installed from this reference, at any revision, newest first."""
    stmt = select(Model).where(Model.source == source).order_by(Model.created_at.desc())
    return session.scalars(stmt).all()

"""The registry rows of remote providers' models, kept in step with `DF_PROVIDERS`.

A remote model is not downloaded: it is offered by a provider the service has a key for. Each offer is
a `kind: remote-api` row (so jobs reference it by `model_id` like any model, and `/models` lists it with
the `parameters_schema` the provider honours); rows of providers no longer enabled stay, for the jobs that
name them, but are neither installed nor enabled.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from dreamforge.db.tables import Model
from dreamforge.registry import repository as models_repo
from dreamforge.registry.install import REMOTE_KIND


@dataclass(frozen=True)
class RemoteModelOffer:
    """One model a remote provider serves, as the registry lists it."""

    provider: str
    remote_model: str
    parameters_schema: dict[str, Any]
    source: str
    capabilities: tuple[str, ...] = ("txt2img",)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The registry name: `<provider>/<model>`."""
        return f"{self.provider}/{self.remote_model}"


def sync_remote_models(
    session: Session, offers: Sequence[RemoteModelOffer], enabled: Collection[str]
) -> None:
    """Upsert the offers of the `enabled` providers and retire the rows of every other provider."""
    rows = {
        m.name: m
        for m in models_repo.list_models(session, enabled=None, installed_only=False, kind=REMOTE_KIND)
    }
    offered = set()
    for rank, offer in enumerate(offers):
        if offer.provider not in enabled:
            continue
        offered.add(offer.name)
        row = rows.get(offer.name)
        if row is None:
            row = Model(name=offer.name, kind=REMOTE_KIND, layout="remote", sha256="", size_bytes=0, path="")
            session.add(row)
        row.path = offer.remote_model
        row.source = offer.source
        row.parameters_schema = offer.parameters_schema
        row.capabilities = list(offer.capabilities)
        # `rank`: the offer's place in its provider's list; the first is the provider's default model.
        row.extra = {
            **offer.extra,
            "provider": offer.provider,
            "remote_model": offer.remote_model,
            "rank": rank,
        }
        row.installed = row.enabled = True
    for name, row in rows.items():
        if name not in offered:
            row.installed = row.enabled = False
    session.flush()


def remote_models(session: Session, provider: str) -> list[Model]:
    """The installed, enabled models of `provider`, its default (the first one offered) first."""
    rows = [
        m
        for m in models_repo.list_models(session, kind=REMOTE_KIND)
        if (m.extra or {}).get("provider") == provider
    ]
    return sorted(rows, key=lambda m: int((m.extra or {}).get("rank", 0)))

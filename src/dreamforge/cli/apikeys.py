"""`dreamforge apikey ...`: issue, list and revoke API keys in this service's registry database.

Like the model commands these act on the database directly (`DF_DB_URL`), so run them where the
service's settings are, with the same `DF_SIGNING_SECRET` (or data directory) as the API: keys are
stored as a hash keyed by it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from dreamforge.cli.local import local_registry
from dreamforge.cli.output import OutputFormat, OutputOpt, emit_json, emit_table, err, fail

if TYPE_CHECKING:
    from dreamforge.db.tables import ApiKey

app = typer.Typer(
    help="Issue, list and revoke API keys (used when DF_AUTH=required). Exit codes: 0 ok, 1 failed, 2 usage.",
    no_args_is_help=True,
)

KeyArg = Annotated[str, typer.Argument(help="The key's id, name, or shown prefix (df_live_xxxxxx).")]


def _record(row: ApiKey) -> dict[str, Any]:
    record: dict[str, Any] = {
        "id": str(row.id),
        "name": row.name,
        "shown": row.shown,
        "admin": row.admin,
        "created_at": row.created_at.isoformat(),
        "max_active_jobs": row.max_active_jobs,
        "max_images_per_day": row.max_images_per_day,
        "revoked_at": row.revoked_at.isoformat() if row.revoked_at else None,
    }
    return {k: v for k, v in record.items() if v is not None}


def _table(rows: list[ApiKey]) -> Table:
    table = Table(box=None, pad_edge=False)
    for column in ("ID", "NAME", "KEY", "ADMIN", "QUOTAS", "STATE"):
        table.add_column(column, no_wrap=column != "NAME")
    for row in rows:
        quotas = (
            f"{'default' if row.max_active_jobs is None else row.max_active_jobs} active, "
            f"{'default' if row.max_images_per_day is None else row.max_images_per_day}/day"
        )
        table.add_row(
            str(row.id)[:8],
            row.name,
            row.shown + "…",
            "yes" if row.admin else "",
            quotas,
            "revoked" if row.revoked_at else "active",
        )
    return table


@app.command("create")
def create(
    name: Annotated[str, typer.Option(help="A name for the key (unique), e.g. the client it is for.")],
    admin: Annotated[bool, typer.Option("--admin", help="May see and cancel every key's jobs.")] = False,
    max_active_jobs: Annotated[
        int | None,
        typer.Option(min=0, help="Jobs queued or running at once (default DF_QUOTA_ACTIVE_JOBS; 0: no cap)."),
    ] = None,
    max_images_per_day: Annotated[
        int | None,
        typer.Option(min=0, help="Images per rolling 24 h (default DF_QUOTA_IMAGES_PER_DAY; 0: no cap)."),
    ] = None,
    output: OutputOpt = OutputFormat.json,
) -> None:
    """Issue a key, and print it and its webhook secret once, here: only a keyed hash of it is stored.

    The webhook secret (`whsec_...`) signs the webhooks of this key's jobs; receivers verify them with it.
    """
    from dreamforge.accounts.service import KeyNameTaken, issue_key
    from dreamforge.db.session import transaction
    from dreamforge.webhooks.signing import key_secret

    if not name.strip() or len(name) > 100:
        raise fail("--name must be 1 to 100 characters", code=2)
    with local_registry() as (settings, sessions):
        try:
            with transaction(sessions) as session:
                row, key = issue_key(
                    session,
                    settings.url_signing_key,
                    name=name,
                    admin=admin,
                    max_active_jobs=max_active_jobs,
                    max_images_per_day=max_images_per_day,
                )
                secret = key_secret(settings.url_signing_key, row.id)
                record = {**_record(row), "key": key, "webhook_secret": secret}
        except KeyNameTaken as exc:
            raise fail(exc.message) from None
    err.print(
        "store the key and its webhook secret now: they are not shown again (send the key as "
        "`Authorization: Bearer <key>`; verify its jobs' webhooks with the secret)",
        markup=False,
    )
    if output is OutputFormat.table:
        typer.echo(key)
        typer.echo(f"webhook secret: {secret}")
        return
    emit_json(record)


@app.command("list")
def list_keys(
    all_keys: Annotated[bool, typer.Option("--all", help="Revoked keys too.")] = False,
    output: OutputOpt = OutputFormat.json,
) -> None:
    """Keys, oldest first (never the keys themselves: only their shown prefix)."""
    from dreamforge.accounts import repository as keys_repo

    with local_registry() as (_, sessions), sessions() as session:
        rows = list(keys_repo.list_keys(session, include_revoked=all_keys))
        if output is OutputFormat.table:
            emit_table(_table(rows))
        else:
            emit_json({"keys": [_record(r) for r in rows]})


@app.command("revoke")
def revoke(key: KeyArg, output: OutputOpt = OutputFormat.json) -> None:
    """Revoke a key: its next request is refused (401); its jobs keep running and stay stored."""
    from dreamforge.accounts import repository as keys_repo
    from dreamforge.accounts.service import revoke_key
    from dreamforge.db.session import transaction

    with local_registry() as (_, sessions), transaction(sessions) as session:
        found = list(keys_repo.find_keys(session, key))
        if not found:
            raise fail(f"no API key matches {key!r} (see `dreamforge apikey list`)")
        if len(found) > 1:
            raise fail(f"{key!r} matches {len(found)} keys; give the id")
        row = revoke_key(session, found[0])
        record = _record(row)
        if output is OutputFormat.table:
            emit_table(_table([row]))
        else:
            emit_json(record)

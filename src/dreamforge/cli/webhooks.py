"""`dreamforge webhook-secret`: the secret that signs the webhooks of jobs made without an API key.

With `DF_AUTH=off` every job is signed with the service's secret: `DF_WEBHOOK_SECRET`, else one derived
from the signing secret (`DF_SIGNING_SECRET`, or the key kept in the data directory). Being derived, it
needs no database and is the same in every process that shares those settings. With `DF_AUTH=required`
a job is signed with its API key's secret instead, shown once by `dreamforge apikey create`.
"""

from __future__ import annotations

import typer
from pydantic import ValidationError
from rich.markup import escape

from dreamforge.cli.output import OutputFormat, OutputOpt, QuietOpt, emit_json, fail, note
from dreamforge.config import Settings
from dreamforge.webhooks.signing import service_secret, valid_secret


def webhook_secret(output: OutputOpt = OutputFormat.json, quiet: QuietOpt = False) -> None:
    """Print the webhook signing secret of jobs made without an API key (with DF_AUTH=off).

    It is DF_WEBHOOK_SECRET when set, else derived from DF_SIGNING_SECRET (or the data directory's
    signing key), so run it with the service's settings. Prints `{"webhook_secret", "source"}`; with
    --output table, the secret alone. Receivers verify `webhook-signature` with it.
    """
    try:
        settings = Settings()
    except ValidationError as exc:
        bad = "; ".join(
            f"DF_{'_'.join(str(part) for part in e['loc']).upper()}: {e['msg']}" for e in exc.errors()
        )
        raise fail(escape(f"invalid settings: {bad}")) from None
    configured = settings.webhook_secret.get_secret_value() if settings.webhook_secret else None
    if configured is not None and not valid_secret(configured):
        raise fail("DF_WEBHOOK_SECRET must be `whsec_` + base64 of at least 24 bytes")
    secret = service_secret(settings.url_signing_key, configured)
    if settings.auth == "required" and not quiet:
        note(
            "DF_AUTH=required: jobs are signed with their API key's secret (shown by `dreamforge apikey "
            "create`); this one signs the jobs made without one (while DF_AUTH=off)"
        )
    if output is OutputFormat.table:
        typer.echo(secret)
        return
    emit_json({"webhook_secret": secret, "source": "DF_WEBHOOK_SECRET" if configured else "derived"})

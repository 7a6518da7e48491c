"""`dreamforge gc`: delete finished jobs past their retention, now, from this machine.

It works on the database (`DF_DB_URL`) and the artifact store (`DF_MINIO_*` or the data directory)
directly, not through the API, with the same sweep API processes run every
`DF_RETENTION_SWEEP_SECONDS` when `DF_RETENTION_DAYS` is set.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from dreamforge.cli.local import open_database
from dreamforge.cli.output import (
    OutputFormat,
    OutputOpt,
    QuietOpt,
    VerboseOpt,
    configure_logging,
    emit_json,
    emit_table,
    fail,
    note,
)
from dreamforge.config import Settings

if TYPE_CHECKING:
    # Imported when the command runs, so `--help` starts without SQLAlchemy.

    from dreamforge.jobs.retention import ExpiredJob


def _size(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def _job_record(job: ExpiredJob) -> dict[str, Any]:
    return {
        "id": str(job.id),
        "status": job.status,
        "finished_at": job.finished_at.isoformat(),
        "artifacts": job.artifacts,
        "bytes": job.bytes,
    }


def _jobs_table(jobs: list[ExpiredJob]) -> Table:
    table = Table(box=None, pad_edge=False)
    table.add_column("ID", no_wrap=True)
    table.add_column("STATUS", no_wrap=True)
    table.add_column("FINISHED", no_wrap=True)
    table.add_column("ARTIFACTS", justify="right", no_wrap=True)
    table.add_column("SIZE", justify="right", no_wrap=True)
    for job in jobs:
        table.add_row(
            str(job.id)[:8],
            job.status,
            job.finished_at.strftime("%Y-%m-%d %H:%M"),
            str(job.artifacts),
            _size(job.bytes),
        )
    return table


def gc(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List the jobs that would be deleted; delete nothing.")
    ] = False,
    older_than_days: Annotated[
        float | None,
        typer.Option(
            "--older-than-days",
            min=0,
            help="Delete jobs that finished more than N days ago (default DF_RETENTION_DAYS).",
            show_default=False,
        ),
    ] = None,
    output: OutputOpt = OutputFormat.json,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Delete finished jobs (succeeded, failed, canceled) older than the retention, with their events,
    artifacts and stored images; queued and running jobs are never touched. Exit 2 without a retention."""
    settings = Settings()
    days = older_than_days if older_than_days is not None else settings.retention_days
    if days <= 0:
        raise fail("no retention: pass --older-than-days N (or set DF_RETENTION_DAYS)", code=2)
    configure_logging(verbose)

    from dreamforge.jobs.retention import cutoff_for, expired_jobs, sweep
    from dreamforge.storage.base import StorageUnavailable

    cutoff = cutoff_for(days)
    with open_database(settings) as sessions:
        if dry_run:
            jobs = expired_jobs(sessions, cutoff)
            artifacts = sum(j.artifacts for j in jobs)
            size = sum(j.bytes for j in jobs)
            if output is OutputFormat.table:
                emit_table(_jobs_table(jobs))
            else:
                emit_json(
                    {
                        "dry_run": True,
                        "older_than_days": days,
                        "cutoff": cutoff.isoformat(),
                        "jobs": [_job_record(j) for j in jobs],
                        "total": {"jobs": len(jobs), "artifacts": artifacts, "bytes": size},
                    }
                )
            if not quiet:
                note(
                    f"dry run: {len(jobs)} job(s) with {artifacts} artifact(s) ({_size(size)}) finished "
                    f"before {cutoff.isoformat(timespec='seconds')}; nothing was deleted"
                )
            return
        from dreamforge.runtime import build_store

        try:
            result = sweep(sessions, build_store(settings), cutoff)
        except StorageUnavailable as exc:
            raise fail(f"{exc} (jobs deleted so far stay deleted; run again to finish)") from None
    if output is OutputFormat.table:
        table = Table(box=None, pad_edge=False)
        table.add_column("DELETED", no_wrap=True)
        table.add_column("COUNT", justify="right", no_wrap=True)
        table.add_row("jobs", str(result.jobs))
        table.add_row("objects", str(result.objects))
        emit_table(table)
    else:
        emit_json(
            {
                "dry_run": False,
                "older_than_days": days,
                "cutoff": cutoff.isoformat(),
                "deleted": {"jobs": result.jobs, "objects": result.objects},
            }
        )
    if not quiet:
        note(
            f"deleted {result.jobs} job(s) and {result.objects} object(s) finished before "
            f"{cutoff.isoformat(timespec='seconds')}"
        )

"""Ids of the work in progress, kept in context variables so every log line can carry them.

The API middleware sets `request_id_var` for each request; `worker.runner` sets `job_id_var` while a
job runs and `item_index_var` while one item of it is processed. A thread starts with an empty
context, so a thread that works for a job (the lease keeper) sets the job id itself.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)
job_id_var: ContextVar[str | None] = ContextVar("job_id", default=None)
item_index_var: ContextVar[int | None] = ContextVar("item_index", default=None)


@contextmanager
def job_context(job_id: uuid.UUID | str) -> Iterator[None]:
    """Tag the log lines of this context with `job_id` until the block ends."""
    token = job_id_var.set(str(job_id))
    try:
        yield
    finally:
        job_id_var.reset(token)


@contextmanager
def item_context(item_index: int) -> Iterator[None]:
    """Tag the log lines of this context with `item_index` until the block ends."""
    token = item_index_var.set(item_index)
    try:
        yield
    finally:
        item_index_var.reset(token)

"""Handing committed jobs to workers."""

from __future__ import annotations

import uuid
from typing import Protocol


class Dispatcher(Protocol):
    """Delivers a committed job to some worker; called only after the job row has committed."""

    def dispatch(self, job_id: uuid.UUID) -> None:
        """Queue `job_id` for execution."""

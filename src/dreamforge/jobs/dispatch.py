"""Handing committed jobs to workers: the interface; runtime.py picks the implementation."""

from __future__ import annotations

import uuid
from typing import Protocol

from dreamforge.error_codes import ErrorCode
from dreamforge.errors import DreamForgeError


class BrokerUnavailable(DreamForgeError):
    """The message broker did not accept the job's message."""

    code = ErrorCode.broker_unavailable
    status = 503


class Dispatcher(Protocol):
    """Delivers a committed job to some worker; called only after the job row has committed."""

    def dispatch(self, job_id: uuid.UUID) -> None:
        """Queue `job_id` for execution; raises `BrokerUnavailable` if it could not be sent."""

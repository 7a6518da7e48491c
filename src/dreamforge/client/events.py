"""Job events as the client sees them on the progress stream."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel

from dreamforge.api.schemas import LogEvent


class JobEvent(BaseModel):
    """One Server-Sent Event of `GET /jobs/{id}/progress/stream`.

    `id` is what `Last-Event-ID` resumes after. `event` is an `EventKind` value, kept a plain string so
    that a client older than the server streams past kinds added later. `data` is the event's JSON
    payload (for `progress`: `item_index`, `progress`, `step`, `steps`, `overall`; for `done`: the
    terminal `status`).
    """

    id: int
    event: str
    data: dict[str, Any]

    def as_log(self) -> LogEvent:
        """A `log` event as the `LogEvent` that `/logs` returns for it (same id)."""
        return LogEvent(
            id=self.id,
            ts=datetime.fromisoformat(self.data["ts"]),
            level=self.data.get("level", "info"),
            message=self.data.get("message", ""),
            item_index=self.data.get("item_index"),
            job_id=self.data["job_id"],
        )


def reconnect_delay(failures: int) -> float:
    """Seconds to wait before reconnect number `failures` (1-based): 0.25, 0.5, 1, 2, 4, then 5."""
    return float(min(0.25 * 2 ** (failures - 1), 5.0))

"""JSON log lines (`DF_LOG_FORMAT=json`): one object per line, for log shippers.

Every line has `ts` (UTC, ISO 8601), `level`, `logger` and `message`; `request_id`, `job_id` and
`item_index` are added whenever the line has them (from the record's `extra`, else from the context
variables of `observability.context`); an exception or stack goes into `exc_info` / `stack_info` as
one string, so a traceback stays on its line. Other `extra` fields are kept, and uvicorn's access
lines also get `client`, `method`, `path` and `status`.

The formatter is a small `logging.Formatter` subclass rather than python-json-logger: that package
is not installed here, and the dozen lines below are all the format needs (the context ids and
uvicorn's fields are ours to add either way).
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any, Literal

from dreamforge.observability.context import item_index_var, job_id_var, request_id_var

LogFormat = Literal["text", "json"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# The ids a line carries when it has them, and where they come from outside the record.
_CONTEXT = (("request_id", request_id_var), ("job_id", job_id_var), ("item_index", item_index_var))
# Attributes of every LogRecord, and uvicorn's colored duplicate of the message: not `extra` fields.
_RECORD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "taskName",
    "color_message",
}
# uvicorn's loggers: configured by uvicorn itself unless `log_config` is None.
UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")


class JsonFormatter(logging.Formatter):
    """Formats a record as one line of JSON."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, var in _CONTEXT:
            value = getattr(record, key, None)
            if value is None:
                value = var.get()
            if value is not None:
                entry[key] = value
        if record.name == "uvicorn.access" and isinstance(record.args, tuple) and len(record.args) == 5:
            client, method, path, _version, status = record.args
            entry.update(client=client, method=method, path=path, status=status)
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRS and not key.startswith("_"):
                entry.setdefault(key, value)
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc_info"] = record.exc_text
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        try:
            return json.dumps(entry, default=str, ensure_ascii=False)
        except (TypeError, ValueError):
            # An `extra` value that cannot be written (a cycle): keep the line, drop the extras.
            base = {k: entry[k] for k in ("ts", "level", "logger", "message", *dict(_CONTEXT)) if k in entry}
            return json.dumps(base, default=str, ensure_ascii=False)


def configure_logging(level: int, log_format: LogFormat = "text") -> None:
    """Root logging for a process: `level` and above on stderr, as text or JSON lines.

    Like `logging.basicConfig`, it leaves a root logger that already has handlers alone. With JSON,
    Python warnings and uvicorn's loggers go through the same handler too.
    """
    if log_format != "json":
        logging.basicConfig(level=level, format=TEXT_FORMAT)
        return
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=level, handlers=[handler])
    logging.captureWarnings(True)
    route_uvicorn_to_root()


def route_uvicorn_to_root() -> None:
    """Send the lines of uvicorn's loggers to the root handler instead of uvicorn's own text ones.

    For `uvicorn dreamforge.api.asgi:app`, whose command line configured text logging before the app
    was imported. A logger uvicorn silenced (no handler, no propagation: `--no-access-log`) stays so.
    """
    for name in UVICORN_LOGGERS:
        logger = logging.getLogger(name)
        if logger.handlers:
            logger.handlers.clear()
            logger.propagate = True

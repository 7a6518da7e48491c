"""ASGI entry point for `uvicorn dreamforge.api.asgi:app` (settings from `DF_*`)."""

import logging

from dreamforge.api.app import create_app
from dreamforge.config import Settings
from dreamforge.observability.logs import configure_logging

settings = Settings()
if settings.log_format == "json":
    # uvicorn's command line set up its text loggers before importing this module: reroute them.
    configure_logging(logging.INFO, "json")
app = create_app(settings)

"""ASGI entry point for `uvicorn dreamforge.api.asgi:app` (settings from `DF_*`)."""

from dreamforge.api.app import create_app

app = create_app()

"""Metrics (Prometheus) and structured logs: what every Dream Forge process reports about itself.

`metrics` defines the metrics and how each process serves them, `logs` the JSON log format, and
`context` the ids (request, job, item) that log lines carry. Nothing here imports the API: the API,
the worker and the CLI import this package.
"""

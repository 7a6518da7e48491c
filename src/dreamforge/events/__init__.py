"""Job events (status, progress, log, artifact, error, done): persistence and live fan-out."""

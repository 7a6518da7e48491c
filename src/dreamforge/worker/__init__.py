"""Workers: the in-process runner (embedded) and, later, Celery; both call one `run_job`."""

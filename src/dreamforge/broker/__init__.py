"""The message broker of the distributed topology: Celery on Redis, shared by API and workers."""

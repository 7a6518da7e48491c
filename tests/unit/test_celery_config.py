"""The Celery settings that make delivery at-least-once and a lost worker's job come back."""

from __future__ import annotations

from dreamforge.broker.celery import TASK_NAME, celery_config, make_celery
from dreamforge.config import Settings
from dreamforge.worker.celery_app import create_worker_app


def test_late_acks_prefetch_one_and_a_visibility_timeout_longer_than_any_job() -> None:
    settings = Settings(redis_url="redis://127.0.0.1:6379/0", job_time_limit_seconds=1800, _env_file=None)
    conf = celery_config(settings)
    assert conf["task_default_queue"] == "gpu.default"
    assert conf["task_acks_late"] is True
    assert conf["task_reject_on_worker_lost"] is True
    assert conf["worker_prefetch_multiplier"] == 1
    transport = conf["broker_transport_options"]
    assert transport["visibility_timeout"] > settings.job_time_limit_seconds
    # Without these kombu looks for a dead worker's messages only every ~100 s.
    assert transport["unacked_restore_interval"] <= 10
    assert transport["unacked_restore_throttle"] == 1


def test_the_worker_registers_the_task_with_late_acks_on_its_own_queue() -> None:
    app = create_worker_app(Settings(redis_url="redis://127.0.0.1:6379/0", queue="gpu.a100", _env_file=None))
    task = app.tasks[TASK_NAME]
    assert task.acks_late is True
    assert task.reject_on_worker_lost is True
    assert app.conf.task_default_queue == "gpu.a100"


def test_the_api_publisher_registers_no_task() -> None:
    # The API only publishes by name; running jobs is the worker's alone.
    app = make_celery(Settings(redis_url="redis://127.0.0.1:6379/0", _env_file=None))
    assert TASK_NAME not in app.tasks

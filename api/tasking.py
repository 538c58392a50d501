"""Where background work runs: Celery workers when a broker (REDIS_URL) is configured, otherwise a
thread pool inside this process (the embedded shape). Never Celery's eager mode, which would tie a
job to the request that started it. Callers enqueue ids after commit, never model instances."""

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import timedelta
from typing import Any

from celery import Task
from django.conf import settings
from django.db import close_old_connections, connections, transaction

logger = logging.getLogger("kf.tasks")

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def uses_broker() -> bool:
    return bool(settings.REDIS_URL)


def _local_pool() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=settings.KF_TASK_THREADS, thread_name_prefix="kf-task")
        return _pool


def _run_local(task: Task, args: tuple[Any, ...]) -> None:
    close_old_connections()
    try:
        task(*args)
    except Exception:  # the runner's boundary: a failing task must not kill the pool thread
        logger.exception("task %s%r failed", task.name, args)
    finally:
        connections.close_all()


def dispatch(task: Task, *args: Any) -> Future | None:
    """Send now. Use enqueue() from code that runs inside a transaction."""
    if uses_broker():
        task.apply_async(args=args)
        return None
    return _local_pool().submit(_run_local, task, args)


def enqueue(task: Task, *args: Any) -> None:
    """Send once the current transaction commits, so the worker sees the rows it is given."""
    transaction.on_commit(lambda: dispatch(task, *args))


_beat_started = False


def start_local_beat() -> None:
    """The embedded shape's stand-in for `celery beat`: runs CELERY_BEAT_SCHEDULE in this process."""
    global _beat_started
    if uses_broker() or _beat_started:
        return
    _beat_started = True
    threading.Thread(target=_beat_loop, name="kf-beat", daemon=True).start()


def beat_entries() -> list[list[Any]]:
    """[task, every (seconds), next due] for each entry of CELERY_BEAT_SCHEDULE; a name that is no
    registered task fails here, at start, rather than silently never running."""
    from celery import current_app

    # autodiscover_tasks() is lazy: outside a worker nothing has imported the apps' tasks modules yet.
    current_app.loader.import_default_modules()
    entries = []
    for entry in settings.CELERY_BEAT_SCHEDULE.values():
        schedule = entry["schedule"]
        seconds = schedule.total_seconds() if isinstance(schedule, timedelta) else float(schedule)
        entries.append([current_app.tasks[entry["task"]], seconds, 0.0])
    return entries


def _beat_loop() -> None:
    entries = beat_entries()
    while True:
        now = time.monotonic()
        for entry in entries:
            task, every, due = entry
            if now >= due:
                entry[2] = now + every
                dispatch(task)
        time.sleep(5)

"""Celery tasks of the agent: a run id in, the loop out; and the reaper of runs whose worker died."""

from celery import shared_task

from agent.loop import run_execute, runs_reap


@shared_task(name="agent.tasks.run", acks_late=False)
def agent_run_task(run_id: str) -> None:
    # acks_late off: a run redelivered after its worker died must not start over (it would spend the
    # budget twice and redo edits); the reaper ends it `failed` instead.
    run_execute(run_id=run_id)


@shared_task(name="agent.tasks.reap")
def reap() -> None:
    runs_reap()

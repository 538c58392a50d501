"""Celery tasks of shell commands and test runs: a job id in, one service call."""

from celery import shared_task

from shell import services


@shared_task(name="shell.tasks.execute")
def shell_execute_task(job_id: str) -> None:
    services.shell_execute(job_id=job_id)

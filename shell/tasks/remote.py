"""Celery tasks of the remote half of the shell: ids in, one service call."""

from celery import shared_task

from shell import ssh


@shared_task(name="shell.tasks.ssh_run")
def ssh_run_task(job_id: str) -> None:
    ssh.ssh_run(job_id=job_id)

from celery import shared_task

from projects import services


@shared_task(name="projects.tasks.rescan")
def rescan_task(job_id: str) -> None:
    services.project_rescan(job_id=job_id)


@shared_task(name="projects.tasks.clone")
def clone_task(job_id: str) -> None:
    services.project_clone(job_id=job_id)

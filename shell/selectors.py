"""Reads of shell jobs, each with its access check: only jobs of the caller's workspaces."""

from django.db.models import QuerySet

from accounts.models import Role, User
from api.errors import NotFound
from projects.models import Project
from shell.services import COMMAND_KINDS, LISTED_KINDS
from streams.models import Job
from streams.selectors import job_get


def _visible(user: User) -> QuerySet[Job]:
    return Job.objects.filter(workspace__memberships__user=user)


def jobs_in_flight(*, user: User, project: Project | None = None) -> QuerySet[Job]:
    """Queued and running commands (shell, test, ssh) in every workspace the caller belongs to."""
    qs = _visible(user).filter(kind__in=LISTED_KINDS, status__in=[Job.Status.QUEUED, Job.Status.RUNNING])
    if project is not None:
        qs = qs.filter(project_id=project.pk)
    return qs


def commands_recent(*, user: User, project: Project | None = None) -> QuerySet[Job]:
    """Shell commands and test runs, of one project (already access-checked) or of every visible one."""
    qs = _visible(user).filter(kind__in=COMMAND_KINDS)
    if project is not None:
        qs = qs.filter(project_id=project.pk)
    return qs


def command_job_get(*, user: User, job_id: str, min_role: Role = Role.VIEWER) -> Job:
    """A shell, test or ssh job the caller may see; any other job id is not_found here."""
    job = job_get(user=user, job_id=job_id, min_role=min_role)
    if job.kind not in LISTED_KINDS:
        raise NotFound("No such shell job.")
    return job

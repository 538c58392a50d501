from django.db.models import QuerySet

from accounts.models import Role, User
from accounts.selectors import workspace_get
from api.errors import NotFound
from streams.models import Event, Job


def job_get(*, user: User, job_id: str, min_role: Role = Role.VIEWER) -> Job:
    job = Job.objects.filter(pk=job_id).first()
    if job is None:
        raise NotFound("No such job.")
    try:
        workspace_get(user=user, ws_id=job.workspace_id, min_role=min_role)
    except NotFound as exc:
        raise NotFound("No such job.") from exc
    return job


def events_after(*, job_id: str, cursor: int, limit: int = 500) -> QuerySet[Event]:
    return Event.objects.filter(job_id=job_id, seq__gt=cursor).order_by("seq")[:limit]

from django.db.models import QuerySet

from accounts.models import Role, User
from accounts.selectors import workspace_object_check
from streams.models import Event, Job


def job_get(*, user: User, job_id: str, min_role: Role = Role.VIEWER) -> Job:
    job = Job.objects.filter(pk=job_id).first()
    return workspace_object_check(user=user, obj=job, kind="job", min_role=min_role)


def events_after(*, job_id: str, cursor: int, limit: int = 500) -> QuerySet[Event]:
    return Event.objects.filter(job_id=job_id, seq__gt=cursor).order_by("seq")[:limit]

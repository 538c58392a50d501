"""The event log: every stream in kf is a job's events read back from the database."""

from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from accounts.models import User, Workspace
from streams.models import Event, Job


def job_group(job_id: str) -> str:
    return f"job.{job_id}"


def job_wake(job_id: str) -> None:
    """Tell followers (in any daphne process, through the channel layer) that the log grew."""
    layer = get_channel_layer()
    if layer is not None:
        async_to_sync(layer.group_send)(job_group(job_id), {"type": "job.wake"})


def job_create(*, kind: str, owner: User | None, workspace: Workspace, project_id: str = "",
               params: dict[str, Any] | None = None) -> Job:
    return Job.objects.create(kind=kind, owner=owner, workspace=workspace, project_id=project_id,
                              params=params or {})


def event_append(*, job_id: str, type: str, data: dict[str, Any] | None = None) -> Event:
    """Append one event. The UPDATE takes the job row's lock until commit, so concurrent appends to
    one job get consecutive seqs; followers are woken only after the row is committed."""
    with transaction.atomic():
        if not Job.objects.filter(pk=job_id).update(last_seq=F("last_seq") + 1):
            raise Job.DoesNotExist(job_id)
        seq = Job.objects.filter(pk=job_id).values_list("last_seq", flat=True).get()
        event = Event.objects.create(job_id=job_id, seq=seq, type=type, data=data or {})
        transaction.on_commit(lambda: job_wake(job_id))
    return event


def job_start(*, job_id: str) -> bool:
    """queued → running. False if the job was cancelled (or started) meanwhile: do not run it."""
    with transaction.atomic():
        now = timezone.now()
        started = Job.objects.filter(pk=job_id, status=Job.Status.QUEUED, cancel_requested=False).update(
            status=Job.Status.RUNNING, started_at=now, heartbeat_at=now)
        if started:
            event_append(job_id=job_id, type="status", data={"status": Job.Status.RUNNING})
    return bool(started)


def job_finish(*, job_id: str, status: str, result: dict[str, Any] | None = None,
               only_if_queued: bool = False) -> bool:
    """Ends the job once: sets its final status and appends the `end` event, which is always last."""
    assert status in Job.FINAL
    result = result or {}
    open_statuses = [Job.Status.QUEUED] if only_if_queued else [Job.Status.QUEUED, Job.Status.RUNNING]
    with transaction.atomic():
        ended = Job.objects.filter(pk=job_id, status__in=open_statuses).update(
            status=status, result=result, ended_at=timezone.now())
        if ended:
            event_append(job_id=job_id, type="end", data={"status": status, **result})
    return bool(ended)


def job_cancel(*, job: Job) -> None:
    """Raise the flag the worker checks; a job that has not started yet ends here and now."""
    Job.objects.filter(pk=job.pk).update(cancel_requested=True)
    job_finish(job_id=job.pk, status=Job.Status.CANCELLED, only_if_queued=True)
    job_wake(job.pk)


def job_cancel_requested(job_id: str) -> bool:
    return Job.objects.filter(pk=job_id, cancel_requested=True).exists()


def job_heartbeat(job_id: str) -> None:
    """The running job's worker is alive (see Job.heartbeat_at)."""
    Job.objects.filter(pk=job_id, status=Job.Status.RUNNING).update(heartbeat_at=timezone.now())

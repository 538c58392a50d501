from django.db import models
from django.utils import timezone

from accounts.models import User, Workspace
from api.ids import PrefixedIdField


class Job(models.Model):
    """A unit of background work whose progress is a log of events (DESIGN decision 4)."""

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        CANCELLED = "cancelled"
        BUDGET_EXCEEDED = "budget_exceeded"  # stopped by a spending cap (agent runs)

    FINAL = (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED, Status.BUDGET_EXCEEDED)

    id = PrefixedIdField("job")
    kind = models.CharField(max_length=30, db_index=True)
    owner = models.ForeignKey(User, null=True, on_delete=models.SET_NULL, related_name="jobs")
    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="jobs")
    # A plain id, not a foreign key: streams sits below projects (DESIGN "Layers").
    project_id = models.CharField(max_length=40, blank=True, db_index=True)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.QUEUED)
    params = models.JSONField(default=dict, blank=True)
    result = models.JSONField(default=dict, blank=True)
    cancel_requested = models.BooleanField(default=False)
    last_seq = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    # Written now and then by the process running the job; a running job whose heartbeat is stale
    # lost its worker (killed, crashed) and is ended by a reaper (job_stale_list).
    heartbeat_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["workspace", "kind", "-created_at"], name="job_ws_kind_created")]

    def __str__(self) -> str:
        return f"{self.kind} {self.id} ({self.status})"

    @property
    def finished(self) -> bool:
        return self.status in self.FINAL


class Event(models.Model):
    """One entry of a job's log. `seq` is dense per job (1, 2, 3, …) and written before it is sent."""

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="events")
    seq = models.PositiveIntegerField()
    type = models.CharField(max_length=30)
    data = models.JSONField(default=dict)
    at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["job", "seq"], name="event_job_seq_unique")]

    def __str__(self) -> str:
        return f"{self.job_id}#{self.seq} {self.type}"

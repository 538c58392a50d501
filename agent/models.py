"""An agent run (its facts; the transcript is the event log of its Job) and per-user agent prefs."""

from decimal import Decimal

from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils import timezone

from accounts.models import User, Workspace
from api.ids import PrefixedIdField
from projects.models import Project
from streams.models import Job

AGENT_JOB_KIND = "agent"  # the streams Job kind of a run's event log
DEFAULT_MAX_STEPS = 30
MAX_STEPS_LIMIT = 500
# A per-run cap above this is almost surely a typo (and a Decimal(12,6) holds it easily).
MAX_COST_USD_LIMIT = Decimal(10000)


class Run(models.Model):
    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        CANCELLED = "cancelled"
        BUDGET_EXCEEDED = "budget_exceeded"

    FINAL = (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED, Status.BUDGET_EXCEEDED)

    id = PrefixedIdField("run")
    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="agent_runs")
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="agent_runs")
    user = models.ForeignKey(User, null=True, blank=True, on_delete=models.SET_NULL, related_name="agent_runs")
    # PROTECT: a run without its event log would have lost its transcript.
    job = models.OneToOneField(Job, on_delete=models.PROTECT, related_name="agent_run")
    task = models.TextField()
    model = models.CharField(max_length=200)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.QUEUED)
    max_steps = models.PositiveIntegerField(default=DEFAULT_MAX_STEPS)
    max_cost_usd = models.DecimalField(max_digits=12, decimal_places=6, null=True, blank=True)
    steps = models.PositiveIntegerField(default=0)
    input_tokens = models.PositiveBigIntegerField(default=0)
    output_tokens = models.PositiveBigIntegerField(default=0)
    usd = models.DecimalField(max_digits=12, decimal_places=6, default=Decimal(0))
    files_changed = models.PositiveIntegerField(default=0)
    snapshot_before = models.CharField(max_length=64, blank=True)  # commit sha under refs/kf/snapshots/
    snapshot_after = models.CharField(max_length=64, blank=True)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            models.Index(fields=["workspace", "-created_at"], name="run_ws_created"),
            models.Index(fields=["user", "-created_at"], name="run_user_created"),
            models.Index(fields=["project", "status"], name="run_project_status"),
        ]
        constraints = [
            # Runs of one project are serialized: a second one is refused with `conflict` while one is
            # queued or running (two agents editing the same tree would corrupt each other's work).
            models.UniqueConstraint(fields=["project"], condition=models.Q(status__in=["queued", "running"]),
                                    name="run_one_in_flight_per_project"),
        ]

    def __str__(self) -> str:
        return f"run {self.id} ({self.status})"

    @property
    def finished(self) -> bool:
        return self.status in self.FINAL


class AgentPrefs(models.Model):
    user = models.OneToOneField(User, on_delete=models.CASCADE, related_name="agent_prefs")
    # Blank means "the server's KF_LLM_MODEL", so a changed server default reaches everyone who never chose.
    model = models.CharField(max_length=200, blank=True)
    max_cost_usd_per_run = models.DecimalField(
        max_digits=12, decimal_places=6, null=True, blank=True,
        validators=[MinValueValidator(Decimal(0)), MaxValueValidator(MAX_COST_USD_LIMIT)])
    max_steps = models.PositiveIntegerField(
        default=DEFAULT_MAX_STEPS, validators=[MinValueValidator(1), MaxValueValidator(MAX_STEPS_LIMIT)])
    auto_rollback_on_failure = models.BooleanField(default=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "agent prefs"
        verbose_name_plural = "agent prefs"

    def __str__(self) -> str:
        return f"agent prefs of {self.user_id}"

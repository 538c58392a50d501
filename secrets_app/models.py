"""The secrets vault (DESIGN decision 10). Rows hold ciphertext and wrapped data keys only: the master
keys that unwrap them live outside the database (KF_MASTER_KEY or the key file, see crypto.py)."""

from django.db import models
from django.utils import timezone

from accounts.models import User, Workspace
from api.ids import PrefixedIdField


class Secret(models.Model):
    """The current version of one named secret in a workspace.

    `ciphertext` is nonce ‖ AES-256-GCM(value) under a data key of its own, with associated data binding
    (workspace, name, version); `wrapped_key` is nonce ‖ AES-256-GCM(data key) under master key
    `key_version`. Every set makes a new data key and bumps `version`; rotation only re-wraps the data
    key (new `key_version`, same `version`), which is what lets its batches detect a racing set."""

    id = PrefixedIdField("sec")
    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="secrets")
    name = models.CharField(max_length=128)
    version = models.PositiveIntegerField(default=1)
    key_version = models.PositiveIntegerField(help_text="Version of the master key that wraps the data key")
    wrapped_key = models.BinaryField()
    ciphertext = models.BinaryField()
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    created_by = models.ForeignKey(User, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    updated_by = models.ForeignKey(User, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["workspace", "name"], name="secret_ws_name_unique")]
        # Rotation batches walk `key_version < target ORDER BY id`.
        indexes = [models.Index(fields=["key_version", "id"], name="secret_key_version_id")]

    def __str__(self) -> str:
        return f"{self.name} v{self.version}"


class MasterKey(models.Model):
    """What the database knows about a master key version: metadata only, never key material."""

    version = models.PositiveIntegerField(primary_key=True)
    created_at = models.DateTimeField(default=timezone.now)
    retired_at = models.DateTimeField(null=True, blank=True,
                                      help_text="Set once no secret is wrapped by this version any more")

    def __str__(self) -> str:
        return f"master key v{self.version}"


class Rotation(models.Model):
    class Status(models.TextChoices):
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"

    id = PrefixedIdField("rot")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.RUNNING)
    from_version = models.PositiveIntegerField(null=True, blank=True)
    target_version = models.PositiveIntegerField(null=True, blank=True)
    total = models.PositiveIntegerField(default=0, help_text="Secrets on older versions when it started")
    rewrapped = models.PositiveIntegerField(default=0)
    retired = models.JSONField(default=list, blank=True)
    failed = models.JSONField(default=list, blank=True, help_text="Secrets whose data key could not be unwrapped")
    error = models.TextField(blank=True)
    started_by = models.ForeignKey(User, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    # A plain id: the job (progress events) lives in the caller's personal workspace.
    job_id = models.CharField(max_length=40, blank=True)
    started_at = models.DateTimeField(default=timezone.now)
    heartbeat_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"rotation {self.id} → v{self.target_version} ({self.status})"


class KeyState(models.Model):
    """The installation's one row (pk=1): which master version new writes use, and the rotation that
    holds the lock. Writes read `current_version` under a shared row lock and rotation changes it with
    an UPDATE, so no set can slip an old version in behind a rotation."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    current_version = models.PositiveIntegerField()
    rotation = models.ForeignKey(Rotation, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")

    def __str__(self) -> str:
        return f"writes use master key v{self.current_version}"

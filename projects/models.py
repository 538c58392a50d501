from django.db import models
from django.utils import timezone

from accounts.models import User, Workspace
from api.ids import PrefixedIdField


class Project(models.Model):
    class Source(models.TextChoices):
        PATH = "path"
        GIT = "git"

    id = PrefixedIdField("prj")
    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="projects")
    name = models.CharField(max_length=200)
    root = models.CharField(max_length=1024, help_text="Absolute path of the working tree on the server")
    source = models.CharField(max_length=10, choices=Source.choices)
    git_url = models.CharField(max_length=2048, blank=True)
    vcs = models.CharField(max_length=10, default="none", help_text="git or none")
    head = models.CharField(max_length=64, blank=True)
    created_by = models.ForeignKey(User, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    indexed_at = models.DateTimeField(null=True, blank=True)
    files_count = models.PositiveIntegerField(default=0)
    bytes_total = models.BigIntegerField(default=0)
    symbols_count = models.PositiveIntegerField(default=0)
    findings_count = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["workspace", "root"], name="project_ws_root_unique")]

    def __str__(self) -> str:
        return self.name


class ProjectOpen(models.Model):
    """When a user last opened a project: `recent`, and the default project of project endpoints."""

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="project_opens")
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="opens")
    opened_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "project"], name="project_open_unique")]
        indexes = [models.Index(fields=["user", "-opened_at"], name="project_open_recent")]


class Blob(models.Model):
    """A text file's content, stored once per SHA-256 whatever the number of files that hold it."""

    sha = models.CharField(max_length=64, unique=True)
    size = models.PositiveIntegerField()
    content = models.TextField()

    def __str__(self) -> str:
        return self.sha[:12]


class File(models.Model):
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="files")
    path = models.CharField(max_length=1024, help_text="Relative to the project root, with / separators")
    blob = models.ForeignKey(Blob, on_delete=models.PROTECT, related_name="files")
    size = models.PositiveIntegerField()
    mtime_ns = models.BigIntegerField()
    language = models.CharField(max_length=50, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["project", "path"], name="file_project_path_unique")]

    def __str__(self) -> str:
        return self.path


class Symbol(models.Model):
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="symbols")
    file = models.ForeignKey(File, on_delete=models.CASCADE, related_name="symbols")
    path = models.CharField(max_length=1024)
    name = models.CharField(max_length=255)
    kind = models.CharField(max_length=40)
    line = models.PositiveIntegerField()
    end_line = models.PositiveIntegerField(null=True, blank=True)
    container = models.CharField(max_length=255, blank=True)
    language = models.CharField(max_length=50, blank=True)

    class Meta:
        indexes = [models.Index(fields=["project", "name"], name="symbol_project_name")]

    def __str__(self) -> str:
        return f"{self.kind} {self.name}"


class Finding(models.Model):
    class Severity(models.TextChoices):
        INFO = "info"
        WARNING = "warning"
        ERROR = "error"

    id = PrefixedIdField("fnd")
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="findings")
    file = models.ForeignKey(File, on_delete=models.CASCADE, related_name="findings")
    rule = models.CharField(max_length=60)
    severity = models.CharField(max_length=10, choices=Severity.choices)
    path = models.CharField(max_length=1024)
    line = models.PositiveIntegerField()
    message = models.CharField(max_length=500)
    fingerprint = models.CharField(max_length=64)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["project", "fingerprint"], name="finding_fingerprint_unique")]
        indexes = [models.Index(fields=["project", "severity", "path"], name="finding_project_sev_path")]

    def __str__(self) -> str:
        return f"{self.rule} {self.path}:{self.line}"

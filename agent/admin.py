
from django.contrib import admin
from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString

from accounts.admin import ReadOnlyAdmin
from agent.models import AgentPrefs, Run


@admin.register(Run)
class RunAdmin(ReadOnlyAdmin):
    """Runs are facts written by the loop: operators read them, never edit them. The transcript is the
    run's job, whose admin page shows its events."""

    list_display = ["id", "status", "short_task", "user", "project", "model", "steps", "usd", "created_at"]
    list_filter = ["status", "model", "created_at"]
    search_fields = ["id", "task", "user__email"]
    list_select_related = ["user", "project"]
    date_hierarchy = "created_at"
    fields = ["id", "status", "task", "user", "workspace", "project", "job_link", "model", "max_steps",
              "max_cost_usd", "steps", "input_tokens", "output_tokens", "usd", "files_changed", "snapshot_before",
              "snapshot_after", "error", "created_at", "started_at", "ended_at"]
    readonly_fields = fields

    @admin.display(description="task")
    def short_task(self, run: Run) -> str:
        return run.task if len(run.task) <= 80 else run.task[:79] + "…"

    @admin.display(description="event log")
    def job_link(self, run: Run) -> SafeString:
        url = reverse("admin:streams_job_change", args=[run.job_id])
        return format_html('<a href="{}">{} (events)</a>', url, run.job_id)


@admin.register(AgentPrefs)
class AgentPrefsAdmin(admin.ModelAdmin):
    list_display = ["user", "model", "max_cost_usd_per_run", "max_steps", "auto_rollback_on_failure", "updated_at"]
    list_filter = ["auto_rollback_on_failure"]
    search_fields = ["user__email", "model"]
    list_select_related = ["user"]
    autocomplete_fields = ["user"]
    readonly_fields = ["updated_at"]

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from streams.models import Event, Job


class EventInline(admin.TabularInline):
    model = Event
    extra = 0
    fields = ["seq", "type", "data", "at"]
    readonly_fields = fields
    ordering = ["seq"]
    can_delete = False
    max_num = 0
    show_change_link = False


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = ["id", "kind", "status", "owner", "workspace", "project_id", "created_at", "ended_at", "last_seq"]
    list_filter = ["kind", "status", "created_at"]
    search_fields = ["id", "project_id", "owner__email", "workspace__name"]
    readonly_fields = ["id", "kind", "owner", "workspace", "project_id", "status", "params", "result",
                       "cancel_requested", "last_seq", "created_at", "started_at", "ended_at", "heartbeat_at"]
    inlines = [EventInline]
    date_hierarchy = "created_at"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

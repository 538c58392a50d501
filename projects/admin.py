from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from projects.models import File, Finding, Project, ProjectOpen, Symbol


class ReadOnly(admin.ModelAdmin):
    """Index rows are written by rescans only."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Project)
class ProjectAdmin(admin.ModelAdmin):
    list_display = ["name", "id", "workspace", "source", "vcs", "files_count", "symbols_count", "findings_count",
                    "indexed_at", "created_at"]
    list_filter = ["source", "vcs", "created_at"]
    search_fields = ["name", "id", "root", "git_url", "workspace__name"]
    readonly_fields = ["id", "root", "source", "git_url", "vcs", "head", "created_by", "created_at", "indexed_at",
                       "files_count", "bytes_total", "symbols_count", "findings_count"]
    autocomplete_fields = ["workspace"]


@admin.register(File)
class FileAdmin(ReadOnly):
    list_display = ["path", "project", "language", "size"]
    list_filter = ["language"]
    search_fields = ["path", "project__name"]
    list_select_related = ["project"]
    exclude = ["blob"]
    readonly_fields = ["project", "path", "size", "mtime_ns", "language"]


@admin.register(Symbol)
class SymbolAdmin(ReadOnly):
    list_display = ["name", "kind", "container", "path", "line", "language", "project"]
    list_filter = ["kind", "language"]
    search_fields = ["name", "path", "container"]
    list_select_related = ["project"]
    readonly_fields = ["project", "file", "path", "name", "kind", "line", "end_line", "container", "language"]


@admin.register(Finding)
class FindingAdmin(ReadOnly):
    list_display = ["rule", "severity", "path", "line", "message", "project", "created_at"]
    list_filter = ["severity", "rule"]
    search_fields = ["rule", "path", "message", "fingerprint"]
    list_select_related = ["project"]
    readonly_fields = ["id", "project", "file", "rule", "severity", "path", "line", "message", "fingerprint",
                       "created_at"]


@admin.register(ProjectOpen)
class ProjectOpenAdmin(ReadOnly):
    list_display = ["user", "project", "opened_at"]
    search_fields = ["user__email", "project__name"]

from typing import Any

from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.db.models import QuerySet
from django.http import HttpRequest

from accounts import services
from accounts.models import ApiKey, AuditRecord, DataExport, Membership, User, UserSession, Workspace


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user", "workspace"]


@admin.register(User)
class UserAdmin(DjangoUserAdmin):
    ordering = ["-created_at"]
    list_display = ["email", "name", "is_active", "is_staff", "created_at", "last_login", "delete_after"]
    list_filter = ["is_active", "is_staff", "is_superuser", ("delete_after", admin.EmptyFieldListFilter)]
    search_fields = ["email", "name", "id"]
    readonly_fields = ["id", "created_at", "last_login", "delete_after", "avatar"]
    fieldsets = [
        (None, {"fields": ["id", "email", "name", "password", "avatar"]}),
        ("Status", {"fields": ["is_active", "is_staff", "is_superuser", "delete_after", "created_at", "last_login"]}),
        ("Permissions", {"fields": ["groups", "user_permissions"], "classes": ["collapse"]}),
    ]
    add_fieldsets = [(None, {"classes": ["wide"], "fields": ["email", "name", "password1", "password2"]})]
    inlines = [MembershipInline]
    actions = ["disable_users"]

    @admin.action(description="Disable the selected users (sign out every session, revoke every API key)")
    def disable_users(self, request: HttpRequest, queryset: QuerySet[User]) -> None:
        for user in queryset:
            services.user_disable(user=user, by=request.user, ip=services.client_ip(request))
        self.message_user(request, f"Disabled {queryset.count()} user(s).", messages.SUCCESS)


@admin.register(Workspace)
class WorkspaceAdmin(admin.ModelAdmin):
    list_display = ["name", "id", "personal", "created_at"]
    list_filter = ["personal"]
    search_fields = ["name", "id", "memberships__user__email"]
    readonly_fields = ["id", "created_at"]
    inlines = [MembershipInline]


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ["user", "workspace", "role", "created_at"]
    list_filter = ["role"]
    search_fields = ["user__email", "workspace__name", "workspace__id"]
    autocomplete_fields = ["user", "workspace"]


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    """Never shows the secret (only its hash exists, and that is hidden too)."""

    list_display = ["name", "prefix", "user", "scopes", "created_at", "last_used_at", "expires_at"]
    list_filter = ["created_at", "expires_at"]
    search_fields = ["name", "public_id", "user__email"]
    fields = ["id", "user", "name", "public_id", "scopes", "created_at", "last_used_at", "expires_at"]
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # keys are created by their owner, who alone sees the secret


@admin.register(UserSession)
class UserSessionAdmin(admin.ModelAdmin):
    list_display = ["user", "ip", "user_agent", "created_at", "last_seen_at"]
    search_fields = ["user__email", "ip"]
    list_filter = ["created_at"]
    fields = ["id", "user", "ip", "user_agent", "created_at", "last_seen_at"]
    readonly_fields = fields
    actions = ["revoke_sessions"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[UserSession]) -> None:
        services.sessions_kill(list(queryset))

    def delete_model(self, request: HttpRequest, obj: UserSession) -> None:
        services.sessions_kill([obj])

    @admin.action(description="Sign out the selected sessions")
    def revoke_sessions(self, request: HttpRequest, queryset: QuerySet[UserSession]) -> None:
        count = len(queryset)
        services.sessions_kill(list(queryset))
        self.message_user(request, f"Signed out {count} session(s).", messages.SUCCESS)


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(AuditRecord)
class AuditRecordAdmin(ReadOnlyAdmin):
    list_display = ["at", "action", "actor_email", "subject", "target", "ip"]
    list_filter = ["action", "at"]
    search_fields = ["actor_email", "target", "ip", "subject__email"]
    date_hierarchy = "at"


@admin.register(DataExport)
class DataExportAdmin(ReadOnlyAdmin):
    list_display = ["id", "user", "status", "created_at", "finished_at", "size"]
    list_filter = ["status"]
    search_fields = ["user__email", "id"]

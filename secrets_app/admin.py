"""Operators see which secrets exist and the state of the master keys and rotations: metadata only.
Nothing here shows or edits a value, a ciphertext or a wrapped key, and nothing is added or changed by
hand (sets, deletes and rotations go through the API, which audits them)."""


from django.contrib import admin

from accounts.admin import ReadOnlyAdmin
from secrets_app.models import KeyState, MasterKey, Rotation, Secret


@admin.register(Secret)
class SecretAdmin(ReadOnlyAdmin):
    list_display = ["name", "workspace", "version", "key_version", "created_at", "updated_at", "updated_by"]
    list_filter = ["key_version"]
    search_fields = ["name", "workspace__name", "workspace__id"]
    list_select_related = ["workspace", "updated_by"]
    fields = ["id", "workspace", "name", "version", "key_version", "created_at", "created_by", "updated_at",
              "updated_by"]
    readonly_fields = fields


@admin.register(MasterKey)
class MasterKeyAdmin(ReadOnlyAdmin):
    list_display = ["version", "created_at", "retired_at", "secrets"]
    fields = readonly_fields = ["version", "created_at", "retired_at"]

    @admin.display(description="Secrets wrapped by it")
    def secrets(self, obj: MasterKey) -> int:
        return Secret.objects.filter(key_version=obj.version).count()


@admin.register(Rotation)
class RotationAdmin(ReadOnlyAdmin):
    list_display = ["id", "status", "from_version", "target_version", "rewrapped", "total", "started_by",
                    "started_at", "finished_at"]
    list_filter = ["status"]
    fields = readonly_fields = ["id", "status", "from_version", "target_version", "total", "rewrapped", "retired",
                                "failed", "error", "started_by", "job_id", "started_at", "heartbeat_at",
                                "finished_at"]


@admin.register(KeyState)
class KeyStateAdmin(ReadOnlyAdmin):
    list_display = ["current_version", "rotation"]
    fields = readonly_fields = ["current_version", "rotation"]

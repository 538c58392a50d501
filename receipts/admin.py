"""Operators can read the receipt logs, never change them: an edit by hand is exactly what verify reports as
tampering. The signing key itself never appears; the head rows show which key (by id) signed them, next
to the id of the key this installation signs with now."""

import json

from django.contrib import admin
from django.utils.html import format_html

from accounts.admin import ReadOnlyAdmin
from receipts.models import Receipt, ReceiptLog
from receipts.signing import SigningKeyUnavailable, signing_key


@admin.register(Receipt)
class ReceiptAdmin(ReadOnlyAdmin):
    list_display = ["seq", "workspace", "run_id", "hash_prefix", "key_id", "appended_at"]
    list_filter = ["appended_at"]
    search_fields = ["run_id", "workspace__id", "workspace__name", "project_id", "hash"]
    list_select_related = ["workspace"]
    ordering = ["workspace", "-seq"]
    fields = ["id", "workspace", "seq", "run_id", "project_id", "user_id", "receipt", "hash", "subtree_hashes",
              "root_hash", "signature", "key_id", "appended_at"]
    readonly_fields = fields

    @admin.display(description="Hash")
    def hash_prefix(self, obj: Receipt) -> str:
        return f"{obj.hash[:12]}…"

    @admin.display(description="Receipt (RFC 8785 bytes, shown indented)")
    def receipt(self, obj: Receipt) -> str:
        try:
            shown = json.dumps(json.loads(bytes(obj.body)), indent=2, ensure_ascii=False)
        except ValueError:
            shown = bytes(obj.body).decode("utf-8", "replace")
        return format_html("<pre>{}</pre>", shown)


@admin.register(ReceiptLog)
class ReceiptLogAdmin(ReadOnlyAdmin):
    list_display = ["workspace", "tree_size", "root_prefix", "signed_at", "key_id", "current_key_id"]
    search_fields = ["workspace__id", "workspace__name"]
    list_select_related = ["workspace"]
    fields = ["workspace", "tree_size", "root_hash", "last_hash", "frontier", "signed_at", "signature", "key_id",
              "current_key_id", "current_public_key"]
    readonly_fields = fields

    @admin.display(description="Root")
    def root_prefix(self, obj: ReceiptLog) -> str:
        return f"{obj.root_hash[:12]}…" if obj.root_hash else "—"

    @admin.display(description="Key id signing now")
    def current_key_id(self, obj: ReceiptLog) -> str:
        try:
            return signing_key().key_id
        except SigningKeyUnavailable as exc:
            return exc.message

    @admin.display(description="Public key signing now (base64)")
    def current_public_key(self, obj: ReceiptLog) -> str:
        try:
            return signing_key().public_b64
        except SigningKeyUnavailable as exc:
            return exc.message

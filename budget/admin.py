"""Operators see the ledger, reservations and counters (read-only: they are what happened, moved only by
the agent's calls) and may correct caps and price overrides by hand."""


from django.contrib import admin

from accounts.admin import ReadOnlyAdmin
from budget.models import Cap, Counter, LedgerRow, PriceOverride, Reservation


@admin.register(Cap)
class CapAdmin(admin.ModelAdmin):
    list_display = ["workspace", "user", "daily_usd", "monthly_usd", "updated_at", "updated_by"]
    list_select_related = ["workspace", "user", "updated_by"]
    search_fields = ["workspace__name", "workspace__id", "user__email"]
    raw_id_fields = ["workspace", "user", "updated_by"]
    readonly_fields = ["updated_at", "updated_by"]


@admin.register(PriceOverride)
class PriceOverrideAdmin(admin.ModelAdmin):
    list_display = ["model", "workspace", "input_usd_per_mtok", "output_usd_per_mtok", "updated_at", "updated_by"]
    list_select_related = ["workspace", "updated_by"]
    search_fields = ["model", "workspace__name", "workspace__id"]
    raw_id_fields = ["workspace", "updated_by"]
    readonly_fields = ["updated_at", "updated_by"]


@admin.register(LedgerRow)
class LedgerRowAdmin(ReadOnlyAdmin):
    list_display = ["day", "workspace", "model", "usd", "input_tokens", "output_tokens", "calls", "runs"]
    list_filter = ["day", "model"]
    list_select_related = ["workspace"]
    search_fields = ["workspace__name", "workspace__id", "model"]
    date_hierarchy = "day"
    ordering = ["-day", "model"]


@admin.register(Reservation)
class ReservationAdmin(ReadOnlyAdmin):
    list_display = ["run_id", "workspace", "user", "model", "status", "day", "reserved_usd", "spent_usd",
                    "overshoot_usd", "calls", "created_at", "released_at"]
    list_filter = ["status", "day"]
    list_select_related = ["workspace", "user"]
    search_fields = ["run_id", "workspace__name", "workspace__id", "user__email"]
    ordering = ["-created_at"]


@admin.register(Counter)
class CounterAdmin(ReadOnlyAdmin):
    list_display = ["workspace", "user", "period", "start", "spent_usd", "reserved_usd"]
    list_filter = ["period", "start"]
    list_select_related = ["workspace", "user"]
    search_fields = ["workspace__name", "workspace__id", "user__email"]
    ordering = ["-start", "workspace"]

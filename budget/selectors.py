"""Reads of the budget with their access checks (viewer+ reads; outsiders get not_found)."""

from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from django.db.models import QuerySet, Sum

from accounts.models import User, Workspace
from api.errors import InvalidRequest
from budget import services
from budget.models import Cap, Counter, LedgerRow, PriceOverride, usd_of

LEDGER_DEFAULT_DAYS = 30
LEDGER_MAX_DAYS = 366


@dataclass(frozen=True)
class Standing:
    """Where a user stands against the caps now: per cap in force, what is left (never below 0)."""

    left: dict[str, Decimal]  # "daily", "monthly", "user_daily", "user_monthly" → usd left; capped ones only
    counters: dict[str, Counter | None]  # the counters of today and this month, by the same names

    @property
    def remaining_today_usd(self) -> Decimal | None:
        """What one more run could reserve today: the least that any cap in force leaves; None: no cap."""
        return min(self.left.values()) if self.left else None


def standing(*, workspace: Workspace, user: User | None) -> Standing:
    user_id = user.pk if user is not None else None
    limits = services.caps_in_force(workspace_id=workspace.pk, user_id=user_id)
    left: dict[str, Decimal] = {}
    counters: dict[str, Counter | None] = {}
    for scope in services.scopes_of(user_id=user_id, day=services.today()):
        row = services.counter_rows(workspace_id=workspace.pk, scope=scope).first()
        counters[scope.cap] = row
        limit = limits[scope.cap]
        if limit is not None:
            held = usd_of(row.spent_micro + row.reserved_micro) if row else Decimal(0)
            left[scope.cap] = max(Decimal(0), limit - held).quantize(Decimal("0.000001"))
    return Standing(left=left, counters=counters)


def workspace_caps(*, workspace: Workspace) -> Cap | None:
    return Cap.objects.filter(workspace=workspace, user__isnull=True).first()


def member_caps(*, workspace: Workspace) -> QuerySet[Cap]:
    return Cap.objects.filter(workspace=workspace, user__isnull=False).select_related("user").order_by("user__email")


def price_override_list(*, workspace: Workspace) -> QuerySet[PriceOverride]:
    return PriceOverride.objects.filter(workspace=workspace).order_by("model")


def ledger_range(*, date_from: date | None, date_to: date | None) -> tuple[date, date]:
    """The days a ledger shows: `to` defaults to today, `from` to 30 days ending at `to`."""
    end = date_to or services.today()
    start = date_from or end - timedelta(days=LEDGER_DEFAULT_DAYS - 1)
    if start > end:
        raise InvalidRequest("from is after to.", details={"from": ["must not be after to"]})
    if (end - start).days >= LEDGER_MAX_DAYS:
        raise InvalidRequest(f"At most {LEDGER_MAX_DAYS} days at once.",
                             details={"from": [f"the range is longer than {LEDGER_MAX_DAYS} days"]})
    return start, end


def ledger_items(*, workspace: Workspace, start: date, end: date, by_model: bool = False) -> list[dict[str, Any]]:
    """Days with spending or ended runs, oldest first (with by_model, one item per day and model)."""
    keys = ["day", "model"] if by_model else ["day"]
    rows = (LedgerRow.objects.filter(workspace=workspace, day__gte=start, day__lte=end).values(*keys)
            .annotate(usd=Sum("usd_micro"), in_tokens=Sum("input_tokens"), out_tokens=Sum("output_tokens"),
                      n_calls=Sum("calls"), n_runs=Sum("runs"))
            .order_by(*keys))
    return [{"date": row["day"], **({"model": row["model"]} if by_model else {}), "usd": usd_of(row["usd"]),
             "input_tokens": row["in_tokens"], "output_tokens": row["out_tokens"], "calls": row["n_calls"],
             "runs": row["n_runs"]} for row in rows]


def daily_spend(*, workspace: Workspace, days: int = LEDGER_DEFAULT_DAYS) -> list[tuple[date, Decimal]]:
    """Every one of the last `days` days (today last) with what was spent, 0 where nothing was."""
    end = services.today()
    start = end - timedelta(days=days - 1)
    spent = {item["date"]: item["usd"] for item in ledger_items(workspace=workspace, start=start, end=end)}
    return [(day, spent.get(day, Decimal("0.000000"))) for day in (start + timedelta(days=i) for i in range(days))]

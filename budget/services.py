"""Writes of the budget: caps and price overrides (admins), and the four calls the agent makes around a
run (DESIGN decision 7):

    run_reserve(workspace, user, run_id, model, usd)   before the run: hold its high estimate
    call_reserve(run_id, usd)  -> bool                 before each model call: the hold covers it?
    call_settle(run_id, model, input_tokens, output_tokens) -> Price   after each call: pay from the hold
    run_release(run_id)                                when the run ends: free the rest

Never over a cap. Every cap that applies (the workspace's daily and monthly, the user's daily and
monthly) has a counter row per period holding spent + reserved. A reservation adds to each row with one
conditional UPDATE, `… SET reserved = reserved + x WHERE spent + reserved <= cap - x`, in one fixed order
inside one transaction: the first row that refuses rolls the others back. On Postgres (READ COMMITTED)
an UPDATE that waited for another transaction's lock re-checks its WHERE against the row as committed,
so 50 runs reserving at once can never together pass a cap; on SQLite every write transaction is
IMMEDIATE (settings), so they are serialized outright. Rows are always locked in the same order
(reservation, then counters daily → monthly → user daily → user monthly, then the ledger row), so two
transactions never wait for each other in a cycle.

Days and months are UTC (TIME_ZONE = "UTC").
"""

import logging
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import F, Q, QuerySet
from django.utils import timezone

from accounts.models import Membership, User, Workspace
from accounts.services import audit_record
from api.errors import BudgetExceeded, InvalidRequest, NotFound
from budget.models import (
    MAX_CAP_USD,
    MAX_PRICE_USD_PER_MTOK,
    Cap,
    Counter,
    LedgerRow,
    Period,
    PriceOverride,
    Reservation,
    micros_of,
    usd_of,
)
from budget.pricing import Price, price_usd

logger = logging.getLogger("kf.budget")

UNSET: Any = object()  # caps_set: leave this cap as it is


class NoReservation(LookupError):
    """A call_* for a run that never reserved: the caller skipped run_reserve (a bug, not a user error)."""


def today() -> date:
    """The current UTC day (tests move it)."""
    return timezone.now().date()


# --- caps and prices (admins) --------------------------------------------------------------------------

def _usd_check(value: Decimal | None, *, field: str, maximum: Decimal) -> Decimal | None:
    if value is None:
        return None
    if not isinstance(value, Decimal) or not value.is_finite():
        raise InvalidRequest(f"{field} must be a decimal amount.", details={field: ["not a decimal amount"]})
    if value < 0:
        raise InvalidRequest(f"{field} cannot be negative.", details={field: ["must be 0 or more"]})
    if value > maximum:
        raise InvalidRequest(f"{field} is too large.", details={field: [f"must be at most {maximum}"]})
    if value != value.quantize(Decimal("0.000001")):
        raise InvalidRequest(f"{field} has more than 6 decimal places.", details={field: ["at most 6 decimal places"]})
    return value


def caps_set(*, actor: User, workspace: Workspace, user: User | None = None, daily_usd: Decimal | None = UNSET,
             monthly_usd: Decimal | None = UNSET, ip: str | None = None) -> Cap:
    """Sets the workspace's caps (user None) or one member's caps in it; None removes a cap, UNSET keeps
    it. The caller checked that `actor` is an admin of the workspace."""
    if user is not None and not Membership.objects.filter(workspace=workspace, user=user).exists():
        raise NotFound("No such member in this workspace.", details={"user_id": ["not a member"]})
    changes = {}
    for field, value in (("daily_usd", daily_usd), ("monthly_usd", monthly_usd)):
        if value is not UNSET:
            changes[field] = _usd_check(value, field=field, maximum=MAX_CAP_USD)
    with transaction.atomic():
        cap, _ = Cap.objects.get_or_create(workspace=workspace, user=user)
        for field, value in changes.items():
            setattr(cap, field, value)
        cap.updated_at, cap.updated_by = timezone.now(), actor
        cap.save()
        audit_record(action="budget.caps_set", actor=actor, ip=ip, workspace=workspace,
                     target=user.email if user else workspace.pk,
                     meta={"ws_id": workspace.pk, "user_id": user.pk if user else None,
                           "daily_usd": _plain(cap.daily_usd), "monthly_usd": _plain(cap.monthly_usd)})
    return cap


def _plain(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def price_override_set(*, actor: User, workspace: Workspace, model: str, input_usd_per_mtok: Decimal,
                       output_usd_per_mtok: Decimal, ip: str | None = None) -> tuple[PriceOverride, bool]:
    """Creates or replaces the workspace's price for `model`; (row, created)."""
    model = model.strip()
    if not model:
        raise InvalidRequest("model is required.", details={"model": ["required"]})
    values = {field: _usd_check(value, field=field, maximum=MAX_PRICE_USD_PER_MTOK)
              for field, value in (("input_usd_per_mtok", input_usd_per_mtok),
                                   ("output_usd_per_mtok", output_usd_per_mtok))}
    with transaction.atomic():
        row, created = PriceOverride.objects.update_or_create(
            workspace=workspace, model=model, defaults={**values, "updated_at": timezone.now(), "updated_by": actor})
        audit_record(action="budget.price_set", actor=actor, ip=ip, workspace=workspace, target=model,
                     meta={"ws_id": workspace.pk, **{k: str(v) for k, v in values.items()}})
    return row, created


def price_override_delete(*, actor: User, workspace: Workspace, model: str, ip: str | None = None) -> None:
    with transaction.atomic():
        deleted, _ = PriceOverride.objects.filter(workspace=workspace, model=model).delete()
        if not deleted:
            raise NotFound("No price override for this model in this workspace.")
        audit_record(action="budget.price_delete", actor=actor, ip=ip, workspace=workspace, target=model,
                     meta={"ws_id": workspace.pk})


# --- counters -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Scope:
    """One counter a reservation holds money on, and the cap that bounds it."""

    cap: str  # "daily", "monthly", "user_daily", "user_monthly"
    user_id: str | None
    period: str
    start: date


def scopes_of(*, user_id: str | None, day: date) -> list[Scope]:
    """The counters of a run in the order every transaction locks them."""
    month = day.replace(day=1)
    scopes = [Scope("daily", None, Period.DAY, day), Scope("monthly", None, Period.MONTH, month)]
    if user_id:
        scopes += [Scope("user_daily", user_id, Period.DAY, day), Scope("user_monthly", user_id, Period.MONTH, month)]
    return scopes


def caps_in_force(*, workspace_id: str, user_id: str | None) -> dict[str, Decimal | None]:
    """The caps that bound a user's spending in a workspace, by Scope.cap name (None: no cap)."""
    limits: dict[str, Decimal | None] = dict.fromkeys(("daily", "monthly", "user_daily", "user_monthly"))
    for cap in Cap.objects.filter(Q(user__isnull=True) | Q(user_id=user_id), workspace_id=workspace_id):
        prefix = "user_" if cap.user_id else ""
        limits[prefix + "daily"], limits[prefix + "monthly"] = cap.daily_usd, cap.monthly_usd
    return limits


def counter_rows(*, workspace_id: str, scope: Scope) -> QuerySet[Counter]:
    rows = Counter.objects.filter(workspace_id=workspace_id, period=scope.period, start=scope.start)
    return rows.filter(user_id=scope.user_id) if scope.user_id else rows.filter(user__isnull=True)


def _counters_ensure(workspace_id: str, scopes: list[Scope]) -> None:
    # ON CONFLICT DO NOTHING: a concurrent creator of the same row makes this wait for it, then skip.
    Counter.objects.bulk_create([Counter(workspace_id=workspace_id, user_id=s.user_id, period=s.period, start=s.start)
                                 for s in scopes], ignore_conflicts=True)


def _hold(workspace_id: str, scopes: list[Scope], micros: int) -> None:
    """Adds `micros` to the reserved money of every scope: one conditional UPDATE per counter, bounded
    by its cap. Raises BudgetExceeded at the first that does not fit; the caller's transaction then
    rolls back what the earlier ones added. Must run inside that transaction."""
    limits = caps_in_force(workspace_id=workspace_id, user_id=next((s.user_id for s in scopes if s.user_id), None))
    _counters_ensure(workspace_id, scopes)
    for scope in scopes:
        rows = counter_rows(workspace_id=workspace_id, scope=scope)
        limit = limits[scope.cap]
        if limit is not None:
            rows = rows.alias(held=F("spent_micro") + F("reserved_micro")).filter(held__lte=micros_of(limit) - micros)
        if rows.update(reserved_micro=F("reserved_micro") + micros) != 1:
            row = counter_rows(workspace_id=workspace_id, scope=scope).get()
            raise _exceeded(scope, limit, row, micros)


_CAP_WORDS = {"daily": "The workspace's daily cap", "monthly": "The workspace's monthly cap",
              "user_daily": "Your daily cap in this workspace", "user_monthly": "Your monthly cap in this workspace"}


def _exceeded(scope: Scope, limit: Decimal | None, row: Counter, micros: int) -> BudgetExceeded:
    needed = usd_of(micros)
    return BudgetExceeded(
        f"{_CAP_WORDS[scope.cap]} of ${limit} does not fit ${needed} more: ${row.spent_usd} spent and "
        f"${row.reserved_usd} reserved by runs in progress ({scope.period} from {scope.start.isoformat()}).",
        details={"cap": scope.cap, "limit_usd": str(limit), "spent_usd": str(row.spent_usd),
                 "reserved_usd": str(row.reserved_usd), "needed_usd": str(needed),
                 "period": scope.period, "period_start": scope.start.isoformat(),
                 **({"user_id": scope.user_id} if scope.user_id else {})})


def _move(workspace_id: str, scopes: list[Scope], *, reserved: int = 0, spent: int = 0) -> None:
    """Adds to the counters without a cap check (settling and releasing only ever lower the hold)."""
    _counters_ensure(workspace_id, scopes)
    for scope in scopes:
        counter_rows(workspace_id=workspace_id, scope=scope).update(
            reserved_micro=F("reserved_micro") + reserved, spent_micro=F("spent_micro") + spent)


def _ledger_add(*, workspace_id: str, day: date, model: str, **amounts: int) -> None:
    LedgerRow.objects.bulk_create([LedgerRow(workspace_id=workspace_id, day=day, model=model)],
                                  ignore_conflicts=True)
    LedgerRow.objects.filter(workspace_id=workspace_id, day=day, model=model).update(
        **{field: F(field) + value for field, value in amounts.items()})


def _locked(run_id: str) -> Reservation:
    reservation = Reservation.objects.select_for_update().filter(run_id=run_id).first()
    if reservation is None:
        raise NoReservation(f"No budget reservation for run {run_id}: run_reserve was not called.")
    return reservation


def _amount(usd: Decimal) -> int:
    if not isinstance(usd, Decimal) or not usd.is_finite() or usd < 0:
        raise ValueError(f"usd must be a Decimal of 0 or more, not {usd!r}")
    return micros_of(usd)


# --- the agent's calls --------------------------------------------------------------------------------

def run_reserve(*, workspace: Workspace, user: User | None, run_id: str, model: str, usd: Decimal) -> None:
    """Holds `usd` for a run against every cap that applies, or raises BudgetExceeded (402, details: which
    cap, its limit, spent, reserved, needed). Idempotent: a run that already has a reservation keeps it."""
    micros = _amount(usd)
    if Reservation.objects.filter(run_id=run_id).exists():
        return
    day = today()
    user_id = user.pk if user is not None else None
    try:
        with transaction.atomic():
            _hold(workspace.pk, scopes_of(user_id=user_id, day=day), micros)
            Reservation.objects.create(run_id=run_id, workspace=workspace, user=user, model=model, day=day,
                                       month=day.replace(day=1), reserved_micro=micros, granted_micro=micros)
    except IntegrityError:
        # The same run_id reserved at the same moment: that reservation stands, this one rolled back.
        if not Reservation.objects.filter(run_id=run_id).exists():
            raise


def call_reserve(*, run_id: str, usd: Decimal) -> bool:
    """Before a model call: makes sure the run's hold covers `usd` more, growing it against the caps if it
    does not. False when it cannot (a cap is reached, or the run was released): the agent then ends the
    run `budget_exceeded`. A run that reserved on an earlier day moves its hold to today's counters."""
    micros = _amount(usd)
    try:
        with transaction.atomic():
            reservation = _locked(run_id)
            if reservation.status != Reservation.Status.OPEN:
                return False
            day = today()
            if reservation.day != day:
                _move(reservation.workspace_id, scopes_of(user_id=reservation.user_id, day=reservation.day),
                      reserved=-reservation.reserved_micro)
                reservation.day, reservation.month, reservation.reserved_micro = day, day.replace(day=1), 0
            grow = micros - reservation.reserved_micro
            if grow > 0:
                _hold(reservation.workspace_id, scopes_of(user_id=reservation.user_id, day=day), grow)
                reservation.reserved_micro += grow
                reservation.granted_micro += grow
            reservation.save(update_fields=["day", "month", "reserved_micro", "granted_micro"])
    except BudgetExceeded as exc:
        logger.info("budget: run %s may not make its next call: %s", run_id, exc.message)
        return False
    return True


def call_settle(*, run_id: str, model: str, input_tokens: int, output_tokens: int) -> Price:
    """After a model call: prices its reported usage (the workspace's overrides apply) and moves that much
    from the run's hold to spent, in its counters and in the day's ledger row of `model`. A call that
    cost more than was held is still recorded (it happened), logged as a warning and kept in the
    reservation's `overshoot`: only a too-low per-call estimate of the agent can cause it."""
    found = Reservation.objects.select_related("workspace").filter(run_id=run_id).first()
    if found is None:
        raise NoReservation(f"No budget reservation for run {run_id}: run_reserve was not called.")
    # Priced before the row is locked: the price does not depend on it, and the lock stays short.
    price = price_usd(workspace=found.workspace, model=model, input_tokens=input_tokens, output_tokens=output_tokens)
    workspace_id = found.workspace_id
    cost = micros_of(price.usd)
    with transaction.atomic():
        reservation = _locked(run_id)
        paid_from_hold = min(cost, reservation.reserved_micro)
        overshoot = cost - paid_from_hold
        _move(workspace_id, scopes_of(user_id=reservation.user_id, day=reservation.day),
              reserved=-paid_from_hold, spent=cost)
        _ledger_add(workspace_id=workspace_id, day=reservation.day, model=model, usd_micro=cost,
                    input_tokens=input_tokens, output_tokens=output_tokens, calls=1)
        if reservation.calls == 0:
            reservation.first_input_tokens = input_tokens
        reservation.reserved_micro -= paid_from_hold
        reservation.spent_micro += cost
        reservation.overshoot_micro += overshoot
        reservation.input_tokens += input_tokens
        reservation.output_tokens += output_tokens
        reservation.calls += 1
        reservation.save(update_fields=["first_input_tokens", "reserved_micro", "spent_micro", "overshoot_micro",
                                        "input_tokens", "output_tokens", "calls"])
    if overshoot:
        logger.warning("budget: run %s spent $%s more than it had reserved (call of %s: %s in, %s out tokens)",
                       run_id, usd_of(overshoot), model, input_tokens, output_tokens)
    return price


def run_release(*, run_id: str) -> None:
    """When the run ends (any status): frees what is left of its hold and counts the run in today's
    ledger. A second release, or one for a run that never reserved, does nothing."""
    with transaction.atomic():
        reservation = Reservation.objects.select_for_update().filter(run_id=run_id).first()
        if reservation is None or reservation.status == Reservation.Status.RELEASED:
            return
        if reservation.reserved_micro:
            _move(reservation.workspace_id, scopes_of(user_id=reservation.user_id, day=reservation.day),
                  reserved=-reservation.reserved_micro)
        _ledger_add(workspace_id=reservation.workspace_id, day=today(), model=reservation.model, runs=1)
        reservation.status, reservation.reserved_micro = Reservation.Status.RELEASED, 0
        reservation.released_at = timezone.now()
        reservation.save(update_fields=["status", "reserved_micro", "released_at"])

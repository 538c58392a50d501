"""Caps and reservations: runs hold their high estimate against every cap that applies, calls pay from
the hold, releases free the rest; at the cap, refusals with the right details; 50 runs at once never
together pass a cap (real threads, each with its own database connection)."""

import logging
import threading
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection, connections

from accounts.models import AuditRecord, User, Workspace
from api.errors import BudgetExceeded, InvalidRequest, NotFound
from budget import services
from budget.models import Cap, Counter, LedgerRow, PriceOverride, Reservation
from budget.selectors import standing
from budget.services import (
    NoReservation,
    call_reserve,
    call_settle,
    caps_set,
    run_release,
    run_reserve,
)
from budget.tests.conftest import personal, usd

pytestmark = pytest.mark.django_db

PRICED = "gpt-4o-mini"  # $0.15 / M input, $0.60 / M output


def counter(ws: Workspace, period: str = "day", user: User | None = None) -> Counter:
    rows = Counter.objects.filter(workspace=ws, period=period)
    return (rows.filter(user=user) if user else rows.filter(user__isnull=True)).get()


def held(ws: Workspace, period: str = "day", user: User | None = None) -> tuple[Decimal, Decimal]:
    row = counter(ws, period, user)
    return row.spent_usd, row.reserved_usd


def test_a_reservation_holds_its_amount_on_every_counter(owner: User) -> None:
    ws = personal(owner)
    run_reserve(workspace=ws, user=owner, run_id="run_a", model=PRICED, usd=usd("0.25"))
    for period in ("day", "month"):
        assert held(ws, period) == (0, usd("0.25"))
        assert held(ws, period, owner) == (0, usd("0.25"))
    reservation = Reservation.objects.get(run_id="run_a")
    assert (reservation.reserved_usd, reservation.status, reservation.day) == (usd("0.25"), "open", services.today())


def test_reserve_is_refused_at_the_daily_cap_with_the_details(owner: User) -> None:
    ws = personal(owner)
    caps_set(actor=owner, workspace=ws, daily_usd=usd("1"))
    run_reserve(workspace=ws, user=owner, run_id="run_a", model=PRICED, usd=usd("0.6"))
    with pytest.raises(BudgetExceeded) as refused:
        run_reserve(workspace=ws, user=owner, run_id="run_b", model=PRICED, usd=usd("0.5"))
    assert refused.value.status_code == 402 and refused.value.default_code == "budget_exceeded"
    assert refused.value.details == {"cap": "daily", "limit_usd": "1.000000", "spent_usd": "0.000000",
                                     "reserved_usd": "0.600000", "needed_usd": "0.500000", "period": "day",
                                     "period_start": services.today().isoformat()}
    assert not Reservation.objects.filter(run_id="run_b").exists()
    # Nothing of the refused reservation stayed behind on any counter.
    assert held(ws, "day") == held(ws, "month") == held(ws, "day", owner) == (0, usd("0.6"))
    run_reserve(workspace=ws, user=owner, run_id="run_c", model=PRICED, usd=usd("0.4"))  # exactly fits
    assert held(ws) == (0, usd("1.0"))


def test_spent_money_counts_against_the_cap(owner: User) -> None:
    ws = personal(owner)
    PriceOverride.objects.create(workspace=ws, model="local", input_usd_per_mtok=1, output_usd_per_mtok=1)
    caps_set(actor=owner, workspace=ws, monthly_usd=usd("2"))
    run_reserve(workspace=ws, user=owner, run_id="run_a", model="local", usd=usd("1.5"))
    call_settle(run_id="run_a", model="local", input_tokens=1_000_000, output_tokens=0)  # $1
    run_release(run_id="run_a")
    assert held(ws, "month") == (usd("1"), 0)
    with pytest.raises(BudgetExceeded) as refused:
        run_reserve(workspace=ws, user=owner, run_id="run_b", model="local", usd=usd("1.000001"))
    assert refused.value.details["cap"] == "monthly" and refused.value.details["spent_usd"] == "1.000000"
    run_reserve(workspace=ws, user=owner, run_id="run_b", model="local", usd=usd("1"))


def test_a_members_own_cap_binds_them_only(owner: User, team: Workspace, member: User) -> None:
    caps_set(actor=owner, workspace=team, user=member, daily_usd=usd("0.10"))
    with pytest.raises(BudgetExceeded) as refused:
        run_reserve(workspace=team, user=member, run_id="run_m", model=PRICED, usd=usd("0.2"))
    assert refused.value.details["cap"] == "user_daily" and refused.value.details["user_id"] == member.pk
    run_reserve(workspace=team, user=owner, run_id="run_o", model=PRICED, usd=usd("0.2"))  # Alice has no cap
    run_reserve(workspace=team, user=member, run_id="run_m", model=PRICED, usd=usd("0.1"))


def test_a_zero_cap_stops_everything_but_free_runs(owner: User) -> None:
    ws = personal(owner)
    caps_set(actor=owner, workspace=ws, daily_usd=usd("0"))
    with pytest.raises(BudgetExceeded):
        run_reserve(workspace=ws, user=owner, run_id="run_a", model=PRICED, usd=usd("0.000001"))
    run_reserve(workspace=ws, user=owner, run_id="run_free", model="my-local-llama", usd=usd("0"))


def test_run_reserve_is_idempotent(owner: User) -> None:
    ws = personal(owner)
    run_reserve(workspace=ws, user=owner, run_id="run_a", model=PRICED, usd=usd("0.3"))
    run_reserve(workspace=ws, user=owner, run_id="run_a", model=PRICED, usd=usd("0.9"))
    assert Reservation.objects.filter(run_id="run_a").count() == 1
    assert held(ws) == (0, usd("0.3"))


def test_call_reserve_grows_the_hold_when_needed_and_refuses_past_the_cap(owner: User) -> None:
    ws = personal(owner)
    caps_set(actor=owner, workspace=ws, daily_usd=usd("1"))
    run_reserve(workspace=ws, user=owner, run_id="run_a", model=PRICED, usd=usd("0.5"))
    assert call_reserve(run_id="run_a", usd=usd("0.4")) is True  # covered: nothing changes
    assert held(ws) == (0, usd("0.5"))
    assert call_reserve(run_id="run_a", usd=usd("0.8")) is True  # grows by 0.3
    reservation = Reservation.objects.get(run_id="run_a")
    assert (reservation.reserved_usd, reservation.granted_micro) == (usd("0.8"), 800_000)
    assert held(ws) == (0, usd("0.8"))
    run_reserve(workspace=ws, user=owner, run_id="run_b", model=PRICED, usd=usd("0.2"))
    assert call_reserve(run_id="run_a", usd=usd("0.800001")) is False  # the cap is full
    assert held(ws) == (0, usd("1.0"))
    assert Reservation.objects.get(run_id="run_a").reserved_usd == usd("0.8")


def test_settle_moves_the_cost_from_reserved_to_spent_and_into_the_ledger(owner: User) -> None:
    ws = personal(owner)
    run_reserve(workspace=ws, user=owner, run_id="run_a", model=PRICED, usd=usd("0.5"))
    price = call_settle(run_id="run_a", model=PRICED, input_tokens=1_000_000, output_tokens=100_000)
    assert price.usd == usd("0.21") and price.source == "genai-prices openai/gpt-4o-mini"
    assert held(ws) == held(ws, "month") == held(ws, "day", owner) == (usd("0.21"), usd("0.29"))
    call_settle(run_id="run_a", model="gpt-4o", input_tokens=1000, output_tokens=0)  # $0.0025
    reservation = Reservation.objects.get(run_id="run_a")
    assert (reservation.spent_usd, reservation.reserved_usd, reservation.calls) == (usd("0.2125"), usd("0.2875"), 2)
    assert (reservation.input_tokens, reservation.output_tokens, reservation.first_input_tokens) == (1_001_000,
                                                                                                    100_000, 1_000_000)
    rows = {row.model: row for row in LedgerRow.objects.filter(workspace=ws, day=services.today())}
    assert rows[PRICED].usd == usd("0.21") and rows[PRICED].input_tokens == 1_000_000 and rows[PRICED].calls == 1
    assert rows["gpt-4o"].usd == usd("0.0025") and rows["gpt-4o"].runs == 0


def test_settle_uses_the_workspaces_prices(owner: User) -> None:
    ws = personal(owner)
    PriceOverride.objects.create(workspace=ws, model="local", input_usd_per_mtok=2, output_usd_per_mtok=0)
    run_reserve(workspace=ws, user=owner, run_id="run_a", model="local", usd=usd("1"))
    assert call_settle(run_id="run_a", model="local", input_tokens=100_000, output_tokens=5).usd == usd("0.2")


def test_a_call_that_cost_more_than_held_is_recorded_and_flagged(owner: User, caplog: Any) -> None:
    ws = personal(owner)
    caps_set(actor=owner, workspace=ws, daily_usd=usd("0.1"))
    run_reserve(workspace=ws, user=owner, run_id="run_a", model=PRICED, usd=usd("0.05"))
    with caplog.at_level(logging.WARNING, logger="kf.budget"):
        price = call_settle(run_id="run_a", model=PRICED, input_tokens=1_000_000, output_tokens=0)  # $0.15
    assert price.usd == usd("0.15")
    reservation = Reservation.objects.get(run_id="run_a")
    assert (reservation.spent_usd, reservation.reserved_usd, reservation.overshoot_usd) == (usd("0.15"), 0,
                                                                                          usd("0.1"))
    assert held(ws) == (usd("0.15"), 0)  # past the cap, visibly: it happened
    assert "spent $0.100000 more than it had reserved" in caplog.text
    assert call_reserve(run_id="run_a", usd=usd("0.000001")) is False  # and nothing more fits today
    with pytest.raises(BudgetExceeded):
        run_reserve(workspace=ws, user=owner, run_id="run_b", model=PRICED, usd=usd("0"))


def test_release_frees_the_rest_counts_the_run_once_and_is_idempotent(owner: User) -> None:
    ws = personal(owner)
    run_reserve(workspace=ws, user=owner, run_id="run_a", model=PRICED, usd=usd("0.5"))
    call_settle(run_id="run_a", model=PRICED, input_tokens=1_000_000, output_tokens=0)
    run_release(run_id="run_a")
    run_release(run_id="run_a")
    run_release(run_id="run_never_reserved")
    assert held(ws) == (usd("0.15"), 0) and held(ws, "day", owner) == (usd("0.15"), 0)
    reservation = Reservation.objects.get(run_id="run_a")
    assert reservation.status == "released" and reservation.released_at is not None
    assert LedgerRow.objects.get(workspace=ws, model=PRICED).runs == 1
    assert call_reserve(run_id="run_a", usd=usd("0.01")) is False  # a released run gets nothing more
    # A late settle of a released run is still recorded (the call happened), as overshoot.
    call_settle(run_id="run_a", model=PRICED, input_tokens=1_000_000, output_tokens=0)
    assert held(ws) == (usd("0.3"), 0)
    assert Reservation.objects.get(run_id="run_a").overshoot_usd == usd("0.15")


def test_calls_for_a_run_that_never_reserved_are_a_programming_error(owner: User) -> None:
    with pytest.raises(NoReservation):
        call_reserve(run_id="run_nope", usd=usd("0.1"))
    with pytest.raises(NoReservation):
        call_settle(run_id="run_nope", model=PRICED, input_tokens=1, output_tokens=1)
    with pytest.raises(ValueError):
        run_reserve(workspace=personal(owner), user=owner, run_id="run_neg", model=PRICED, usd=usd("-1"))


def test_a_run_across_midnight_moves_its_hold_to_the_new_day(owner: User, monkeypatch: Any) -> None:
    ws = personal(owner)
    caps_set(actor=owner, workspace=ws, daily_usd=usd("1"))
    first = date(2030, 1, 31)
    monkeypatch.setattr(services, "today", lambda: first)
    run_reserve(workspace=ws, user=owner, run_id="run_a", model=PRICED, usd=usd("0.9"))
    call_settle(run_id="run_a", model=PRICED, input_tokens=1_000_000, output_tokens=0)  # $0.15 on the 31st
    monkeypatch.setattr(services, "today", lambda: first + timedelta(days=1))
    assert call_reserve(run_id="run_a", usd=usd("0.3")) is True
    old = Counter.objects.get(workspace=ws, user__isnull=True, period="day", start=first)
    new = Counter.objects.get(workspace=ws, user__isnull=True, period="day", start=first + timedelta(days=1))
    assert (old.spent_usd, old.reserved_usd) == (usd("0.15"), 0)
    assert (new.spent_usd, new.reserved_usd) == (0, usd("0.3"))
    assert Counter.objects.get(workspace=ws, user__isnull=True, period="month", start=date(2030, 2, 1)).reserved_usd == usd("0.3")
    reservation = Reservation.objects.get(run_id="run_a")
    assert (reservation.day, reservation.month) == (date(2030, 2, 1), date(2030, 2, 1))
    assert standing(workspace=ws, user=owner).remaining_today_usd == usd("0.7")
    run_release(run_id="run_a")
    assert new.__class__.objects.get(pk=new.pk).reserved_usd == 0


def test_standing_is_what_the_tightest_cap_leaves(owner: User, team: Workspace, member: User) -> None:
    assert standing(workspace=team, user=member).remaining_today_usd is None
    caps_set(actor=owner, workspace=team, daily_usd=usd("5"), monthly_usd=usd("20"))
    caps_set(actor=owner, workspace=team, user=member, daily_usd=usd("2"))
    run_reserve(workspace=team, user=owner, run_id="run_o", model=PRICED, usd=usd("4"))
    assert standing(workspace=team, user=member).left == {"daily": usd("1"), "monthly": usd("16"),
                                                          "user_daily": usd("2")}
    assert standing(workspace=team, user=member).remaining_today_usd == usd("1")
    assert standing(workspace=team, user=owner).remaining_today_usd == usd("1")


def test_caps_set_validates_and_audits(owner: User, team: Workspace, member: User, outsider: User) -> None:
    with pytest.raises(InvalidRequest):
        caps_set(actor=owner, workspace=team, daily_usd=usd("-1"))
    with pytest.raises(InvalidRequest):
        caps_set(actor=owner, workspace=team, daily_usd=usd("0.0000001"))
    with pytest.raises(NotFound):
        caps_set(actor=owner, workspace=team, user=outsider, daily_usd=usd("1"))
    caps_set(actor=owner, workspace=team, daily_usd=usd("3"), monthly_usd=usd("10"))
    cap = caps_set(actor=owner, workspace=team, monthly_usd=None)  # daily kept, monthly removed
    assert (cap.daily_usd, cap.monthly_usd) == (usd("3"), None)
    assert Cap.objects.filter(workspace=team).count() == 1
    record = AuditRecord.objects.filter(action="budget.caps_set").latest("at")
    assert record.meta == {"ws_id": team.pk, "user_id": None, "daily_usd": "3.000000", "monthly_usd": None}


# --- 50 runs at once ---------------------------------------------------------------------------------

def _reserve_all_at_once(ws: Workspace, user: User, n: int, amount: Decimal) -> list[str]:
    """n threads, each with its own database connection, released together by a barrier; the outcome
    of each ("ok" or the refused cap)."""
    barrier = threading.Barrier(n)
    outcomes: list[str] = [""] * n

    def attempt(i: int) -> None:
        try:
            connection.ensure_connection()  # connected before the start line, so they truly race
            barrier.wait(timeout=60)
            run_reserve(workspace=ws, user=user, run_id=f"run_{i}", model=PRICED, usd=amount)
            outcomes[i] = "ok"
        except BudgetExceeded as exc:
            outcomes[i] = exc.details["cap"]
        except Exception as exc:  # noqa: BLE001 — reported by the assertion below
            outcomes[i] = f"error: {exc!r}"
        finally:
            connections.close_all()

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return outcomes


@pytest.mark.django_db(transaction=True)
def test_fifty_concurrent_reservations_never_pass_the_cap(owner: User, team: Workspace, member: User) -> None:
    """On Postgres the conditional UPDATEs race under READ COMMITTED; on SQLite the IMMEDIATE write
    transactions queue. Either way exactly floor(cap / amount) runs get in."""
    caps_set(actor=owner, workspace=team, daily_usd=usd("1.00"))
    outcomes = _reserve_all_at_once(team, member, 50, usd("0.03"))
    assert not [o for o in outcomes if o.startswith("error")], outcomes
    assert outcomes.count("ok") == 33 and outcomes.count("daily") == 17  # floor(1.00 / 0.03) = 33
    assert held(team) == (0, usd("0.99"))
    assert Reservation.objects.filter(workspace=team).count() == 33
    assert sum(r.reserved_micro for r in Reservation.objects.filter(workspace=team)) == 990_000


@pytest.mark.django_db(transaction=True)
def test_fifty_concurrent_runs_that_settle_keep_the_ledger_under_the_cap(owner: User, team: Workspace,
                                                                          member: User) -> None:
    """Whole runs: reserve, call_reserve + settle a few calls, release, 50 at once; the day's ledger never
    passes the cap and equals what the counters say was spent."""
    PriceOverride.objects.create(workspace=team, model=PRICED, input_usd_per_mtok=1, output_usd_per_mtok=0)
    caps_set(actor=owner, workspace=team, daily_usd=usd("0.5"))
    barrier = threading.Barrier(50)
    errors: list[str] = []

    def run(i: int) -> None:
        run_id = f"run_{i}"
        try:
            connection.ensure_connection()
            barrier.wait(timeout=60)
            try:
                run_reserve(workspace=team, user=member, run_id=run_id, model=PRICED, usd=usd("0.02"))
            except BudgetExceeded:
                return
            for _ in range(3):
                if not call_reserve(run_id=run_id, usd=usd("0.01")):
                    break
                call_settle(run_id=run_id, model=PRICED, input_tokens=10_000, output_tokens=0)  # $0.01
            run_release(run_id=run_id)
        except Exception as exc:  # noqa: BLE001
            errors.append(repr(exc))
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    ledger = sum(row.usd for row in LedgerRow.objects.filter(workspace=team))
    assert 0 < ledger <= usd("0.5")
    assert held(team) == (ledger, 0)
    assert not Reservation.objects.filter(workspace=team, overshoot_micro__gt=0).exists()
    assert LedgerRow.objects.get(workspace=team, model=PRICED).runs == Reservation.objects.filter(workspace=team).count()

"""The budget in the admin: ledger rows, reservations and counters to read; caps and prices to correct."""

from typing import Any

import pytest

from accounts.models import User
from budget.models import Cap, LedgerRow, Reservation
from budget.services import call_settle, caps_set, run_reserve
from budget.tests.conftest import personal, usd

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client(client: Any, owner: User) -> Any:
    operator = User.objects.create_superuser(email="ops@example.com", password="ops-pass-phrase-42")
    client.force_login(operator)
    ws = personal(owner)
    caps_set(actor=owner, workspace=ws, daily_usd=usd("3"))
    run_reserve(workspace=ws, user=owner, run_id="run_admin", model="gpt-4o", usd=usd("1"))
    call_settle(run_id="run_admin", model="gpt-4o", input_tokens=1000, output_tokens=10)
    return client


@pytest.mark.parametrize("model", ["cap", "priceoverride", "ledgerrow", "reservation", "counter"])
def test_changelists_load_with_search(admin_client: Any, model: str) -> None:
    assert admin_client.get(f"/admin/budget/{model}/?q=alice").status_code == 200
    assert admin_client.get(f"/admin/budget/{model}/").status_code == 200


def test_ledger_and_reservations_are_read_only_and_caps_editable(admin_client: Any) -> None:
    row = LedgerRow.objects.get()
    reservation = Reservation.objects.get()
    assert admin_client.get("/admin/budget/ledgerrow/add/").status_code == 403
    assert admin_client.post(f"/admin/budget/ledgerrow/{row.pk}/change/", {"usd_micro": 0}).status_code == 403
    page = admin_client.get(f"/admin/budget/reservation/{reservation.pk}/change/")
    assert page.status_code == 200 and "run_admin" in page.content.decode()
    assert admin_client.post(f"/admin/budget/reservation/{reservation.pk}/delete/", {"post": "yes"}).status_code == 403
    cap = Cap.objects.get()
    assert admin_client.get(f"/admin/budget/cap/{cap.pk}/change/").status_code == 200

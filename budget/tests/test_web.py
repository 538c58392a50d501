"""The /budget page (Django test client): the chart of the last 30 days, today's spending against the caps,
and who gets which forms."""

import re
from datetime import timedelta
from typing import Any

import pytest

from accounts.models import User, Workspace
from budget import services
from budget.models import PriceOverride
from budget.services import call_settle, caps_set, run_release, run_reserve
from budget.tests.conftest import personal, usd
from budget.web import _nice_top

pytestmark = pytest.mark.django_db


def test_the_page_draws_thirty_days_and_todays_standing(owner: User, client_for: Any, monkeypatch: Any) -> None:
    ws = personal(owner)
    PriceOverride.objects.create(workspace=ws, model="local", input_usd_per_mtok=1, output_usd_per_mtok=0)
    today = services.today()
    for days_ago, tokens in ((3, 2_000_000), (0, 500_000)):
        monkeypatch.setattr(services, "today", lambda d=today - timedelta(days=days_ago): d)
        run_reserve(workspace=ws, user=owner, run_id=f"run_{days_ago}", model="local", usd=usd("5"))
        call_settle(run_id=f"run_{days_ago}", model="local", input_tokens=tokens, output_tokens=0)
        if days_ago:
            run_release(run_id=f"run_{days_ago}")
    caps_set(actor=owner, workspace=ws, daily_usd=usd("4"))
    html = client_for(owner).get("/budget").content.decode()
    assert re.search(r'<a href="/budget"\s+aria-current="page">Budget</a>', html)
    bars = re.findall(r'data-test="chart-bar" data-date="([\d-]+)" data-usd="([\d.]+)"', html)
    assert len(bars) == 30 and bars[-1] == (today.isoformat(), "0.500000")
    assert bars[-4] == ((today - timedelta(days=3)).isoformat(), "2.000000")
    assert sum(usd(v) for _, v in bars) == usd("2.5") and 'data-test="chart-total">$2.5000<' in html
    assert 'data-test="chart-cap"' in html
    row = re.search(r'data-test="standing-daily">(.*?)</tr>', html, re.DOTALL).group(1)
    assert "$0.500000" in row and "$4.500000" in row and "$4.000000" in row  # spent, still held, cap
    assert "$0.000000" in re.search(r'data-test="left">([^<]*)<', row).group(1)
    assert 'data-test="caps-form"' in html and 'data-test="price-form"' in html and "/static/budget.js" in html
    assert 'data-model="local"' in html


def test_viewers_read_and_only_admins_get_the_forms(owner: User, team: Workspace, viewer: User, member: User,
                                                    client_for: Any) -> None:
    caps_set(actor=owner, workspace=team, daily_usd=usd("3"))
    for user in (viewer, member):
        html = client_for(user).get(f"/budget?ws_id={team.pk}").content.decode()
        assert 'data-test="caps-form"' not in html and 'data-test="price-form"' not in html
        assert "price-delete" not in html and 'data-test="role-note"' in html
        assert re.search(r'data-test="caps-readonly">Daily: <strong>\$3\.000000</strong>', html)
        assert 'data-test="estimate-form"' in html
    html = client_for(owner).get(f"/budget?ws_id={team.pk}").content.decode()
    assert 'data-test="caps-form"' in html and 'value="3.000000"' in html
    assert 'data-test="member-caps-form"' in html and member.email in html


def test_a_member_with_own_caps_sees_them(owner: User, team: Workspace, member: User, client_for: Any) -> None:
    caps_set(actor=owner, workspace=team, user=member, daily_usd=usd("1"))
    html = client_for(member).get(f"/budget?ws_id={team.pk}").content.decode()
    assert 'data-test="standing-user_daily"' in html and 'data-test="standing-user_monthly"' not in html
    assert 'data-test="member-cap-row"' in html


def test_outsiders_get_not_found(team: Workspace, outsider: User, client_for: Any) -> None:
    assert client_for(outsider).get(f"/budget?ws_id={team.pk}").status_code == 404
    assert client_for(outsider).get("/budget?ws_id=ws_nope").status_code == 404


def test_signed_out_visitors_are_sent_to_sign_in(anon: Any) -> None:
    response = anon.get("/budget")
    assert response.status_code == 302 and response["Location"].startswith("/login")


@pytest.mark.parametrize(("value", "top"), [("0", "0.01"), ("0.003", "0.005"), ("1", "1"), ("1.2", "2"),
                                            ("3.1", "5"), ("7", "10"), ("420", "500")])
def test_the_charts_top_is_a_round_number(value: str, top: str) -> None:
    assert _nice_top(usd(value)) == usd(top)

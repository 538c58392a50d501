"""The Budget endpoints through the real login and CSRF: estimate, ledger, caps, prices; roles (viewers
read, members cannot set, outsiders get not_found) and bad input in the API's error shape."""

import re
from datetime import date
from typing import Any

import pytest

from accounts.models import AuditRecord, User, Workspace
from budget import services
from budget.models import Cap, PriceOverride
from budget.services import call_settle, caps_set, run_release, run_reserve
from budget.tests.conftest import personal, project_with_files, usd

pytestmark = pytest.mark.django_db

USD = re.compile(r"^\d+\.\d{6}$")
TASK = "Add a --verbose flag to the CLI."


def error_code(response: Any) -> str:
    return response.json()["error"]["code"]


# --- estimate -----------------------------------------------------------------------------------------

def test_estimate_answers_the_contract(owner: User, client_for: Any, settings: Any) -> None:
    settings.KF_LLM_MODEL = "gpt-4o"
    response = client_for(owner).post("/api/budget/estimate", {"task": TASK}, format="json")
    assert response.status_code == 200, response.content
    body = response.json()
    assert {"model", "input_tokens", "output_tokens", "usd_low", "usd_expected", "usd_high", "pricing_source",
            "remaining_today_usd"} <= set(body)
    assert body["model"] == "gpt-4o" and body["pricing_source"] == "genai-prices openai/gpt-4o"
    assert all(USD.match(body[k]) for k in ("usd_low", "usd_expected", "usd_high"))
    assert usd(body["usd_low"]) < usd(body["usd_expected"]) < usd(body["usd_high"])
    assert body["remaining_today_usd"] is None and body["ws_id"] == personal(owner).pk
    assert body["input_tokens"] == body["scenarios"]["expected"]["input_tokens"] > 0
    assert body["scenarios"]["high"]["steps"] == 30 and body["tokenizer"] == "o200k_base"


def test_estimate_takes_the_model_steps_and_project(owner: User, client_for: Any) -> None:
    ws = personal(owner)
    caps_set(actor=owner, workspace=ws, daily_usd=usd("5"))
    project = project_with_files(ws, {"cli.py": ("Python", "import argparse\n" * 200)})
    body = client_for(owner).post("/api/budget/estimate", {"task": TASK, "project_id": project.pk,
                                                           "model": "claude-sonnet-4-5", "max_steps": 12},
                                  format="json").json()
    assert body["model"] == "claude-sonnet-4-5" and body["tokenizer"] == "ratio"
    assert body["project_id"] == project.pk and body["project"]["files"] == 1
    assert body["scenarios"]["high"]["steps"] == 12 and body["remaining_today_usd"] == "5.000000"


def test_estimate_without_project_id_uses_the_project_loaded_last(owner: User, client_for: Any) -> None:
    from projects.services import project_touch

    project = project_with_files(personal(owner), {"a.py": ("Python", "x = 1\n")})
    project_touch(user=owner, project=project)
    body = client_for(owner).post("/api/budget/estimate", {"task": TASK, "model": "gpt-4o"}, format="json").json()
    assert body["project_id"] == project.pk
    body = client_for(owner).post("/api/budget/estimate", {"task": TASK, "model": "gpt-4o",
                                                           "ws_id": personal(owner).pk}, format="json").json()
    assert body["project_id"] is None


def test_estimate_for_a_team_viewer_and_not_for_outsiders(owner: User, team: Workspace, viewer: User,
                                                          outsider: User, client_for: Any) -> None:
    project = project_with_files(team, {"a.py": ("Python", "x = 1\n")})
    ok = client_for(viewer).post("/api/budget/estimate", {"task": TASK, "project_id": project.pk, "model": "gpt-4o"},
                                 format="json")
    assert ok.status_code == 200 and ok.json()["ws_id"] == team.pk
    for body in ({"task": TASK, "project_id": project.pk, "model": "gpt-4o"},
                 {"task": TASK, "ws_id": team.pk, "model": "gpt-4o"}):
        refused = client_for(outsider).post("/api/budget/estimate", body, format="json")
        assert refused.status_code == 404 and error_code(refused) == "not_found"


@pytest.mark.parametrize(("body", "field"), [
    ({}, "task"), ({"task": 42, "model": "gpt-4o"}, "task"), ({"task": TASK, "model": "gpt-4o", "max_steps": "30"},
                                                              "max_steps"),
    ({"task": TASK, "model": "gpt-4o", "max_steps": 0}, "max_steps"),
    ({"task": TASK, "model": "gpt-4o", "max_steps": 501}, "max_steps"),
    ({"task": TASK, "model": "gpt-4o", "steps": 3}, "steps"), ({"task": TASK}, "model"),
])
def test_estimate_bad_input(owner: User, client_for: Any, settings: Any, body: dict[str, Any], field: str) -> None:
    settings.KF_LLM_MODEL = ""
    response = client_for(owner).post("/api/budget/estimate", body, format="json")
    assert response.status_code == 400 and error_code(response) == "invalid_request"
    assert field in response.json()["error"]["details"]


def test_unauthenticated_requests_are_refused(anon: Any) -> None:
    for method, path in (("post", "/api/budget/estimate"), ("get", "/api/budget/ledger"), ("get", "/api/budget/caps"),
                         ("put", "/api/budget/caps"), ("get", "/api/budget/prices")):
        response = getattr(anon, method)(path, {}, format="json")
        assert response.status_code == 401 and error_code(response) == "unauthenticated"


# --- ledger -------------------------------------------------------------------------------------------

@pytest.fixture
def history(owner: User, team: Workspace, monkeypatch: Any) -> Workspace:
    """Spending in the team on three days: 2030-03-01 (two models), 2030-03-02 and 2030-03-10."""
    PriceOverride.objects.create(workspace=team, model="local", input_usd_per_mtok=1, output_usd_per_mtok=2)
    for i, (day, model, tokens) in enumerate([(date(2030, 3, 1), "local", 1_000_000), (date(2030, 3, 1), "gpt-4o", 4000),
                                              (date(2030, 3, 2), "local", 500_000), (date(2030, 3, 10), "local", 1000)]):
        monkeypatch.setattr(services, "today", lambda day=day: day)
        run_reserve(workspace=team, user=owner, run_id=f"run_{i}", model=model, usd=usd("10"))
        call_settle(run_id=f"run_{i}", model=model, input_tokens=tokens, output_tokens=tokens // 10)
        run_release(run_id=f"run_{i}")
    monkeypatch.setattr(services, "today", lambda: date(2030, 3, 10))
    caps_set(actor=owner, workspace=team, daily_usd=usd("25"), monthly_usd=usd("300"))
    return team


def test_ledger_items_and_caps(history: Workspace, owner: User, client_for: Any) -> None:
    response = client_for(owner).get("/api/budget/ledger", {"ws_id": history.pk})
    assert response.status_code == 200
    body = response.json()
    assert (body["from"], body["to"]) == ("2030-02-09", "2030-03-10")  # 30 days ending today
    assert body["caps"] == {"daily_usd": "25.000000", "monthly_usd": "300.000000"}
    assert [item["date"] for item in body["items"]] == ["2030-03-01", "2030-03-02", "2030-03-10"]
    first = body["items"][0]
    assert first == {"date": "2030-03-01", "usd": "1.214000", "input_tokens": 1_004_000, "output_tokens": 100_400,
                     "calls": 2, "runs": 2}  # $1 + $0.2 local, $0.01 + $0.004 gpt-4o
    assert body["total"]["usd"] == "1.815200" and body["total"]["runs"] == 4


def test_ledger_range_and_by_model(history: Workspace, viewer: User, client_for: Any) -> None:
    client = client_for(viewer)
    body = client.get("/api/budget/ledger", {"ws_id": history.pk, "from": "2030-03-01", "to": "2030-03-02",
                                             "by_model": "true"}).json()
    assert [(i["date"], i["model"], i["usd"]) for i in body["items"]] == [
        ("2030-03-01", "gpt-4o", "0.014000"), ("2030-03-01", "local", "1.200000"), ("2030-03-02", "local", "0.600000")]
    body = client.get("/api/budget/ledger", {"ws_id": history.pk, "from": "2030-03-02", "to": "2030-03-02"}).json()
    assert [i["usd"] for i in body["items"]] == ["0.600000"] and "model" not in body["items"][0]


def test_todays_ledger_row_moves_while_a_run_goes(owner: User, client_for: Any) -> None:
    ws = personal(owner)
    client = client_for(owner)
    run_reserve(workspace=ws, user=owner, run_id="run_live", model="gpt-4o-mini", usd=usd("1"))
    seen = []
    for _ in range(3):
        call_settle(run_id="run_live", model="gpt-4o-mini", input_tokens=100_000, output_tokens=0)
        seen.append(client.get("/api/budget/ledger").json()["items"][-1]["usd"])
    assert seen == ["0.015000", "0.030000", "0.045000"]
    assert client.get("/api/budget/ledger").json()["items"][-1]["runs"] == 0
    run_release(run_id="run_live")
    assert client.get("/api/budget/ledger").json()["items"][-1]["runs"] == 1


@pytest.mark.parametrize("params", [
    {"from": "2030-03-05", "to": "2030-03-01"}, {"from": "yesterday"}, {"to": "2030-02-30"}, {"from": "2030-3-1"},
    {"from": "2028-01-01", "to": "2030-01-01"}, {"by_model": "maybe"},
])
def test_ledger_bad_input(owner: User, client_for: Any, params: dict[str, str]) -> None:
    response = client_for(owner).get("/api/budget/ledger", params)
    assert response.status_code == 400 and error_code(response) == "invalid_request"
    assert response.json()["error"]["details"]


def test_ledger_of_a_foreign_workspace_is_not_found(team: Workspace, outsider: User, client_for: Any) -> None:
    for ws_id in (team.pk, "ws_nope"):
        response = client_for(outsider).get("/api/budget/ledger", {"ws_id": ws_id})
        assert response.status_code == 404 and error_code(response) == "not_found"


# --- caps ---------------------------------------------------------------------------------------------

def test_admins_set_caps_and_viewers_read_them(owner: User, team: Workspace, team_admin: User, viewer: User,
                                               client_for: Any) -> None:
    admin = client_for(team_admin)
    response = admin.put("/api/budget/caps", {"ws_id": team.pk, "daily_usd": "12.5", "monthly_usd": 100},
                         format="json")
    assert response.status_code == 200, response.content
    assert (response.json()["daily_usd"], response.json()["monthly_usd"]) == ("12.500000", "100.000000")
    body = client_for(viewer).get("/api/budget/caps", {"ws_id": team.pk}).json()
    assert body["daily_usd"] == "12.500000" and body["remaining_today_usd"] == "12.500000"
    assert body["today"] == {"spent_usd": "0.000000", "reserved_usd": "0.000000"}
    # Omitted keeps, "" (an emptied form field) and null remove.
    body = admin.put("/api/budget/caps", {"ws_id": team.pk, "monthly_usd": ""}, format="json").json()
    assert (body["daily_usd"], body["monthly_usd"]) == ("12.500000", None)
    body = admin.put("/api/budget/caps", {"ws_id": team.pk, "daily_usd": None}, format="json").json()
    assert body["daily_usd"] is None and body["remaining_today_usd"] is None
    assert AuditRecord.objects.filter(action="budget.caps_set", actor=team_admin).count() == 3


def test_member_caps(owner: User, team: Workspace, member: User, client_for: Any) -> None:
    client = client_for(owner)
    body = client.put("/api/budget/caps", {"ws_id": team.pk, "user_id": member.pk, "daily_usd": "1"},
                      format="json").json()
    assert body["members"] == [{"user_id": member.pk, "email": member.email, "name": "Bob", "daily_usd": "1.000000",
                                "monthly_usd": None}]
    assert body["daily_usd"] is None  # the workspace's own caps are untouched
    assert client_for(member).get("/api/budget/caps", {"ws_id": team.pk}).json()["remaining_today_usd"] == "1.000000"


@pytest.mark.parametrize("role", ["member", "viewer"])
def test_members_and_viewers_cannot_set_caps(request: Any, team: Workspace, client_for: Any, role: str) -> None:
    user = request.getfixturevalue(role)
    response = client_for(user).put("/api/budget/caps", {"ws_id": team.pk, "daily_usd": "1"}, format="json")
    assert response.status_code == 403 and error_code(response) == "forbidden"
    assert not Cap.objects.filter(workspace=team).exists()


def test_outsiders_cannot_see_or_set_caps(team: Workspace, outsider: User, client_for: Any) -> None:
    client = client_for(outsider)
    assert client.get("/api/budget/caps", {"ws_id": team.pk}).status_code == 404
    response = client.put("/api/budget/caps", {"ws_id": team.pk, "daily_usd": "1"}, format="json")
    assert response.status_code == 404 and error_code(response) == "not_found"


@pytest.mark.parametrize(("body", "field"), [
    ({"daily_usd": "-1"}, "daily_usd"), ({"monthly_usd": -0.01}, "monthly_usd"), ({"daily_usd": "abc"}, "daily_usd"),
    ({"daily_usd": "0.0000001"}, "daily_usd"), ({"daily_usd": "1000001"}, "daily_usd"), ({"daily_usd": True}, "daily_usd"),
    ({"daily_usd": "NaN"}, "daily_usd"), ({"user_id": "usr_nobody", "daily_usd": "1"}, "user_id"),
    ({"weekly_usd": "1"}, "weekly_usd"),
])
def test_caps_bad_input(owner: User, client_for: Any, body: dict[str, Any], field: str) -> None:
    response = client_for(owner).put("/api/budget/caps", body, format="json")
    assert response.status_code == 400 and error_code(response) == "invalid_request"
    assert field in response.json()["error"]["details"]
    assert not Cap.objects.exists()


def test_caps_body_must_be_an_object(owner: User, client_for: Any) -> None:
    response = client_for(owner).put("/api/budget/caps", [1, 2], format="json")
    assert response.status_code == 400 and error_code(response) == "invalid_request"


# --- prices -------------------------------------------------------------------------------------------

def test_admins_set_and_remove_prices(owner: User, team: Workspace, viewer: User, client_for: Any) -> None:
    client = client_for(owner)
    body = {"ws_id": team.pk, "model": "llama-local", "input_usd_per_mtok": "0", "output_usd_per_mtok": 0.5}
    created = client.put("/api/budget/prices", body, format="json")
    assert created.status_code == 201 and created.json()["output_usd_per_mtok"] == "0.500000"
    assert client.put("/api/budget/prices", {**body, "input_usd_per_mtok": "0.1"}, format="json").status_code == 200
    listed = client_for(viewer).get("/api/budget/prices", {"ws_id": team.pk}).json()
    assert [(i["model"], i["input_usd_per_mtok"]) for i in listed["items"]] == [("llama-local", "0.100000")]
    estimate = client_for(viewer).post("/api/budget/estimate", {"task": TASK, "model": "llama-local", "ws_id": team.pk},
                                       format="json").json()
    assert estimate["pricing_source"] == "override" and usd(estimate["usd_high"]) > 0
    gone = client.delete(f"/api/budget/prices?ws_id={team.pk}&model=llama-local")
    assert gone.status_code == 204 and not PriceOverride.objects.exists()
    again = client.delete(f"/api/budget/prices?ws_id={team.pk}&model=llama-local")
    assert again.status_code == 404 and error_code(again) == "not_found"
    assert AuditRecord.objects.filter(action__in=["budget.price_set", "budget.price_delete"]).count() == 3


def test_prices_roles_and_bad_input(team: Workspace, member: User, outsider: User, owner: User,
                                    client_for: Any) -> None:
    body = {"ws_id": team.pk, "model": "m", "input_usd_per_mtok": "1", "output_usd_per_mtok": "1"}
    assert error_code(client_for(member).put("/api/budget/prices", body, format="json")) == "forbidden"
    assert error_code(client_for(member).delete(f"/api/budget/prices?ws_id={team.pk}&model=m")) == "forbidden"
    assert error_code(client_for(outsider).put("/api/budget/prices", body, format="json")) == "not_found"
    assert error_code(client_for(outsider).get("/api/budget/prices", {"ws_id": team.pk})) == "not_found"
    client = client_for(owner)
    for bad, field in (({"input_usd_per_mtok": "-1"}, "input_usd_per_mtok"), ({"model": ""}, "model"),
                       ({"output_usd_per_mtok": None}, "output_usd_per_mtok")):
        response = client.put("/api/budget/prices", {**body, **bad}, format="json")
        assert response.status_code == 400 and field in response.json()["error"]["details"]
    response = client.delete(f"/api/budget/prices?ws_id={team.pk}")
    assert response.status_code == 400 and "model" in response.json()["error"]["details"]


def test_the_schema_documents_the_budget_endpoints(owner: User, client_for: Any) -> None:
    response = client_for(owner).get("/api/schema/", HTTP_ACCEPT="application/json")
    paths = response.json()["paths"]
    assert {"post"} <= set(paths["/api/budget/estimate"]) and {"get", "put"} <= set(paths["/api/budget/caps"])
    assert {"get"} <= set(paths["/api/budget/ledger"]) and {"get", "put", "delete"} <= set(paths["/api/budget/prices"])

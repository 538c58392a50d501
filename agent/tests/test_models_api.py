"""Runs and prefs: the history and prefs endpoints (with the outsider and bad-input cases) and the admin."""

from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.models import User, Workspace
from accounts.services import api_key_create
from agent.models import DEFAULT_MAX_STEPS, AgentPrefs, Run
from projects.models import Project
from streams.services import job_create

pytestmark = pytest.mark.django_db


def project_make(workspace: Workspace, name: str = "demo") -> Project:
    return Project.objects.create(workspace=workspace, name=name, root=f"/srv/{workspace.pk}/{name}",
                                  source=Project.Source.choices[0][0])


def run_make(*, user: User | None, project: Project, status: str = Run.Status.SUCCEEDED,
             task: str = "fix the bug", age_minutes: int = 0, **fields: Any) -> Run:
    job = job_create(kind="agent", owner=user, workspace=project.workspace, project_id=project.pk)
    return Run.objects.create(workspace=project.workspace, project=project, user=user, job=job, task=task,
                              model="scripted-1", status=status, max_steps=DEFAULT_MAX_STEPS,
                              created_at=timezone.now() - timedelta(minutes=age_minutes), **fields)


def personal(user: User) -> Workspace:
    return user.memberships.get(workspace__personal=True).workspace


def key_client(user: User, scopes: list[str]) -> APIClient:
    _, raw = api_key_create(user=user, name="t", scopes=scopes, expires_in_days=None, ip=None)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return client


# --- history -------------------------------------------------------------------------------------

def test_history_is_newest_first_with_every_field(owner, client_for):
    project = project_make(personal(owner))
    old = run_make(user=owner, project=project, task="old", age_minutes=10)
    new = run_make(user=owner, project=project, task="new", usd=Decimal("0.012345"), steps=3, input_tokens=1200,
                   output_tokens=340, files_changed=2)
    body = client_for(owner).get("/api/agent/history").json()
    assert [item["id"] for item in body["items"]] == [new.pk, old.pk]
    assert body["next_cursor"] is None
    item = body["items"][0]
    assert item["usd"] == "0.012345"
    assert (item["steps"], item["input_tokens"], item["output_tokens"], item["files_changed"]) == (3, 1200, 340, 2)
    assert item["project_id"] == project.pk and item["ws_id"] == project.workspace_id
    assert item["job_id"] == new.job_id and item["task"] == "new" and item["model"] == "scripted-1"
    assert item["status"] == "succeeded" and item["created_at"].endswith("Z")
    assert item["started_at"] is None and item["ended_at"] is None


def test_history_paginates_without_gaps_or_repeats(owner, client_for):
    project = project_make(personal(owner))
    now = timezone.now()
    # Five runs share one created_at: the cursor's tie-break on the id must still walk them all.
    runs = [run_make(user=owner, project=project, age_minutes=i) for i in range(7)]
    Run.objects.filter(pk__in=[r.pk for r in runs[2:]]).update(created_at=now - timedelta(hours=1))
    client = client_for(owner)
    seen: list[str] = []
    cursor = ""
    pages = 0
    while True:
        body = client.get("/api/agent/history", {"limit": 2, "cursor": cursor}).json()
        assert len(body["items"]) <= 2
        seen += [item["id"] for item in body["items"]]
        pages += 1
        if not body["next_cursor"]:
            break
        cursor = body["next_cursor"]
    assert pages == 4
    assert len(seen) == len(set(seen)) == 7
    assert seen[:2] == [runs[0].pk, runs[1].pk]
    assert set(seen) == {r.pk for r in runs}


def test_history_bad_cursor_and_limit_are_invalid(owner, client_for):
    client = client_for(owner)
    for params in ({"cursor": "%%%not-base64"}, {"limit": "many"}, {"limit": 0}):
        response = client.get("/api/agent/history", params)
        assert response.status_code == 400, params
        assert response.json()["error"]["code"] == "invalid_request"


def test_history_filters_by_status_project_and_workspace(owner, team, client_for):
    mine, shared = project_make(personal(owner)), project_make(team, "shared")
    other = project_make(team, "other")
    failed = run_make(user=owner, project=mine, status=Run.Status.FAILED)
    cancelled = run_make(user=owner, project=shared, status=Run.Status.CANCELLED)
    ok = run_make(user=owner, project=other)
    client = client_for(owner)

    def ids(**params: str) -> set[str]:
        response = client.get("/api/agent/history", params)
        assert response.status_code == 200, response.content
        return {item["id"] for item in response.json()["items"]}

    assert ids() == {failed.pk}  # no ws_id: the personal workspace (API.md conventions)
    assert ids(status="failed") == {failed.pk}
    assert ids(ws_id=team.pk, status="failed,cancelled") == {cancelled.pk}
    assert ids(ws_id=team.pk, status="succeeded,cancelled") == {cancelled.pk, ok.pk}
    assert ids(ws_id=team.pk) == {cancelled.pk, ok.pk}
    assert ids(project_id=other.pk) == {ok.pk}
    assert ids(ws_id=team.pk, status="succeeded") == {ok.pk}
    assert ids(ws_id=personal(owner).pk, project_id=other.pk) == set()


@pytest.mark.parametrize("status", ["done", "SUCCEEDED", "failed,nope", ","])
def test_history_unknown_status_is_invalid(owner, client_for, status):
    response = client_for(owner).get("/api/agent/history", {"status": status})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_request"
    assert "status" in response.json()["error"]["details"]


def test_history_viewer_sees_team_runs_but_not_private_ones(owner, team, viewer, client_for):
    team_run = run_make(user=owner, project=project_make(team))
    run_make(user=owner, project=project_make(personal(owner)))
    client = client_for(viewer)
    assert client.get("/api/agent/history").json()["items"] == []  # no ws_id: the viewer's personal workspace
    assert [i["id"] for i in client.get("/api/agent/history", {"ws_id": team.pk}).json()["items"]] == [team_run.pk]
    response = client.get("/api/agent/history", {"ws_id": personal(owner).pk})
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"


def test_history_outsider_sees_nothing_and_foreign_ids_are_not_found(owner, team, outsider, client_for):
    project = project_make(team)
    run_make(user=owner, project=project)
    run_make(user=owner, project=project_make(personal(owner)))
    client = client_for(outsider)
    body = client.get("/api/agent/history").json()
    assert body == {"items": [], "next_cursor": None}
    for params in ({"ws_id": team.pk}, {"project_id": project.pk}, {"ws_id": "ws_doesnotexist"}):
        response = client.get("/api/agent/history", params)
        assert response.status_code == 404, params
        assert response.json()["error"]["code"] == "not_found"


def test_history_keeps_runs_of_a_deleted_user(owner, team, member, client_for):
    run = run_make(user=member, project=project_make(team))
    member.delete()
    run.refresh_from_db()
    assert run.user is None
    items = client_for(owner).get("/api/agent/history", {"ws_id": team.pk}).json()["items"]
    assert [i["id"] for i in items] == [run.pk]


def test_history_needs_credentials(anon):
    response = anon.get("/api/agent/history")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthenticated"


def test_read_key_may_read_history(owner):
    run = run_make(user=owner, project=project_make(personal(owner)))
    response = key_client(owner, ["read"]).get("/api/agent/history")
    assert response.status_code == 200
    assert [i["id"] for i in response.json()["items"]] == [run.pk]


# --- the models -----------------------------------------------------------------------------------

def test_run_job_is_protected_and_final_statuses(owner):
    from django.db.models import ProtectedError

    run = run_make(user=owner, project=project_make(personal(owner)))
    assert run.job.agent_run == run
    with pytest.raises(ProtectedError):
        run.job.delete()
    assert set(Run.FINAL) == {"succeeded", "failed", "cancelled", "budget_exceeded"}
    assert run.finished and not Run(status=Run.Status.RUNNING).finished
    assert run.pk.startswith("run_") and run.pk in str(run)


# --- prefs ----------------------------------------------------------------------------------------

def test_prefs_defaults_without_saved_row(owner, client_for, settings):
    settings.KF_LLM_MODEL = "server-default-model"
    body = client_for(owner).get("/api/agent/prefs").json()
    assert body == {"model": "", "effective_model": "server-default-model", "max_cost_usd_per_run": None,
                    "max_steps": DEFAULT_MAX_STEPS, "auto_rollback_on_failure": False, "updated_at": None}
    assert not AgentPrefs.objects.exists()  # reading does not create a row


def test_prefs_partial_update_keeps_other_fields(owner, member, client_for, settings):
    settings.KF_LLM_MODEL = "server-default-model"
    client = client_for(owner)
    response = client.post("/api/agent/prefs", {"model": "gpt-x", "max_steps": 12}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["effective_model"] == "gpt-x"
    response = client.post("/api/agent/prefs", {"max_cost_usd_per_run": "1.5", "auto_rollback_on_failure": True},
                           format="json")
    body = response.json()
    assert (body["model"], body["max_steps"], body["max_cost_usd_per_run"], body["auto_rollback_on_failure"]) == (
        "gpt-x", 12, "1.500000", True)
    assert body["updated_at"].endswith("Z")
    assert client.get("/api/agent/prefs").json() == body
    prefs = AgentPrefs.objects.get(user=owner)
    assert prefs.max_cost_usd_per_run == Decimal("1.5") and prefs.max_steps == 12
    # Back to the server default and no cap; another user's prefs are untouched.
    body = client.post("/api/agent/prefs", {"model": "", "max_cost_usd_per_run": None}, format="json").json()
    assert (body["model"], body["effective_model"], body["max_cost_usd_per_run"]) == (
        "", "server-default-model", None)
    assert client_for(member).get("/api/agent/prefs").json()["max_steps"] == DEFAULT_MAX_STEPS
    assert AgentPrefs.objects.count() == 1


@pytest.mark.parametrize("body", [
    {"model": "m" * 201},
    {"model": "bad\nmodel"},
    {"model": "tab\tmodel"},
    {"model": 42},
    {"max_cost_usd_per_run": -0.01},
    {"max_cost_usd_per_run": 10000.01},
    {"max_cost_usd_per_run": "lots"},
    {"max_cost_usd_per_run": "NaN"},
    {"max_cost_usd_per_run": "0.0000001"},
    {"max_cost_usd_per_run": True},
    {"max_steps": 0},
    {"max_steps": 501},
    {"max_steps": "30"},
    {"max_steps": 2.5},
    {"max_steps": True},
    {"max_steps": None},
    {"auto_rollback_on_failure": "yes"},
    {"auto_rollback_on_failure": 1},
    {"auto_rollback_on_failure": None},
])
def test_prefs_validation(owner, client_for, body):
    response = client_for(owner).post("/api/agent/prefs", body, format="json")
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "invalid_request"
    assert set(error["details"]) == set(body)
    assert not AgentPrefs.objects.exists()


@pytest.mark.parametrize("body, field, saved", [
    ({"model": "m" * 200}, "model", "m" * 200),
    ({"max_cost_usd_per_run": 0}, "max_cost_usd_per_run", "0.000000"),
    ({"max_cost_usd_per_run": 10000}, "max_cost_usd_per_run", "10000.000000"),
    ({"max_cost_usd_per_run": 0.25}, "max_cost_usd_per_run", "0.250000"),
    ({"max_steps": 1}, "max_steps", 1),
    ({"max_steps": 500}, "max_steps", 500),
    ({"auto_rollback_on_failure": False}, "auto_rollback_on_failure", False),
])
def test_prefs_accepts_the_limits(owner, client_for, body, field, saved):
    response = client_for(owner).post("/api/agent/prefs", body, format="json")
    assert response.status_code == 200, response.content
    assert response.json()[field] == saved


def test_prefs_unknown_field_is_rejected_not_ignored(owner, client_for):
    response = client_for(owner).post("/api/agent/prefs", {"max_steps": 5, "max_step": 7}, format="json")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_request"
    assert "max_step" in response.json()["error"]["details"]
    assert not AgentPrefs.objects.exists()


def test_prefs_body_must_be_an_object(owner, client_for):
    response = client_for(owner).post("/api/agent/prefs", [{"max_steps": 5}], format="json")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_request"


def test_prefs_post_needs_csrf_for_a_session(owner, client_for):
    client = client_for(owner)
    client.defaults.pop("HTTP_X_CSRFTOKEN")
    response = client.post("/api/agent/prefs", {"max_steps": 5}, format="json")
    assert response.status_code == 403
    assert not AgentPrefs.objects.exists()


def test_read_key_may_get_prefs_but_not_post(owner):
    client = key_client(owner, ["read"])
    assert client.get("/api/agent/prefs").status_code == 200
    response = client.post("/api/agent/prefs", {"max_steps": 5}, format="json")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden"
    assert not AgentPrefs.objects.exists()
    response = key_client(owner, ["write"]).post("/api/agent/prefs", {"max_steps": 5}, format="json")
    assert response.status_code == 200 and response.json()["max_steps"] == 5


# --- admin ----------------------------------------------------------------------------------------

@pytest.fixture
def admin_client(client):
    client.force_login(User.objects.create_superuser(email="ops@example.com", password="ops-pass-phrase-42"))
    return client


def test_run_admin_is_read_only_and_links_the_event_log(admin_client, owner):
    run = run_make(user=owner, project=project_make(personal(owner)), task="a task " * 40)
    page = admin_client.get("/admin/agent/run/?q=alice")
    assert page.status_code == 200
    html = page.content.decode()
    assert run.pk in html and "/admin/agent/run/add/" not in html
    assert admin_client.get("/admin/agent/run/?status__exact=succeeded").status_code == 200
    assert admin_client.get("/admin/agent/run/add/").status_code == 403
    detail = admin_client.get(f"/admin/agent/run/{run.pk}/change/")
    assert detail.status_code == 200
    assert f"/admin/streams/job/{run.job_id}/change/" in detail.content.decode()
    response = admin_client.post(f"/admin/agent/run/{run.pk}/change/", {"status": "failed"})
    assert response.status_code == 403
    assert admin_client.post(f"/admin/agent/run/{run.pk}/delete/", {"post": "yes"}).status_code == 403
    run.refresh_from_db()
    assert run.status == Run.Status.SUCCEEDED


def test_prefs_admin_is_editable(admin_client, owner):
    assert admin_client.get("/admin/agent/agentprefs/?q=alice").status_code == 200
    assert admin_client.get("/admin/agent/agentprefs/add/").status_code == 200
    response = admin_client.post("/admin/agent/agentprefs/add/", {
        "user": owner.pk, "model": "", "max_cost_usd_per_run": "", "max_steps": 501})
    assert response.status_code == 200  # the form again, with the error
    assert not AgentPrefs.objects.exists()
    response = admin_client.post("/admin/agent/agentprefs/add/", {
        "user": owner.pk, "model": "gpt-x", "max_cost_usd_per_run": "2", "max_steps": 40})
    assert response.status_code == 302
    assert AgentPrefs.objects.get(user=owner).max_steps == 40

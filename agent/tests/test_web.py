"""The agent pages (Django test client): a project's agent page, a run's page and the run history; who
sees them, who gets the form and the buttons, and that model and user text is rendered as text."""

import re
from typing import Any

import pytest

from accounts.models import User, Workspace
from agent import web
from agent.models import Run
from agent.services import agent_prefs_update
from agent.tests.test_models_api import personal, project_make, run_make
from projects.models import Project

pytestmark = pytest.mark.django_db


@pytest.fixture
def project(owner: User) -> Project:
    return project_make(personal(owner), "mine")


@pytest.fixture
def team_project(team: Workspace) -> Project:
    return project_make(team, "shared")


def html_of(response: Any) -> str:
    assert response.status_code == 200, response.status_code
    return response.content.decode()


# --- /projects/<id>/agent ---------------------------------------------------------------------------

def test_owner_gets_the_form_with_the_effective_model(project, owner, client_for, settings):
    settings.KF_LLM_MODEL = "server-default-model"
    html = html_of(client_for(owner).get(f"/projects/{project.pk}/agent"))
    assert f'data-project="{project.pk}"' in html and project.name in html
    assert 'data-test="agent-task"' in html and 'data-test="agent-start"' in html
    assert re.search(r'id="agent-model"[^>]*value="server-default-model"', html)
    assert '<option value="server-default-model">' in html
    assert "/static/agent.js" in html
    assert 'data-test="agent-viewer"' not in html
    # No run in flight: the run card waits, hidden, for the run the form starts.
    assert re.search(r'data-test="run-card"\s+hidden', html)
    assert 'data-test="runs-empty"' in html


def test_the_form_takes_the_model_and_limits_of_the_prefs(project, owner, client_for, settings):
    settings.KF_LLM_MODEL = "server-default-model"
    agent_prefs_update(user=owner, model="my-own-model", max_steps=12)
    html = html_of(client_for(owner).get(f"/projects/{project.pk}/agent"))
    assert re.search(r'id="agent-model"[^>]*value="my-own-model"', html)
    assert re.search(r'id="agent-max-steps"[^>]*placeholder="12"', html)
    assert re.search(r'id="agent-max-cost"[^>]*placeholder="no cap"', html)


def test_member_gets_the_form_viewer_only_the_runs(team_project, owner, member, viewer, client_for):
    run_make(user=owner, project=team_project, task="tidy the imports")
    member_html = html_of(client_for(member).get(f"/projects/{team_project.pk}/agent"))
    assert 'data-test="agent-task"' in member_html and "tidy the imports" in member_html
    viewer_html = html_of(client_for(viewer).get(f"/projects/{team_project.pk}/agent"))
    assert 'data-test="agent-viewer"' in viewer_html
    assert 'data-test="run-form"' not in viewer_html and 'data-test="agent-task"' not in viewer_html
    assert 'data-test="run-cancel"' not in viewer_html and 'data-test="run-rollback"' not in viewer_html
    assert "tidy the imports" in viewer_html  # the recent runs, readable


def test_a_run_in_flight_is_shown_when_the_page_opens(team_project, owner, viewer, client_for):
    run_make(user=owner, project=team_project, task="done before", age_minutes=5)
    running = run_make(user=owner, project=team_project, task="still going", status=Run.Status.RUNNING)
    html = html_of(client_for(viewer).get(f"/projects/{team_project.pk}/agent"))
    assert f'data-run="{running.pk}"' in html
    assert re.search(r'data-test="run-task">still going<', html)


def test_outsiders_and_unknown_projects_get_404_anonymous_users_sign_in(project, outsider, client_for, anon):
    assert client_for(outsider).get(f"/projects/{project.pk}/agent").status_code == 404
    assert client_for(outsider).get("/projects/prj_nope/agent").status_code == 404
    response = anon.get(f"/projects/{project.pk}/agent")
    assert response.status_code == 302 and re.match(r"^/login\?next=", response["Location"])


# --- /agent/runs/<id> ------------------------------------------------------------------------------

def test_run_page_shows_the_run_and_its_buttons_to_members(team_project, owner, member, client_for):
    run = run_make(user=owner, project=team_project, task="rename Greeter", steps=3, input_tokens=1200,
                   output_tokens=340, files_changed=2, usd="0.012345", snapshot_before="a" * 40)
    html = html_of(client_for(member).get(f"/agent/runs/{run.pk}"))
    assert f'data-run="{run.pk}"' in html and f'data-project="{team_project.pk}"' in html
    assert re.search(r'data-test="run-status">succeeded<', html)
    assert re.search(r'data-test="run-steps">3 / 30<', html)
    assert re.search(r'data-test="run-cost">\$0\.012345<', html)
    assert re.search(r'data-test="run-tokens">1200 · 340<', html)
    assert 'data-test="run-cancel"' in html and 'data-test="run-rollback"' in html
    assert 'data-test="new-run-link"' in html and "/static/agent.js" in html
    assert 'data-test="run-form"' not in html  # a run's page starts nothing


def test_run_page_for_a_viewer_has_no_buttons(team_project, owner, viewer, client_for):
    run = run_make(user=owner, project=team_project)
    html = html_of(client_for(viewer).get(f"/agent/runs/{run.pk}"))
    assert f'data-run="{run.pk}"' in html
    for test_id in ("run-cancel", "run-rollback", "run-rollback-force", "new-run-link"):
        assert f'data-test="{test_id}"' not in html


def test_run_text_is_rendered_as_text(project, owner, client_for):
    task = '<script>alert("task")</script>'
    run = run_make(user=owner, project=project, task=task, status=Run.Status.FAILED)
    Run.objects.filter(pk=run.pk).update(model="<b>m</b>", error="<i>boom</i>")
    for url in (f"/agent/runs/{run.pk}", f"/projects/{project.pk}/agent", "/agent/history"):
        html = html_of(client_for(owner).get(url))
        assert task not in html and "<b>m</b>" not in html and "<i>boom</i>" not in html
        assert "&lt;script&gt;alert(&quot;task&quot;)&lt;/script&gt;" in html


def test_run_page_is_404_for_outsiders_and_unknown_ids(project, owner, outsider, client_for, anon):
    run = run_make(user=owner, project=project)
    assert client_for(outsider).get(f"/agent/runs/{run.pk}").status_code == 404
    assert client_for(owner).get("/agent/runs/run_doesnotexist").status_code == 404
    response = anon.get(f"/agent/runs/{run.pk}")
    assert response.status_code == 302 and re.match(r"^/login\?next=", response["Location"])


# --- /agent/history -----------------------------------------------------------------------------------

def row_ids(html: str) -> list[str]:
    return re.findall(r'data-test="run-row" data-run-id="([^"]+)"', html)


def test_history_defaults_to_the_personal_workspace_newest_first(project, team_project, owner, client_for):
    old = run_make(user=owner, project=project, task="old", age_minutes=10)
    new = run_make(user=owner, project=project, task="new")
    run_make(user=owner, project=team_project, task="in the team")
    html = html_of(client_for(owner).get("/agent/history"))
    assert row_ids(html) == [new.pk, old.pk]
    assert 'data-test="ws-picker"' in html  # Alice has her personal workspace and Acme
    assert f'href="/projects/{project.pk}/agent"' in html and f'href="/agent/runs/{new.pk}"' in html


def test_history_of_a_workspace_a_project_and_a_status(project, team_project, owner, member, client_for):
    team_run = run_make(user=owner, project=team_project, task="team work")
    failed = run_make(user=owner, project=project, task="failed", status=Run.Status.FAILED)
    ok = run_make(user=owner, project=project, task="ok", age_minutes=3)
    client = client_for(owner)
    assert row_ids(html_of(client.get(f"/agent/history?ws_id={team_project.workspace_id}"))) == [team_run.pk]
    html = html_of(client.get(f"/agent/history?project_id={project.pk}"))
    assert row_ids(html) == [failed.pk, ok.pk] and 'data-test="history-clear-project"' in html
    assert row_ids(html_of(client.get(f"/agent/history?project_id={project.pk}&status=failed"))) == [failed.pk]
    # Bob, a member of Acme only besides his own workspace, sees the team's run there.
    assert row_ids(html_of(client_for(member).get(f"/agent/history?ws_id={team_project.workspace_id}"))) == [
        team_run.pk]
    assert row_ids(html_of(client_for(member).get("/agent/history"))) == []


def test_history_pages_follow_the_cursor(project, owner, client_for, monkeypatch):
    monkeypatch.setattr(web, "HISTORY_PAGE", 2)
    runs = [run_make(user=owner, project=project, task=f"run {i}", age_minutes=i) for i in range(5)]
    client = client_for(owner)
    seen: list[str] = []
    url = f"/agent/history?project_id={project.pk}"
    while url:
        html = html_of(client.get(url))
        seen += row_ids(html)
        match = re.search(r'href="(\?[^"]*cursor=[^"]*)" data-test="history-older"', html)
        url = "/agent/history" + match.group(1).replace("&amp;", "&") if match else ""
    assert seen == [r.pk for r in runs]


def test_history_bad_status_says_so(owner, client_for):
    html = html_of(client_for(owner).get("/agent/history?status=nonsense"))
    assert 'data-test="history-error"' in html and row_ids(html) == []


def test_history_is_404_for_foreign_workspaces_and_projects(project, team, outsider, client_for, anon):
    client = client_for(outsider)
    assert client.get(f"/agent/history?ws_id={team.pk}").status_code == 404
    assert client.get(f"/agent/history?project_id={project.pk}").status_code == 404
    assert client.get("/agent/history?project_id=prj_nope").status_code == 404
    response = anon.get("/agent/history")
    assert response.status_code == 302 and re.match(r"^/login\?next=", response["Location"])


def test_nav_and_project_page_link_to_the_agent(project, owner, client_for):
    html = html_of(client_for(owner).get(f"/projects/{project.pk}"))
    assert f'href="/projects/{project.pk}/agent"' in html and 'href="/agent/history"' in html

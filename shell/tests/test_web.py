"""The shell page (Django test client): who sees it, what a member and a viewer get, and that it
renders commands as text."""

import re

import pytest

from secrets_app.services import secret_set
from shell.tests.test_commands import make_project, personal, tree  # noqa: F401 (fixture)
from streams.services import job_create

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def project(owner, tree):  # noqa: F811
    return make_project(tree, personal(owner), owner)


@pytest.fixture
def team_project(team, owner, tree):  # noqa: F811
    return make_project(tree, team, owner)


def test_member_gets_the_run_and_test_forms(project, owner, client_for, tree):  # noqa: F811
    (tree / "conftest.py").write_text("")
    response = client_for(owner).get(f"/projects/{project.pk}/shell")
    assert response.status_code == 200
    html = response.content.decode()
    assert f'data-project="{project.pk}"' in html and project.name in html and project.root in html
    assert 'data-test="shell-command"' in html and 'data-test="test-run"' in html
    assert "detected: pytest (conftest.py)" in html
    assert "/static/shell.js" in html
    assert 'data-test="running-empty"' in html and 'data-test="recent-empty"' in html


def test_secret_names_are_offered_never_their_values(project, owner, client_for):
    secret_set(user=owner, workspace=project.workspace, name="DEPLOY_KEY", value="value-that-must-not-show")
    html = client_for(owner).get(f"/projects/{project.pk}/shell").content.decode()
    assert 'value="DEPLOY_KEY"' in html and "value-that-must-not-show" not in html


def test_viewer_sees_the_lists_but_no_forms(team_project, owner, viewer, client_for):
    job = job_create(kind="shell", owner=owner, workspace=team_project.workspace, project_id=team_project.pk,
                     params={"command": "make deploy"})
    html = client_for(viewer).get(f"/projects/{team_project.pk}/shell").content.decode()
    assert 'data-test="shell-viewer"' in html
    assert 'data-test="shell-command"' not in html and 'data-test="shell-cancel"' not in html
    assert f'data-job-id="{job.pk}"' in html and "make deploy" in html  # running now, and recent


def test_commands_are_shown_as_text(project, owner, client_for):
    job_create(kind="shell", owner=owner, workspace=project.workspace, project_id=project.pk,
               params={"command": '<script>alert("x")</script>'})
    html = client_for(owner).get(f"/projects/{project.pk}/shell").content.decode()
    assert '<script>alert("x")</script>' not in html
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in html


def test_outsiders_get_404_and_anonymous_users_sign_in(project, outsider, client_for, anon):
    assert client_for(outsider).get(f"/projects/{project.pk}/shell").status_code == 404
    assert client_for(outsider).get("/projects/prj_nope/shell").status_code == 404
    response = anon.get(f"/projects/{project.pk}/shell")
    assert response.status_code == 302 and re.match(r"^/login\?next=", response["Location"])

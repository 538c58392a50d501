"""The shell page (Django test client): who sees it, what a member and a viewer get, and that it
renders commands as text."""

import re
from pathlib import Path

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


# --- SSH hosts and suggest ------------------------------------------------------------------------------

def write_ssh_config(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


SSH_CONFIG = """# the operator's hosts
Host build-box db
  HostName 10.0.0.5
  User deploy
  Port 2222
  IdentityFile /operators/keys/id_build_secret

Host <b>odd</b>
  HostName odd.example.com

Host *.internal !bastion.internal
  User nobody
"""


def host_rows(html: str) -> list[tuple[str, str, str, str]]:
    return re.findall(r'data-test="ssh-host-alias">(.*?)</code></td>\s*<td data-test="ssh-host-hostname">(.*?)</td>\s*'
                      r'<td data-test="ssh-host-user">(.*?)</td>\s*<td class="num" data-test="ssh-host-port">(.*?)</td>',
                      html)


def test_ssh_hosts_are_listed_from_the_servers_config(project, owner, client_for, settings, tmp_path):
    settings.KF_SSH_CONFIG = str(write_ssh_config(tmp_path / "ssh_config", SSH_CONFIG))
    client = client_for(owner)
    html = client.get(f"/projects/{project.pk}/shell").content.decode()
    local_user = client.get("/api/shell/ssh-hosts").json()["items"][2]["user"]
    # The same hosts as GET /api/shell/ssh-hosts, in file order; patterns are not hosts; names are text.
    assert host_rows(html) == [("build-box", "10.0.0.5", "deploy", "2222"), ("db", "10.0.0.5", "deploy", "2222"),
                               ("&lt;b&gt;odd&lt;/b&gt;", "odd.example.com", local_user, "22")]
    assert "<b>odd</b>" not in html and "internal" not in html
    assert "id_build_secret" not in html  # key paths are the operator's business, not shown
    assert 'data-test="ssh-empty"' not in html
    # A member gets both forms, each offering every host by alias.
    assert 'data-test="ssh-run-form"' in html and 'data-test="ssh-pull-form"' in html
    assert html.count('<option value="build-box">') == 2 and html.count('<option value="&lt;b&gt;odd&lt;/b&gt;">') == 2
    assert 'data-test="ssh-viewer"' not in html


def test_no_ssh_hosts_says_where_kf_reads_them(project, owner, client_for, settings, tmp_path):
    missing = tmp_path / "no-such-dir" / "config"
    settings.KF_SSH_CONFIG = str(missing)
    html = client_for(owner).get(f"/projects/{project.pk}/shell").content.decode()
    assert 'data-test="ssh-empty"' in html and f'<code data-test="ssh-config-path">{missing}</code>' in html
    assert "KF_SSH_CONFIG" in html
    assert 'data-test="ssh-hosts-table"' not in html
    assert 'data-test="ssh-run-form"' not in html and 'data-test="ssh-pull-form"' not in html
    # A config with only patterns has no hosts either.
    settings.KF_SSH_CONFIG = str(write_ssh_config(tmp_path / "patterns", "Host *\n  User x\n"))
    assert 'data-test="ssh-empty"' in client_for(owner).get(f"/projects/{project.pk}/shell").content.decode()


def test_viewer_sees_ssh_hosts_and_suggest_but_no_ssh_forms(team_project, viewer, member, client_for, settings,
                                                            tmp_path):
    settings.KF_SSH_CONFIG = str(write_ssh_config(tmp_path / "ssh_config", SSH_CONFIG))
    client = client_for(viewer)
    html = client.get(f"/projects/{team_project.pk}/shell").content.decode()
    assert [row[0] for row in host_rows(html)] == ["build-box", "db", "&lt;b&gt;odd&lt;/b&gt;"]
    assert 'data-test="ssh-viewer"' in html
    assert 'data-test="ssh-run-form"' not in html and 'data-test="ssh-pull-form"' not in html
    # Suggest only reads (viewer+), so the box is there; there is no command box to put its answer in.
    assert 'data-test="suggest-form"' in html and 'data-test="suggestion-copy"' in html
    assert 'data-test="suggestion-use"' not in html
    # What the page offers matches what the API lets this viewer do.
    assert len(client.get("/api/shell/ssh-hosts").json()["items"]) == 3
    refused = client.post("/api/shell/ssh-run", {"host": "db", "command": "id", "project_id": team_project.pk},
                          format="json")
    assert refused.status_code == 403
    pull = client.post("/api/shell/ssh-pull", {"host": "db", "remote_path": "/etc/hostname", "path": "x",
                                               "project_id": team_project.pk}, format="json")
    assert pull.status_code == 403
    # A member of the same workspace gets the forms and the button that fills the command box.
    member_html = client_for(member).get(f"/projects/{team_project.pk}/shell").content.decode()
    assert 'data-test="ssh-run-form"' in member_html and 'data-test="ssh-pull-form"' in member_html
    assert 'data-test="suggestion-use"' in member_html and 'data-test="ssh-viewer"' not in member_html


def test_outsiders_see_no_ssh_hosts(project, outsider, client_for, settings, tmp_path):
    settings.KF_SSH_CONFIG = str(write_ssh_config(tmp_path / "ssh_config", SSH_CONFIG))
    response = client_for(outsider).get(f"/projects/{project.pk}/shell")
    assert response.status_code == 404 and b"build-box" not in response.content

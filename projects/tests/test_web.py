"""The project pages (Django test client): who sees them, and the file viewer's fragment."""

import re
from urllib.parse import quote

import pytest

from projects.models import Project, ProjectOpen
from projects.tests import test_api
from projects.tests.test_api import APP_PY

# The sample project of the API tests (its files under KF_PROJECTS_ROOT, loaded and indexed).
tree = test_api.tree
project = test_api.project

pytestmark = pytest.mark.django_db(transaction=True)


def view(client, project_id: str, path: str):
    return client.get(f"/projects/{project_id}/view?path={quote(path)}")


# --- /projects -----------------------------------------------------------------------------------

def test_list_page_shows_recent_projects_and_the_load_form(project, owner, client_for):
    response = client_for(owner).get("/projects")
    assert response.status_code == 200
    html = response.content.decode()
    assert f'href="/projects/{project.pk}"' in html and project.name in html
    assert 'data-test="recent-row"' in html
    assert re.search(r'<a href="/projects"\s+aria-current="page">Projects</a>', html)  # the nav link
    assert 'data-api="/api/project/load"' in html and 'name="path"' in html and 'name="git_url"' in html
    personal = owner.workspaces.get(personal=True)
    assert f'<option value="{personal.pk}">' in html


def test_load_form_offers_only_workspaces_where_the_user_may_load(team, member, viewer, client_for):
    assert f'value="{team.pk}"' in client_for(member).get("/projects").content.decode()
    html = client_for(viewer).get("/projects").content.decode()
    assert f'value="{team.pk}"' not in html
    assert 'data-test="load-ws"' in html  # her personal workspace is still offered


def test_list_page_without_projects(outsider, client_for):
    html = client_for(outsider).get("/projects").content.decode()
    assert "No projects yet" in html and 'data-test="recent-row"' not in html


# --- /projects/<id> ------------------------------------------------------------------------------

def test_project_page_renders_for_the_owner_with_a_rescan_button(project, owner, client_for):
    response = client_for(owner).get(f"/projects/{project.pk}")
    assert response.status_code == 200
    html = response.content.decode()
    assert project.name in html and project.root in html
    assert f'data-project="{project.pk}"' in html and 'data-test="tree"' in html
    assert re.search(r'data-test="stat-files">\s*5\s*<', html)
    assert 'data-action="rescan"' in html
    assert 'data-test="indexing-note" hidden' in html  # indexed already
    assert "/static/project.js" in html


def test_project_page_for_a_viewer_has_no_rescan_button(project, team, viewer, client_for):
    Project.objects.filter(pk=project.pk).update(workspace=team)
    response = client_for(viewer).get(f"/projects/{project.pk}")
    assert response.status_code == 200
    html = response.content.decode()
    assert project.name in html and 'data-test="tree"' in html
    assert 'data-action="rescan"' not in html and 'data-test="rescan-viewer"' in html


def test_member_sees_the_rescan_button_of_a_team_project(project, team, member, client_for):
    Project.objects.filter(pk=project.pk).update(workspace=team)
    assert 'data-action="rescan"' in client_for(member).get(f"/projects/{project.pk}").content.decode()


def test_opening_the_page_makes_the_project_recent(project, team, viewer, client_for):
    Project.objects.filter(pk=project.pk).update(workspace=team)
    client = client_for(viewer)
    assert not ProjectOpen.objects.filter(user=viewer, project=project).exists()
    client.get(f"/projects/{project.pk}")
    assert ProjectOpen.objects.filter(user=viewer, project=project).exists()
    assert f'href="/projects/{project.pk}"' in client.get("/projects").content.decode()


def test_outsider_gets_the_html_404_page(project, outsider, client_for):
    client = client_for(outsider)
    for url in (f"/projects/{project.pk}", f"/projects/{project.pk}/view?path=src/app.py", "/projects/prj_nope"):
        response = client.get(url)
        assert response.status_code == 404, url
        assert response["Content-Type"].startswith("text/html")
        html = response.content.decode()
        assert 'data-test="error-404"' in html and "hello" not in html and project.name not in html
    assert not ProjectOpen.objects.filter(user=outsider).exists()


@pytest.mark.parametrize("suffix", ["", "/view?path=src/app.py"])
def test_anonymous_is_sent_to_sign_in(project, anon, suffix):
    url = f"/projects/{project.pk}{suffix}"
    response = anon.get(url)
    assert response.status_code == 302 and response["Location"] == f"/login?next={quote(url)}"
    assert anon.get("/projects")["Location"] == "/login?next=/projects"


def test_pages_refuse_writes(project, owner, client_for):
    client = client_for(owner)
    assert client.post("/projects").status_code == 405
    assert client.post(f"/projects/{project.pk}").status_code == 405


# --- /projects/<id>/view -------------------------------------------------------------------------

def test_view_highlights_with_line_anchors(project, owner, client_for):
    response = view(client_for(owner), project.pk, "src/app.py")
    assert response.status_code == 200
    html = response.content.decode()
    assert '<div class="highlight">' in html and '<span class="kn">import</span>' in html  # Pygments
    assert '<span class="nc">Greeter</span>' in html
    lines = APP_PY.count("\n")
    for n in (1, 9, lines):
        assert f'id="L-{n}"' in html and f'href="#L-{n}"' in html and f'id="line-{n}"' in html
    assert f'id="L-{lines + 1}"' not in html
    assert '<span class="s2">"hello </span>' in html
    assert 'data-test="file-path">src/app.py<' in html and f"{lines} lines" in html and "Python" in html


def test_view_keeps_line_numbers_of_leading_blank_lines(project, owner, client_for, tree):
    (tree / "blank.py").write_text("\n\n\nanswer = 42\n")
    html = view(client_for(owner), project.pk, "blank.py").content.decode()
    line_4 = html.split('id="line-4"')[1]
    assert "answer" in line_4 and "answer" not in html.split('id="line-4"')[0]


def test_view_of_plain_text_and_unknown_types(project, owner, client_for, tree):
    (tree / "NOTES").write_text("<script>alert(1)</script>\n")
    html = view(client_for(owner), project.pk, "NOTES").content.decode()
    assert "&lt;script&gt;" in html and "<script>alert" not in html and 'id="L-1"' in html


def test_view_of_a_binary_file_says_so(project, owner, client_for):
    response = view(client_for(owner), project.pk, "logo.png")
    assert response.status_code == 200
    html = response.content.decode()
    assert "binary file, 16 bytes" in html and 'class="highlight"' not in html


@pytest.mark.parametrize("path,status,message", [
    ("../../etc/passwd", 400, "may not contain"),
    ("src/../../x", 400, "may not contain"),
    ("/etc/passwd", 400, "relative to the project root"),
    ("passwd", 400, "outside the project root"),  # a symlink to /etc/passwd
    ("src", 400, "directory"),
    ("missing.txt", 404, "No such file"),
    ("", 400, "required"),
])
def test_view_refuses_escapes_and_bad_paths(project, owner, client_for, path, status, message):
    response = view(client_for(owner), project.pk, path)
    assert response.status_code == status
    html = response.content.decode()
    assert 'data-test="file-error"' in html and message in html
    assert "root:" not in html and 'class="highlight"' not in html


def test_view_of_a_file_over_the_size_limit(project, owner, client_for, settings):
    settings.KF_FILE_MAX_BYTES = 10
    response = view(client_for(owner), project.pk, "src/app.py")
    assert response.status_code == 413
    assert 'data-code="payload_too_large"' in response.content.decode()


def test_view_for_a_viewer_of_a_team_project(project, team, viewer, client_for):
    Project.objects.filter(pk=project.pk).update(workspace=team)
    assert view(client_for(viewer), project.pk, "src/app.py").status_code == 200

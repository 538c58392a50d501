"""The Project group: load, rescan (through the real runner and a real daphne), tree, file, symbols,
search, findings, recent — with the outsider and bad-input cases."""

import os
import socket
import subprocess
import threading
import uuid
from pathlib import Path

import pytest
from django.conf import settings

from accounts.models import Workspace
from conftest import SSEStream, wait_for
from projects.models import Blob, File, Finding, Project, Symbol
from projects.services import project_rescan
from streams.services import job_create

pytestmark = pytest.mark.django_db(transaction=True)

APP_PY = '''import os
import sys


class Greeter:
    """Says hello."""

    def greet(self, name):
        # TODO: localise the greeting
        return f"hello {name}"


def main():
    print(Greeter().greet(undefined_name))
'''


@pytest.fixture
def tree() -> Path:
    root = Path(settings.KF_PROJECTS_ROOT) / f"t-{uuid.uuid4().hex[:10]}"
    (root / "src" / "pkg").mkdir(parents=True)
    (root / "src" / "app.py").write_text(APP_PY)
    (root / "src" / "pkg" / "util.js").write_text("export function addNumbers(a, b) {\n  return a + b;\n}\n")
    (root / "README.md").write_text("# Demo\n\nSee src/app.py. FIXME: write docs\n")
    (root / "copy.md").write_text("# Demo\n\nSee src/app.py. FIXME: write docs\n")  # same content: one blob
    (root / ".gitignore").write_text("build/\n*.log\n")
    (root / "build").mkdir()
    (root / "build" / "out.txt").write_text("generated greet\n")
    (root / "debug.log").write_text("greet log\n")
    (root / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00binary")
    (root / "passwd").symlink_to("/etc/passwd")
    return root


def rescan_now(project: Project, user) -> dict:
    """A rescan run here and now, as a worker runs it (not enqueued)."""
    job = job_create(kind="rescan", owner=user, workspace=project.workspace, project_id=project.pk)
    return project_rescan(job_id=job.pk)


def load(client, path, **extra):
    return client.post("/api/project/load", {"path": str(path), **extra}, format="json")


def indexed(project_id: str) -> Project:
    return wait_for(lambda: Project.objects.filter(pk=project_id, indexed_at__isnull=False).first(), timeout=60)


@pytest.fixture
def project(owner, client_for, tree, task_runner) -> Project:
    response = load(client_for(owner), tree)
    assert response.status_code == 201, response.content
    return indexed(response.json()["project"]["id"])


# --- load ----------------------------------------------------------------------------------------

def test_load_by_path_returns_the_project_and_indexes_it(owner, client_for, tree, task_runner):
    client = client_for(owner)
    response = load(client, tree)
    assert response.status_code == 201
    body = response.json()["project"]
    assert body["id"].startswith("prj_") and body["root"] == str(tree.resolve()) and body["name"] == tree.name
    assert set(body) >= {"id", "ws_id", "name", "root", "vcs", "head", "indexed_at", "stats"}
    assert set(body["stats"]) == {"files", "bytes", "symbols", "findings"}
    project = indexed(body["id"])
    paths = set(File.objects.filter(project=project).values_list("path", flat=True))
    assert paths == {"src/app.py", "src/pkg/util.js", "README.md", "copy.md", ".gitignore"}  # no ignored, binary, link
    assert project.files_count == 5
    again = load(client, str(tree.relative_to(settings.KF_PROJECTS_ROOT)))
    assert again.status_code == 200 and again.json()["project"]["id"] == body["id"]


@pytest.mark.parametrize("bad", ["/etc", "../../..", "does-not-exist", "/tmp\x00x"])
def test_load_refuses_paths_outside_the_projects_root(owner, client_for, bad):
    response = load(client_for(owner), bad)
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_request"


def test_load_refuses_a_symlink_that_leaves_the_root(owner, client_for, tmp_path):
    link = Path(settings.KF_PROJECTS_ROOT) / f"escape-{uuid.uuid4().hex[:8]}"
    Path(settings.KF_PROJECTS_ROOT).mkdir(parents=True, exist_ok=True)
    link.symlink_to(tmp_path)
    assert load(client_for(owner), link).status_code == 400


@pytest.mark.parametrize("body", [{}, {"path": "x", "git_url": "https://example.com/x.git"}, {"path": ""}])
def test_load_bad_input(owner, client_for, body):
    assert client_for(owner).post("/api/project/load", body, format="json").status_code == 400


def test_load_into_a_team_needs_member_role(team, viewer, outsider, member, client_for, tree, task_runner):
    assert load(client_for(viewer), tree, ws_id=team.id).status_code == 403
    assert load(client_for(outsider), tree, ws_id=team.id).status_code == 404
    response = load(client_for(member), tree, ws_id=team.id)
    assert response.status_code == 201 and response.json()["project"]["ws_id"] == team.id
    indexed(response.json()["project"]["id"])


def git(*args: str, cwd: Path) -> None:
    subprocess.run(["git", "-c", "user.email=t@example.com", "-c", "user.name=t", *args], cwd=cwd, check=True,
                   capture_output=True)


def test_load_by_git_url_clones_and_indexes(owner, client_for, tree, task_runner):
    git("init", "-q", "-b", "main", cwd=tree)
    git("add", "-A", cwd=tree)
    git("commit", "-qm", "init", cwd=tree)
    response = client_for(owner).post("/api/project/load", {"git_url": f"file://{tree}"}, format="json")
    assert response.status_code == 201, response.content
    body = response.json()["project"]
    assert body["vcs"] == "git" and len(body["head"]) == 40
    assert body["root"].startswith(str(settings.KF_DATA_DIR))
    project = indexed(body["id"])
    assert File.objects.filter(project=project, path="src/app.py").exists()


@pytest.mark.parametrize("url", ["ftp://example.com/x.git", "ssh://git@example.com/x", "--upload-pack=x",
                                 "file:///etc", "https://"])
def test_load_by_git_url_refuses_bad_urls(owner, client_for, url):
    response = client_for(owner).post("/api/project/load", {"git_url": url}, format="json")
    assert response.status_code == 400 and "git_url" in response.json()["error"]["details"]


def test_load_by_git_url_of_a_non_repository_is_a_clear_error(owner, client_for, tree, task_runner):
    response = client_for(owner).post("/api/project/load", {"git_url": f"file://{tree}"}, format="json")
    assert response.status_code == 400
    assert "repository" in response.json()["error"]["message"].lower()
    assert not Project.objects.filter(source="git").exists()


def test_load_by_git_url_of_a_host_that_does_not_answer_times_out(owner, client_for, task_runner):
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts connections, never says a word
    port = silent.getsockname()[1]
    try:
        response = client_for(owner).post("/api/project/load", {"git_url": f"https://127.0.0.1:{port}/r.git"},
                                          format="json")
    finally:
        silent.close()
    assert response.status_code == 400
    assert not Project.objects.filter(source="git").exists()


# --- rescan --------------------------------------------------------------------------------------

def test_rescan_streams_progress_and_ends_with_counts_over_http(daphne, project, bearer, tree):
    (tree / "src" / "app.py").write_text(APP_PY + "\n\ndef extra():\n    return 1\n")
    (tree / "copy.md").unlink()
    s = SSEStream(f"{daphne.url}/api/project/rescan?project_id={project.pk}", method="POST", headers=bearer)
    assert s.status == 200 and s.headers["X-Job-ID"].startswith("job_")
    events = list(s.events())
    types = [t for _, t, _ in events]
    assert types[-1] == "end" and "progress" in types
    assert [seq for seq, _, _ in events] == list(range(1, len(events) + 1))
    phases = {d["phase"] for _, t, d in events if t == "progress"}
    assert {"walk", "index", "symbols", "findings"} <= phases
    end = events[-1][2]
    assert end["status"] == "succeeded"
    assert end["files"] == 4 and end["changed"] == 1 and end["removed"] == 1
    assert end["symbols"] == Symbol.objects.filter(project=project).count() > 0
    assert isinstance(end["duration_ms"], int)
    assert Symbol.objects.filter(project=project, name="extra").exists()
    assert not File.objects.filter(project=project, path="copy.md").exists()


def test_rescan_reindexes_only_what_changed(project, tree, owner):
    blob_ids = dict(File.objects.filter(project=project).values_list("path", "blob_id"))
    assert blob_ids["README.md"] == blob_ids["copy.md"]  # one content, stored once
    (tree / "src" / "pkg" / "util.js").write_text("export const x = 1;\n")
    result = rescan_now(project, owner)
    assert result["changed"] == 1 and result["removed"] == 0
    after = dict(File.objects.filter(project=project).values_list("path", "blob_id"))
    assert {p for p in after if after[p] != blob_ids[p]} == {"src/pkg/util.js"}
    assert not Blob.objects.filter(pk=blob_ids["src/pkg/util.js"]).exists()  # its old content went away
    assert not Symbol.objects.filter(project=project, name="addNumbers").exists()


def test_rescan_needs_member_role_and_hides_from_outsiders(project, team, viewer, outsider, client_for):
    assert client_for(outsider).post("/api/project/rescan", {"project_id": project.pk},
                                     format="json").status_code == 404
    Project.objects.filter(pk=project.pk).update(workspace=team)
    assert client_for(viewer).post("/api/project/rescan", {"project_id": project.pk},
                                   format="json").status_code == 403


# --- tree and file -------------------------------------------------------------------------------

def test_tree_lists_one_level_dirs_first(project, owner, client_for):
    client = client_for(owner)
    body = client.get(f"/api/project/tree?project_id={project.pk}").json()
    assert body["path"] == ""
    names = [e["name"] for e in body["entries"]]
    assert names[:2] == ["build", "src"] and "passwd" not in names  # the symlink leaves the root
    src = next(e for e in body["entries"] if e["name"] == "src")
    assert src == {"name": "src", "path": "src", "type": "dir", "size": 0, "has_children": True}
    nested = client.get(f"/api/project/tree?project_id={project.pk}&path=src").json()["entries"]
    assert [(e["path"], e["type"]) for e in nested] == [("src/pkg", "dir"), ("src/app.py", "file")]


@pytest.mark.parametrize("path,status", [("..", 400), ("src/../..", 400), ("/etc", 400), ("nope", 404),
                                         ("src/app.py", 404), ("a\x00b", 400)])
def test_tree_bad_paths(project, owner, client_for, path, status):
    from urllib.parse import quote

    response = client_for(owner).get(f"/api/project/tree?project_id={project.pk}&path={quote(path)}")
    assert response.status_code == status


def test_file_returns_content_and_metadata(project, owner, client_for, tree):
    body = client_for(owner).get(f"/api/project/file?project_id={project.pk}&path=src/app.py").json()
    import hashlib

    assert body["content"] == APP_PY and body["binary"] is False and body["encoding"] == "utf-8"
    assert body["sha256"] == hashlib.sha256(APP_PY.encode()).hexdigest()
    assert body["language"] == "Python" and body["size"] == len(APP_PY.encode())


def test_file_reports_binaries_without_dumping_them(project, owner, client_for):
    body = client_for(owner).get(f"/api/project/file?project_id={project.pk}&path=logo.png").json()
    assert body["binary"] is True and body["content"] is None


@pytest.mark.parametrize("path,status", [("../../etc/passwd", 400), ("/etc/passwd", 400), ("passwd", 400),
                                         ("src", 400), ("missing.txt", 404), ("src/app.py\x00.png", 400), ("", 400)])
def test_file_refuses_escapes_and_bad_paths(project, owner, client_for, path, status):
    from urllib.parse import quote

    response = client_for(owner).get(f"/api/project/file?project_id={project.pk}&path={quote(path)}")
    assert response.status_code == status, response.content
    assert "root:" not in response.content.decode()


def test_file_refuses_a_link_to_a_folder_outside(project, owner, client_for, tree):
    (tree / "etc").symlink_to("/etc")
    response = client_for(owner).get(f"/api/project/file?project_id={project.pk}&path=etc/hostname")
    assert response.status_code == 400


def test_file_over_the_size_limit_is_refused(project, owner, client_for, tree, settings):
    settings.KF_FILE_MAX_BYTES = 10
    response = client_for(owner).get(f"/api/project/file?project_id={project.pk}&path=src/app.py")
    assert response.status_code == 413 and response.json()["error"]["code"] == "payload_too_large"


def test_symlink_swap_race_cannot_escape(project, owner, client_for, tree):
    """A folder inside the root is swapped for a link outside while requests run: never a leak."""
    (tree / "swap").mkdir()
    (tree / "swap" / "hostname").write_text("inside\n")
    stop = threading.Event()

    def swapper() -> None:
        while not stop.is_set():
            os.rename(tree / "swap", tree / "swap.real")
            os.symlink("/etc", tree / "swap")
            os.unlink(tree / "swap")
            os.rename(tree / "swap.real", tree / "swap")

    thread = threading.Thread(target=swapper)
    thread.start()
    client = client_for(owner)
    try:
        for _ in range(150):
            response = client.get(f"/api/project/file?project_id={project.pk}&path=swap/hostname")
            if response.status_code == 200:
                assert response.json()["content"] == "inside\n"
            else:
                assert response.status_code in (400, 404)
    finally:
        stop.set()
        thread.join()


# --- symbols, search, findings, recent -----------------------------------------------------------

def test_symbols_exact_prefix_substring(project, owner, client_for):
    client = client_for(owner)
    exact = client.get(f"/api/project/symbols?project_id={project.pk}&q=greet&mode=exact").json()["items"]
    assert [(s["name"], s["kind"], s["path"], s["line"], s["container"]) for s in exact] == [
        ("greet", "member", "src/app.py", 8, "Greeter")]
    assert exact[0]["end_line"] == 10 and exact[0]["language"] == "Python"
    prefix = client.get(f"/api/project/symbols?project_id={project.pk}&q=Gree").json()["items"]
    assert [s["name"] for s in prefix] == ["Greeter"]
    sub = client.get(f"/api/project/symbols?project_id={project.pk}&q=Numb&mode=substring").json()["items"]
    assert [s["name"] for s in sub] == ["addNumbers"]
    assert client.get(f"/api/project/symbols?project_id={project.pk}&q=x&mode=fuzzy").status_code == 400
    assert client.get(f"/api/project/symbols?project_id={project.pk}").status_code == 400


def test_search_finds_lines(project, owner, client_for):
    body = client_for(owner).get(f"/api/project/search?project_id={project.pk}&q=greet").json()
    assert {(i["path"], i["line"]) for i in body["items"]} == {("src/app.py", 8), ("src/app.py", 9),
                                                               ("src/app.py", 14)}
    assert body["items"][0]["column"] >= 1 and "greet" in body["items"][0]["preview"]
    assert body["truncated"] is False and isinstance(body["took_ms"], int)
    assert client_for(owner).get(f"/api/project/search?project_id={project.pk}&q=(&regex=true").status_code == 400


def test_findings_are_listed_with_fingerprints(project, owner, client_for):
    items = client_for(owner).get(f"/api/project/findings?project_id={project.pk}").json()["items"]
    rules = {(f["rule"], f["path"], f["line"]) for f in items}
    assert ("todo", "src/app.py", 9) in rules
    assert any(r == "ruff-F821" and p == "src/app.py" for r, p, _ in rules)  # undefined_name
    assert any(r == "ruff-F401" for r, _, _ in rules)  # unused imports
    assert all(len(f["fingerprint"]) == 64 and f["id"].startswith("fnd_") for f in items)
    errors = client_for(owner).get(f"/api/project/findings?project_id={project.pk}&severity=error").json()["items"]
    assert errors and all(f["severity"] == "error" for f in errors)
    assert client_for(owner).get(f"/api/project/findings?project_id={project.pk}&severity=bad").status_code == 400


def test_finding_fingerprint_survives_moving_lines(project, owner, tree):
    before = Finding.objects.get(project=project, rule="todo", path="src/app.py")
    (tree / "src" / "app.py").write_text("\n\n\n" + APP_PY)
    rescan_now(project, owner)
    after = Finding.objects.get(project=project, rule="todo", path="src/app.py")
    assert after.fingerprint == before.fingerprint and after.line == before.line + 3


def test_recent_lists_loaded_projects_newest_first(project, owner, outsider, client_for, tree, task_runner):
    other = Path(settings.KF_PROJECTS_ROOT) / f"o-{uuid.uuid4().hex[:8]}"
    other.mkdir()
    client = client_for(owner)
    second = load(client, other).json()["project"]["id"]
    items = client.get("/api/project/recent").json()["items"]
    assert [i["project"]["id"] for i in items] == [second, project.pk]
    assert items[0]["opened_at"].endswith("Z")
    assert client_for(outsider).get("/api/project/recent").json()["items"] == []
    # without project_id, project endpoints use the one loaded last
    indexed(second)
    assert client.get("/api/project/tree").json()["entries"] == []


@pytest.mark.parametrize("endpoint", ["tree", "file?path=src/app.py", "symbols?q=greet", "search?q=greet",
                                      "findings", "info"])
def test_outsiders_get_not_found_and_viewers_can_read(project, team, viewer, outsider, client_for, endpoint):
    sep = "&" if "?" in endpoint else "?"
    url = f"/api/project/{endpoint}{sep}project_id={project.pk}"
    assert client_for(outsider).get(url).status_code == 404
    assert client_for(viewer).get(url).status_code == 404
    Project.objects.filter(pk=project.pk).update(workspace=team)
    assert client_for(viewer).get(url).status_code == 200


def test_project_endpoints_without_a_loaded_project(outsider, client_for):
    response = client_for(outsider).get("/api/project/tree")
    assert response.status_code == 404 and "load" in response.json()["error"]["message"]


def test_rescan_skips_files_over_the_size_cap_and_non_utf8(project, tree, owner, settings):
    settings.KF_INDEX_MAX_FILE_BYTES = 200
    (tree / "latin1.txt").write_bytes("caf\xe9 greet\n".encode("latin-1"))
    result = rescan_now(project, owner)
    paths = set(File.objects.filter(project=project).values_list("path", flat=True))
    assert "src/app.py" not in paths  # 257 bytes > 200
    assert "latin1.txt" not in paths and "README.md" in paths
    assert result["removed"] == 1


@pytest.mark.parametrize("vcs", ["git", "none"])
def test_rescan_respects_nested_gitignore_files(owner, tree, vcs):
    if vcs == "git":
        git("init", "-q", "-b", "main", cwd=tree)
    (tree / "src" / ".gitignore").write_text("pkg/\n")
    (tree / "docs" / "pkg").mkdir(parents=True)
    (tree / "docs" / "pkg" / "kept.md").write_text("only src/.gitignore ignores pkg/, and only below src\n")
    workspace = Workspace.objects.get(memberships__user=owner, personal=True)
    project = Project.objects.create(workspace=workspace, name="g", root=str(tree), source="path", vcs=vcs)
    rescan_now(project, owner)
    paths = set(File.objects.filter(project=project).values_list("path", flat=True))
    assert paths == {"src/app.py", "README.md", "copy.md", ".gitignore", "src/.gitignore", "docs/pkg/kept.md"}

"""POST /api/shell/ssh-pull: SFTP from the real OpenSSH server of shell/tests/conftest.py into a project."""

import hashlib
import os
import uuid
from pathlib import Path
from typing import Any

import pytest

from accounts.models import AuditRecord
from projects.models import Project

pytestmark = pytest.mark.django_db


@pytest.fixture
def project(owner: Any, settings: Any) -> Project:
    root = Path(settings.KF_PROJECTS_ROOT) / f"pull-{uuid.uuid4().hex[:10]}"
    root.mkdir(parents=True)
    return Project.objects.create(workspace=owner.workspaces.get(personal=True), name=root.name, root=str(root),
                                  source="path")


@pytest.fixture
def remote_file(tmp_path: Path) -> Path:
    """A file on the "remote" host (the sshd runs on this machine)."""
    path = tmp_path / "remote" / "data.bin"
    path.parent.mkdir()
    path.write_bytes(os.urandom(300_000) + "é\n".encode())
    return path


def pull(client: Any, project: Project, **body: Any) -> Any:
    return client.post("/api/shell/ssh-pull", {"host": "kf-test", "project_id": project.pk, **body}, format="json")


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if ".kf-pull-" in p.name]


def test_ssh_pull_copies_the_file_with_its_sha256(ssh_settings, owner, client_for, project, remote_file):
    client = client_for(owner)
    response = pull(client, project, remote_path=str(remote_file), path="incoming/nested/data.bin")
    assert response.status_code == 201, response.content
    data = remote_file.read_bytes()
    assert response.json() == {"path": "incoming/nested/data.bin", "size": len(data),
                               "sha256": hashlib.sha256(data).hexdigest(), "replaced": False}
    target = Path(project.root) / "incoming" / "nested" / "data.bin"
    assert target.read_bytes() == data
    assert leftovers(target.parent) == []
    record = AuditRecord.objects.get(action="ssh_pull")
    assert record.actor_id == owner.pk and record.meta["sha256"] == hashlib.sha256(data).hexdigest()

    remote_file.write_bytes(b"second version\n")
    again = pull(client, project, remote_path=str(remote_file), path="./incoming//nested/data.bin")
    assert again.status_code == 200 and again.json()["replaced"] is True and again.json()["size"] == 15
    assert target.read_bytes() == b"second version\n"


def test_ssh_pull_remote_path_relative_to_the_remote_home(ssh_settings, owner, client_for, project):
    name = f"kf-pull-test-{uuid.uuid4().hex[:8]}.txt"
    home_file = Path.home() / name  # the test sshd logs in as this same user
    home_file.write_text("from home\n")
    try:
        for remote_path in (name, f"~/{name}"):
            response = pull(client_for(owner), project, remote_path=remote_path, path="home.txt")
            assert response.status_code in (200, 201) and response.json()["size"] == 10
    finally:
        home_file.unlink()
    assert (Path(project.root) / "home.txt").read_text() == "from home\n"


@pytest.mark.parametrize("path", ["../escape.txt", "a/../../escape.txt", "/etc/passwd-copy", "a\x00b", "", "."])
def test_ssh_pull_refuses_paths_outside_the_project(ssh_settings, owner, client_for, project, remote_file, path):
    response = pull(client_for(owner), project, remote_path=str(remote_file), path=path)
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_request"
    assert not (Path(project.root).parent / "escape.txt").exists()


def test_ssh_pull_refuses_symlinks_out_of_the_root(ssh_settings, owner, client_for, project, remote_file, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    root = Path(project.root)
    (root / "link-out").symlink_to(outside)
    (root / "file-link").symlink_to(outside / "victim.txt")
    (root / "inside").mkdir()
    (root / "link-in").symlink_to(root / "inside")
    client = client_for(owner)
    for path in ("link-out/data.bin", "link-out/deeper/data.bin", "file-link"):
        response = pull(client, project, remote_path=str(remote_file), path=path)
        assert response.status_code == 400, path
    assert list(outside.iterdir()) == []
    # A link that stays inside the root is followed.
    assert pull(client, project, remote_path=str(remote_file), path="link-in/data.bin").status_code == 201
    assert (root / "inside" / "data.bin").exists()


def test_ssh_pull_size_cap_by_stat_and_while_reading(ssh_settings, owner, client_for, project, remote_file, settings):
    settings.KF_SSH_PULL_MAX_BYTES = 1000
    client = client_for(owner)
    response = pull(client, project, remote_path=str(remote_file), path="big.bin")
    assert response.status_code == 413 and response.json()["error"]["code"] == "payload_too_large"
    # /proc files stat as 0 bytes but read as more: the cap holds while reading too.
    response = pull(client, project, remote_path="/proc/self/smaps", path="smaps.txt")
    assert response.status_code == 413
    root = Path(project.root)
    assert not (root / "big.bin").exists() and not (root / "smaps.txt").exists() and leftovers(root) == []


def test_ssh_pull_missing_or_odd_remote_files(ssh_settings, owner, client_for, project, remote_file):
    client = client_for(owner)
    missing = pull(client, project, remote_path=str(remote_file.parent / "nope.txt"), path="x.txt")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    folder = pull(client, project, remote_path=str(remote_file.parent), path="x.txt")
    assert folder.status_code == 400
    for bad in ("a\x00b", "", "~"):
        assert pull(client, project, remote_path=bad, path="x.txt").status_code == 400
    assert not (Path(project.root) / "x.txt").exists()


def test_ssh_pull_target_that_is_a_folder_or_under_a_file(ssh_settings, owner, client_for, project, remote_file):
    root = Path(project.root)
    (root / "dir").mkdir()
    (root / "plain.txt").write_text("x")
    client = client_for(owner)
    assert pull(client, project, remote_path=str(remote_file), path="dir").status_code == 400
    assert pull(client, project, remote_path=str(remote_file), path="plain.txt/child").status_code == 400


def test_ssh_pull_host_must_be_an_alias_and_its_key_known(ssh_settings, owner, client_for, project, remote_file):
    client = client_for(owner)
    unknown = client.post("/api/shell/ssh-pull", {"host": "127.0.0.1", "project_id": project.pk,
                                                  "remote_path": str(remote_file), "path": "a"}, format="json")
    assert unknown.status_code == 400 and unknown.json()["error"]["details"]["host"]
    refused = client.post("/api/shell/ssh-pull", {"host": "kf-test-unknown", "project_id": project.pk,
                                                  "remote_path": str(remote_file), "path": "a"}, format="json")
    assert refused.status_code == 502
    assert refused.json()["error"]["code"] == "ssh_failed"
    assert refused.json()["error"]["details"] == {"reason": "host_key_unknown"}
    assert not (Path(project.root) / "a").exists()


def test_ssh_pull_roles(ssh_settings, owner, team, member, viewer, outsider, client_for, project, remote_file):
    body = {"remote_path": str(remote_file), "path": "r.bin"}
    assert pull(client_for(outsider), project, **body).status_code == 404
    Project.objects.filter(pk=project.pk).update(workspace=team)
    assert pull(client_for(viewer), project, **body).status_code == 403
    assert pull(client_for(member), project, **body).status_code == 201


def test_ssh_pull_defaults_to_the_last_loaded_project(ssh_settings, owner, client_for, project, remote_file):
    from projects.services import project_touch

    project_touch(user=owner, project=project)
    response = client_for(owner).post("/api/shell/ssh-pull", {"host": "kf-test", "remote_path": str(remote_file),
                                                              "path": "default.bin"}, format="json")
    assert response.status_code == 201 and (Path(project.root) / "default.bin").exists()


@pytest.mark.parametrize("host,reason", [("kf-silent", "timeout"), ("kf-closed", "connect_failed")])
def test_ssh_pull_connection_failures(silent_hosts, owner, client_for, project, remote_file, host, reason):
    response = pull(client_for(owner), project, host=host, remote_path=str(remote_file), path="t.bin")
    assert response.status_code == 502 and response.json()["error"]["details"] == {"reason": reason}


def test_ssh_pull_local_write_failures_are_clear(ssh_settings, owner, client_for, project, remote_file):
    client = client_for(owner)
    too_long = pull(client, project, remote_path=str(remote_file), path="n" * 300)
    assert too_long.status_code == 400 and too_long.json()["error"]["details"] == {"path": ["name too long"]}
    Path(project.root).rmdir()
    gone = pull(client, project, remote_path=str(remote_file), path="a.bin")
    assert gone.status_code == 409 and gone.json()["error"]["code"] == "conflict"
    assert "Could not write a.bin" in gone.json()["error"]["message"]

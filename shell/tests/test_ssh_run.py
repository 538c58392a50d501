"""POST /api/shell/ssh-run against a real OpenSSH server (shell/tests/conftest.py), through the real
task runner (a Celery worker on Postgres+Redis, the thread pool on SQLite) and, for the stream, a
real daphne over HTTP."""

import json
import os
import uuid
from pathlib import Path
from typing import Any

import pytest

from conftest import SSEStream, wait_for
from projects.models import Project
from shell.ssh import ssh_host_get, ssh_run
from streams.models import Event, Job
from streams.services import job_create

pytestmark = pytest.mark.django_db(transaction=True)


def run(client: Any, **body: Any) -> Any:
    response = client.post("/api/shell/ssh-run", body, format="json")
    if response.status_code == 200:
        response.close()  # the job runs on without anyone following its stream
    return response


def finished(job_id: str, timeout: float = 60) -> Job:
    return wait_for(lambda: Job.objects.filter(pk=job_id, status__in=Job.FINAL).first(), timeout=timeout)


def events(job_id: str) -> list[tuple[str, dict]]:
    return [(e.type, e.data) for e in Event.objects.filter(job_id=job_id).order_by("seq")]


def output(job_id: str, stream: str = "stdout") -> str:
    return "".join(d["text"] for t, d in events(job_id) if t == stream)


def sleeps(marker: str) -> list[int]:
    """Live `sleep <marker>…` processes (of the local sshd's sessions), by their argv."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            argv = Path(entry.path, "cmdline").read_bytes().split(b"\x00")
            state = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if (len(argv) > 1 and argv[0].rsplit(b"/", 1)[-1] == b"sleep" and argv[1].startswith(marker.encode())
                and state not in ("Z", "X")):
            found.append(int(entry.name))
    return found


def run_here(owner: Any, command: str, host: str = "kf-test", **params: Any) -> Job:
    """An ssh job run here and now, as a worker runs it (so per-test settings apply)."""
    job = job_create(kind="ssh", owner=owner, workspace=owner.workspaces.get(personal=True), project_id="",
                     params={"command": command, "host": host, **params})
    ssh_run(job_id=job.pk)
    return Job.objects.get(pk=job.pk)


@pytest.fixture
def project(owner: Any, settings: Any) -> Project:
    root = Path(settings.KF_PROJECTS_ROOT) / f"ssh-{uuid.uuid4().hex[:10]}"
    root.mkdir(parents=True)
    return Project.objects.create(workspace=owner.workspaces.get(personal=True), name=root.name, root=str(root),
                                  source="path")


# --- the stream, over real HTTP ----------------------------------------------------------------------

def test_ssh_run_streams_stdout_stderr_and_exit_code_over_http(sshd, daphne, bearer):
    command = "echo out-line; echo err-line >&2; printf 'caf\\303'; sleep 0.3; printf '\\251\\n'; exit 3"
    s = SSEStream(f"{daphne.url}/api/shell/ssh-run", method="POST", body=json.dumps({
        "host": "kf-test", "command": command}).encode(), headers={**bearer, "Content-Type": "application/json"})
    try:
        assert s.status == 200 and s.headers["Content-Type"].startswith("text/event-stream")
        job_id = s.headers["X-Job-ID"]
        got = list(s.events())
    finally:
        s.close()
    assert [seq for seq, _, _ in got] == list(range(1, len(got) + 1))
    assert got[0][1:] == ("job", {"job_id": job_id, "kind": "ssh", "project_id": "", "command": command,
                                  "host": "kf-test"})
    assert got[-1][1] == "end"
    text = {stream: "".join(d["text"] for _, t, d in got if t == stream) for stream in ("stdout", "stderr")}
    assert text["stdout"] == "out-line\ncafé\n"  # é split across two writes arrives whole
    assert text["stderr"] == "err-line\n"
    end = got[-1][2]
    assert end["status"] == "failed" and end["exit_code"] == 3 and end["signal"] is None
    assert isinstance(end["duration_ms"], int)
    job = Job.objects.get(pk=job_id)
    assert job.kind == "ssh" and job.params["command"] == command and job.params["host"] == "kf-test"


# --- through the task runner -------------------------------------------------------------------------

def test_ssh_run_success_through_the_worker(ssh_settings, owner, client_for, task_runner, project):
    response = run(client_for(owner), host="kf-test-2", command="echo hello-$((6*7)) && exit 0",
                   project_id=project.pk)
    assert response.status_code == 200
    job = finished(response["X-Job-ID"])
    assert job.status == "succeeded" and job.result["exit_code"] == 0 and job.project_id == project.pk
    assert output(job.pk) == "hello-42\n"
    assert [t for t, _ in events(job.pk)][:2] == ["job", "status"]


def test_ssh_run_cancel_kills_the_remote_process_group(ssh_settings, owner, client_for, task_runner):
    marker = f"300.{uuid.uuid4().int % 10**6:06d}"
    client = client_for(owner)
    response = run(client, host="kf-test", command=f"sleep {marker} & sleep {marker}1; wait")
    job_id = response["X-Job-ID"]
    wait_for(lambda: len(sleeps(marker)) == 2, timeout=30)
    assert client.post(f"/api/jobs/{job_id}/cancel").status_code == 202
    job = finished(job_id, timeout=20)
    assert job.status == "cancelled" and events(job_id)[-1][0] == "end"
    # The background grandchild went too: nothing of the session is left on the remote.
    wait_for(lambda: not sleeps(marker), timeout=10)


def test_ssh_run_timeout_stops_the_command(ssh_settings, owner):
    marker = f"301.{uuid.uuid4().int % 10**6:06d}"
    job = run_here(owner, f"echo started; sleep {marker} & sleep {marker}1; wait", timeout_s=2)
    assert job.status == "failed" and job.result["timed_out"] is True and "within 2 s" in job.result["error"]
    assert output(job.pk) == "started\n"
    wait_for(lambda: not sleeps(marker), timeout=10)


@pytest.mark.parametrize("host,reason", [("kf-test-unknown", "host_key_unknown"),
                                         ("kf-test-changed", "host_key_changed"),
                                         ("kf-test-nokey", "auth_failed")])
def test_ssh_run_refuses_bad_host_keys_and_reports_auth_failures(ssh_settings, owner, client_for, task_runner,
                                                                  host, reason):
    response = run(client_for(owner), host=host, command="echo should-not-run")
    job = finished(response["X-Job-ID"])
    assert job.status == "failed" and job.result["reason"] == reason and job.result["exit_code"] is None
    assert host in job.result["error"]
    assert output(job.pk) == ""


def test_ssh_run_without_known_hosts_file_never_connects(ssh_settings, owner, settings, tmp_path):
    settings.KF_SSH_KNOWN_HOSTS = str(tmp_path / "absent")
    job = run_here(owner, "echo nope")
    assert job.status == "failed" and job.result["reason"] == "host_key_unknown"
    assert "does not exist" in job.result["error"]


def test_ssh_run_output_is_batched_utf8_safe_and_capped(ssh_settings, owner, settings):
    job = run_here(owner, "seq 1 20000; printf 'bad \\377 byte\\n' >&2")
    assert job.status == "succeeded"
    assert output(job.pk) == "".join(f"{i}\n" for i in range(1, 20001))
    assert output(job.pk, "stderr") == "bad \ufffd byte\n"
    assert len([t for t, _ in events(job.pk) if t == "stdout"]) < 30  # ~109 KB in batches, not per packet

    settings.KF_SHELL_OUTPUT_MAX_BYTES = 1000
    capped = run_here(owner, "seq 1 5000; echo done >&2; exit 4")
    assert len(output(capped.pk).encode()) == 1000
    assert [d for t, d in events(capped.pk) if t == "truncated"] == [
        {"limit_bytes": 1000, "message": "Output passed 1000 bytes: the rest is not shown."}]
    assert output(capped.pk, "stderr") == ""
    # Past the cap the command ran on to its own end, as /api/shell/run does.
    assert capped.result["exit_code"] == 4 and capped.result["truncated"] is True
    assert capped.result["output_bytes"] > 1000


def test_ssh_run_a_host_that_left_the_config_fails_the_job(ssh_settings, owner):
    job = run_here(owner, "echo x", host="gone-meanwhile")
    assert job.status == "failed" and job.result["reason"] == "unknown_host"


def test_ssh_run_commands_get_no_stdin(ssh_settings, owner):
    job = run_here(owner, "cat; echo after-cat")  # would hang if stdin stayed open
    assert job.status == "succeeded" and output(job.pk) == "after-cat\n"


# --- input and roles ---------------------------------------------------------------------------------

@pytest.mark.parametrize("body", [
    {"host": "127.0.0.1", "command": "id"},  # an address, not an alias of the config
    {"host": "nope", "command": "id"},
    {"host": "kf-test", "command": ""},
    {"host": "kf-test"},
    {"command": "id"},
    {"host": "kf-test", "command": "x" * 20000},
    {"host": "kf-test", "command": "id", "timeout_s": 0},
    {"host": "kf-test", "command": "id", "timeout_s": 10**6},
    {"host": "kf-test", "command": "a\x00b"},
])
def test_ssh_run_bad_input(ssh_settings, owner, client_for, body):
    response = client_for(owner).post("/api/shell/ssh-run", body, format="json")
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_request"
    assert not Job.objects.filter(kind="ssh").exists()


def test_ssh_run_roles(ssh_settings, owner, team, member, viewer, outsider, client_for, project, anon):
    body = {"host": "kf-test", "command": "id"}
    assert client_for(viewer).post("/api/shell/ssh-run", {**body, "ws_id": team.pk},
                                   format="json").status_code == 403
    assert client_for(outsider).post("/api/shell/ssh-run", {**body, "ws_id": team.pk},
                                     format="json").status_code == 404
    assert client_for(outsider).post("/api/shell/ssh-run", {**body, "project_id": project.pk},
                                     format="json").status_code == 404
    mismatch = client_for(owner).post("/api/shell/ssh-run", {**body, "project_id": project.pk, "ws_id": team.pk},
                                      format="json")
    assert mismatch.status_code == 400
    assert anon.post("/api/shell/ssh-run", body, format="json").status_code == 401
    assert not Job.objects.filter(kind="ssh").exists()


def test_ssh_run_by_a_team_member_is_filed_under_the_team_and_audited(ssh_settings, team, member, client_for,
                                                                        task_runner):
    from accounts.models import AuditRecord

    response = run(client_for(member), host="kf-test", command="true", ws_id=team.pk)
    job = finished(response["X-Job-ID"])
    assert job.workspace_id == team.pk and job.owner_id == member.pk and job.status == "succeeded"
    record = AuditRecord.objects.get(action="ssh_run")
    assert record.actor_id == member.pk and record.target == "kf-test" and record.meta["job_id"] == job.pk
    assert "true" not in json.dumps(record.meta)  # the command (it may hold secrets) is not audited


def test_ssh_host_get_only_knows_aliases(ssh_settings):
    assert ssh_host_get(alias="kf-test").port == ssh_settings.port
    with pytest.raises(Exception) as info:
        ssh_host_get(alias="127.0.0.1")
    assert info.value.status_code == 400


@pytest.mark.parametrize("host,reason", [("kf-silent", "timeout"), ("kf-closed", "connect_failed")])
def test_ssh_run_connection_failures_end_the_job_clearly(silent_hosts, owner, host, reason):
    job = run_here(owner, "echo never", host=host)
    assert job.status == "failed" and job.result["reason"] == reason and host in job.result["error"]
    assert [t for t, _ in events(job.pk)] == ["status", "end"]


def test_ssh_run_cancel_while_connecting(silent_hosts, owner, monkeypatch):
    from shell import ssh

    start = ssh.job_start

    def start_then_cancel(*, job_id: str) -> bool:
        """The cancel flag goes up right as the job starts: the worker is then still connecting."""
        started = start(job_id=job_id)
        Job.objects.filter(pk=job_id).update(cancel_requested=True)
        return started

    monkeypatch.setattr(ssh, "job_start", start_then_cancel)
    job = run_here(owner, "echo never", host="kf-silent")
    assert job.status == "cancelled" and job.result["exit_code"] is None and output(job.pk) == ""

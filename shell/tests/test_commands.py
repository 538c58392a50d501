"""POST /api/shell/run, cancel, jobs and recent: through the real task runner (a Celery worker on
Postgres+Redis, the thread pool on SQLite), with real processes; one stream over real HTTP (daphne)."""

import hashlib
import json
import os
import secrets as pysecrets
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from accounts.models import User, Workspace
from conftest import SSEStream, wait_for
from projects.models import Project
from projects.services import project_touch
from secrets_app.masking import MASK
from secrets_app.services import secret_set
from shell import services
from shell.runner import group_members
from streams.models import Event, Job
from streams.services import event_append, job_create

pytestmark = pytest.mark.django_db(transaction=True)


def personal(user: User) -> Workspace:
    return Workspace.objects.get(memberships__user=user, personal=True)


@pytest.fixture
def tree() -> Path:
    root = Path(settings.KF_PROJECTS_ROOT) / f"sh-{uuid.uuid4().hex[:10]}"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "hello.txt").write_text("hello from the project\n")
    (root / "sub" / "note.txt").write_text("in sub\n")
    return root


def make_project(tree: Path, workspace: Workspace, user: User) -> Project:
    project = Project.objects.create(workspace=workspace, name=tree.name, root=str(tree.resolve()),
                                     source=Project.Source.PATH, created_by=user)
    project_touch(user=user, project=project)
    return project


@pytest.fixture
def project(owner: User, tree: Path) -> Project:
    return make_project(tree, personal(owner), owner)


@pytest.fixture
def team_project(team: Workspace, owner: User, tree: Path) -> Project:
    return make_project(tree, team, owner)


def start(client: Any, body: dict[str, Any], path: str = "/api/shell/run") -> str:
    response = client.post(path, body, format="json")
    assert response.status_code == 200, getattr(response, "content", b"")[:500]
    assert response["Content-Type"].startswith("text/event-stream")
    job_id = response["X-Job-ID"]
    response.close()  # a client going away does not stop the job
    return job_id


def finished(job_id: str, timeout: float = 60) -> Job:
    return wait_for(lambda: Job.objects.filter(pk=job_id, status__in=Job.FINAL).first(), timeout=timeout)


def events(job_id: str) -> list[tuple[str, dict[str, Any]]]:
    return [(e.type, e.data) for e in Event.objects.filter(job_id=job_id).order_by("seq")]


def text_of(job_id: str, stream: str = "stdout") -> str:
    return "".join(d["text"] for t, d in events(job_id) if t == stream)


def run_and_wait(client: Any, body: dict[str, Any]) -> tuple[Job, list[tuple[str, dict[str, Any]]]]:
    job = finished(start(client, body))
    return job, events(job.pk)


def processes_with(marker: str) -> list[int]:
    """Pids whose command line contains `marker` (a unique sleep duration)."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                cmdline = Path(entry.path, "cmdline").read_bytes().replace(b"\x00", b" ").decode()
            except OSError:
                continue
            if marker in cmdline and "bash" not in cmdline.split(" ")[0]:
                found.append(int(entry.name))
    return found


def group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def pgid_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rfind(")") + 2:].split()[2])


# --- run -----------------------------------------------------------------------------------------

def test_run_streams_stdout_stderr_and_ends_with_exit_code(project, owner, client_for, task_runner):
    job, log = run_and_wait(client_for(owner), {"command": "echo out; echo err >&2; cat hello.txt; exit 3",
                                                 "project_id": project.pk})
    types = [t for t, _ in log]
    assert types[0] == "job" and log[0][1]["job_id"] == job.pk and log[0][1]["command"].startswith("echo out")
    assert types[-1] == "end" and types.count("end") == 1
    assert text_of(job.pk) == "out\nhello from the project\n"
    assert text_of(job.pk, "stderr") == "err\n"
    end = log[-1][1]
    assert end["status"] == "failed" and end["exit_code"] == 3 and isinstance(end["duration_ms"], int)
    assert job.status == "failed" and job.result["exit_code"] == 3 and job.kind == "shell"
    ok, log = run_and_wait(client_for(owner), {"command": "true", "project_id": project.pk})
    assert ok.status == "succeeded" and log[-1][1]["exit_code"] == 0


def test_run_defaults_to_the_project_loaded_last(project, owner, client_for, task_runner):
    job, _ = run_and_wait(client_for(owner), {"command": "pwd"})
    assert job.project_id == project.pk and text_of(job.pk) == f"{project.root}\n"


def test_run_in_a_folder_inside_the_project(project, owner, client_for, task_runner):
    job, _ = run_and_wait(client_for(owner), {"command": "pwd; cat note.txt", "cwd": "sub", "project_id": project.pk})
    assert text_of(job.pk) == f"{project.root}/sub\nin sub\n"
    assert job.params["cwd"] == "sub"


def test_stdout_and_stderr_keep_their_order_and_output_is_batched(project, owner, client_for, task_runner):
    command = "echo a; sleep 0.3; echo b >&2; sleep 0.3; echo c; seq 1 3000"
    job, log = run_and_wait(client_for(owner), {"command": command, "project_id": project.pk})
    streams = [t for t, _ in log if t in ("stdout", "stderr")]
    assert streams[:3] == ["stdout", "stderr", "stdout"]
    assert text_of(job.pk) == "a\nc\n" + "".join(f"{i}\n" for i in range(1, 3001))
    assert len(streams) < 30  # batched: not an event per line


def test_utf8_split_across_reads_stays_whole_and_bad_bytes_are_replaced(project, owner, client_for, task_runner):
    # "é" is \xc3\xa9: its two bytes arrive in two separate reads (and events).
    command = r"printf 'caf\xc3'; sleep 0.4; printf '\xa9 ok\n'; printf 'bad \xff\xfe end\n'"
    job, log = run_and_wait(client_for(owner), {"command": command, "project_id": project.pk})
    assert text_of(job.pk) == "café ok\nbad \ufffd\ufffd end\n"
    assert len([t for t, _ in log if t == "stdout"]) >= 2


def test_the_environment_is_clean_of_kf_settings(project, owner, client_for, task_runner, monkeypatch):
    monkeypatch.setenv("KF_LEAK_CHECK", "should-not-pass")  # seen by the thread pool runner, if it copied
    job, _ = run_and_wait(client_for(owner), {"command": "env", "project_id": project.pk})
    env = dict(line.split("=", 1) for line in text_of(job.pk).splitlines() if "=" in line)
    for name in ("KF_LEAK_CHECK", "DATABASE_URL", "REDIS_URL", "SECRET_KEY", "KF_DATA_DIR", "KF_MASTER_KEY",
                 "DJANGO_SETTINGS_MODULE", "KF_CELERY_QUEUE", "PYTEST_XDIST_WORKER"):
        assert name not in env, name
    assert env["LANG"] == "C.UTF-8" and env["TERM"] == "dumb" and env["PATH"]
    assert env["HOME"].startswith(str(settings.KF_DATA_DIR)) and job.pk in env["HOME"]
    assert not Path(env["HOME"]).exists()  # the job's own folder is gone with it


def test_a_folder_gone_before_the_command_starts_fails_with_a_clear_error(project, owner, tree):
    job = job_create(kind="shell", owner=owner, workspace=project.workspace, project_id=project.pk,
                     params={"command": "pwd", "cwd": "sub/deeper", "timeout_s": 60, "secrets": []})
    (tree / "sub" / "deeper").rmdir()
    services.shell_execute(job_id=job.pk)
    job.refresh_from_db()
    assert job.status == "failed" and "cwd" in job.result["error"] and job.result["exit_code"] is None
    assert events(job.pk)[-1][0] == "end"


# --- secrets -------------------------------------------------------------------------------------

def db_text() -> str:
    """Everything the event log and the job rows hold, as one string."""
    rows = [json.dumps(e.data) for e in Event.objects.all()]
    rows += [json.dumps(j.params) + json.dumps(j.result) for j in Job.objects.all()]
    return "\n".join(rows)


def test_secrets_are_injected_and_masked_even_when_split(project, owner, client_for, task_runner):
    value = f"tok-{pysecrets.token_hex(12)}"
    secret_set(user=owner, workspace=project.workspace, name="API_TOKEN", value=value)
    digest = hashlib.sha256(value.encode()).hexdigest()
    command = ('echo "token is $API_TOKEN"; printf \'%s\' "${API_TOKEN:0:9}"; sleep 0.4; '
               'printf \'%s\\n\' "${API_TOKEN:9}"; echo "$API_TOKEN" >&2; '
               f'test "$(printf %s "$API_TOKEN" | sha256sum | cut -c1-64)" = {digest}')
    job, _ = run_and_wait(client_for(owner), {"command": command, "project_id": project.pk,
                                              "secrets": ["API_TOKEN"]})
    assert job.status == "succeeded"  # the command saw the real value
    assert text_of(job.pk) == f"token is {MASK}\n{MASK}\n"
    assert text_of(job.pk, "stderr") == f"{MASK}\n"
    everything = db_text()
    assert value not in everything and value[:9] not in everything and value[9:] not in everything
    assert job.params["secrets"] == ["API_TOKEN"]


def test_secret_values_stay_out_of_the_database_and_job_params(project, owner, client_for, task_runner):
    value = f"val-{pysecrets.token_hex(16)}"
    secret_set(user=owner, workspace=project.workspace, name="DB_PASSWORD", value=value)
    job, _ = run_and_wait(client_for(owner), {"command": "env; printf %s \"$DB_PASSWORD\" | rev",
                                              "project_id": project.pk, "secrets": ["DB_PASSWORD"]})
    assert f"DB_PASSWORD={MASK}" in text_of(job.pk)
    assert value not in db_text()


@pytest.mark.parametrize("names,code", [(["NOPE"], 400), (["bad-name"], 400), ("API_TOKEN", 400), ([1], 400)])
def test_unknown_or_invalid_secret_names(project, owner, client_for, names, code):
    response = client_for(owner).post("/api/shell/run", {"command": "true", "project_id": project.pk,
                                                         "secrets": names}, format="json")
    assert response.status_code == code and response.json()["error"]["code"] == "invalid_request"
    assert "secrets" in response.json()["error"]["details"]
    assert not Job.objects.exists()


def test_secrets_of_another_workspace_are_unknown(project, owner, outsider, client_for):
    secret_set(user=outsider, workspace=personal(outsider), name="THEIRS", value="x" * 10)
    response = client_for(owner).post("/api/shell/run", {"command": "true", "project_id": project.pk,
                                                         "secrets": ["THEIRS"]}, format="json")
    assert response.status_code == 400


# --- cancel and timeout --------------------------------------------------------------------------

def test_cancel_kills_the_whole_process_group(project, owner, client_for, task_runner):
    marker = str(300000 + int.from_bytes(os.urandom(2), "big"))
    client = client_for(owner)
    job_id = start(client, {"command": f"sleep {marker} & sleep {marker}; echo never", "project_id": project.pk})
    pids = wait_for(lambda: len(processes_with(f"sleep {marker}")) == 2 and processes_with(f"sleep {marker}"))
    pgid = pgid_of(pids[0])
    assert {pgid_of(p) for p in pids} == {pgid}  # the grandchild is in the job's group
    response = client.post(f"/api/shell/cancel/{job_id}")
    assert response.status_code == 202 and response.json()["id"] == job_id
    job = finished(job_id, timeout=10)
    assert job.status == "cancelled"
    assert events(job_id)[-1] == ("end", {**job.result, "status": "cancelled"})
    assert job.result["signal"] in ("SIGTERM", "SIGKILL") and job.result["exit_code"] is None
    assert group_members(pgid) == [] and processes_with(f"sleep {marker}") == []  # dead when it ended
    # Dead processes whose parent died first are reaped by init a moment later: then the group is gone.
    wait_for(lambda: group_gone(pgid), timeout=10)
    assert "never" not in text_of(job_id)


def test_cancel_of_a_finished_job_changes_nothing(project, owner, client_for, task_runner):
    client = client_for(owner)
    job, _ = run_and_wait(client, {"command": "echo done", "project_id": project.pk})
    response = client.post(f"/api/shell/cancel/{job.pk}")
    assert response.status_code == 202 and response.json()["status"] == "succeeded"


def test_cancel_refuses_other_kinds_of_jobs_and_other_users(project, owner, outsider, client_for):
    rescan = job_create(kind="rescan", owner=owner, workspace=project.workspace, project_id=project.pk)
    assert client_for(owner).post(f"/api/shell/cancel/{rescan.pk}").status_code == 404
    shell_job = job_create(kind="shell", owner=owner, workspace=project.workspace, project_id=project.pk,
                           params={"command": "sleep 1"})
    response = client_for(outsider).post(f"/api/shell/cancel/{shell_job.pk}")
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    assert client_for(owner).post("/api/shell/cancel/job_doesnotexist").status_code == 404
    assert not Job.objects.get(pk=shell_job.pk).cancel_requested


def test_a_command_past_its_timeout_is_killed(project, owner, client_for, task_runner):
    started = time.monotonic()
    job, _ = run_and_wait(client_for(owner), {"command": "echo start; sleep 120", "project_id": project.pk,
                                              "timeout_s": 1})
    assert job.status == "failed" and job.result["timed_out"] is True and "timed out" in job.result["error"]
    assert time.monotonic() - started < 60  # not the 120 s it asked for
    assert text_of(job.pk) == "start\n"


def execute_here(project: Project, user: User, command: str, **params: Any) -> Job:
    """A shell job run here and now, as a worker runs it (not enqueued): for settings a worker
    process would not see."""
    job = job_create(kind="shell", owner=user, workspace=project.workspace, project_id=project.pk,
                     params={"command": command, "cwd": "", "timeout_s": 60, "secrets": [], **params})
    event_append(job_id=job.pk, type="job", data={"job_id": job.pk})
    services.shell_execute(job_id=job.pk)
    return Job.objects.get(pk=job.pk)


def test_output_past_the_cap_is_dropped_said_once_and_the_command_runs_on(project, owner, settings):
    settings.KF_SHELL_OUTPUT_MAX_BYTES = 10_000
    job = execute_here(project, owner, "seq 1 100000; echo tail >&2; exit 4")
    log = events(job.pk)
    out = text_of(job.pk) + text_of(job.pk, "stderr")
    assert len(out.encode()) <= 10_000 and out.startswith("1\n2\n3\n")
    assert [t for t, _ in log].count("truncated") == 1
    note = next(d for t, d in log if t == "truncated")
    assert note["limit_bytes"] == 10_000 and note["message"]
    assert "tail" not in out
    assert job.result["truncated"] is True and job.result["exit_code"] == 4  # it ran to its end
    assert job.result["output_bytes"] == len("".join(f"{i}\n" for i in range(1, 100001))) + len("tail\n")


def test_a_leftover_background_process_is_ended_with_the_job(project, owner):
    marker = str(400000 + int.from_bytes(os.urandom(2), "big"))
    job = execute_here(project, owner, f"sleep {marker} & echo started")
    assert job.status == "succeeded" and text_of(job.pk) == "started\n"
    assert processes_with(f"sleep {marker}") == []


def test_a_command_that_closes_its_output_runs_to_its_end(project, owner, tree):
    job = execute_here(project, owner, "echo bye; exec >/dev/null 2>&1; sleep 0.5; touch finished.txt")
    assert job.status == "succeeded" and text_of(job.pk) == "bye\n"
    assert (tree / "finished.txt").exists()  # not killed when its pipes closed


def test_a_process_that_left_the_group_does_not_hold_the_job_open(project, owner):
    marker = str(450000 + int.from_bytes(os.urandom(2), "big"))
    try:
        job = execute_here(project, owner, f"setsid sleep {marker} & echo done")
        assert job.status == "succeeded" and text_of(job.pk) == "done\n"
    finally:
        for pid in processes_with(f"sleep {marker}"):
            os.kill(pid, 9)  # setsid put it out of kf's reach: the test cleans up after itself


# --- bad input and access ------------------------------------------------------------------------

@pytest.mark.parametrize("body,field", [
    ({}, "command"),
    ({"command": ""}, "command"),
    ({"command": "   "}, "command"),
    ({"command": "ls", "cwd": "../"}, "cwd"),
    ({"command": "ls", "cwd": "sub/../.."}, "cwd"),
    ({"command": "ls", "cwd": "/etc"}, "cwd"),
    ({"command": "ls", "cwd": "missing"}, "cwd"),
    ({"command": "ls", "cwd": "hello.txt"}, "cwd"),
    ({"command": "ls", "timeout_s": 0}, "timeout_s"),
    ({"command": "ls", "timeout_s": 10 ** 9}, "timeout_s"),
    ({"command": "ls", "timeout_s": "soon"}, "timeout_s"),
    ({"command": "echo a\x00b"}, "command"),
    ({"command": "x" * 20000}, "command"),
])
def test_run_bad_input(project, owner, client_for, body, field):
    response = client_for(owner).post("/api/shell/run", {"project_id": project.pk, **body}, format="json")
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "invalid_request" and field in error["details"]
    assert not Job.objects.exists()


def test_run_refuses_a_cwd_symlink_that_leaves_the_project(project, owner, client_for, tree, tmp_path):
    (tree / "out").symlink_to(tmp_path)
    response = client_for(owner).post("/api/shell/run", {"project_id": project.pk, "command": "ls", "cwd": "out"},
                                      format="json")
    assert response.status_code == 400 and "cwd" in response.json()["error"]["details"]


def test_run_body_must_be_an_object(project, owner, client_for):
    response = client_for(owner).post("/api/shell/run", ["ls"], format="json")
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_request"


def test_outsiders_get_not_found_for_run_and_reads(project, outsider, client_for):
    client = client_for(outsider)
    response = client.post("/api/shell/run", {"command": "id", "project_id": project.pk}, format="json")
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    assert client.get(f"/api/shell/recent?project_id={project.pk}").status_code == 404
    assert client.get(f"/api/shell/jobs?project_id={project.pk}").status_code == 404
    assert not Job.objects.exists()


def test_no_project_loaded_is_not_found(outsider, client_for):
    response = client_for(outsider).post("/api/shell/run", {"command": "ls"}, format="json")
    assert response.status_code == 404


def test_viewers_read_but_cannot_run_or_cancel(team_project, owner, viewer, client_for, task_runner):
    client = client_for(viewer)
    response = client.post("/api/shell/run", {"command": "id", "project_id": team_project.pk}, format="json")
    assert response.status_code == 403 and response.json()["error"]["code"] == "forbidden"
    marker = str(500000 + int.from_bytes(os.urandom(2), "big"))
    job_id = start(client_for(owner), {"command": f"echo hi; sleep {marker}", "project_id": team_project.pk})
    wait_for(lambda: processes_with(f"sleep {marker}"))
    assert client.post(f"/api/shell/cancel/{job_id}").status_code == 403
    assert [j["id"] for j in client.get("/api/shell/jobs").json()["items"]] == [job_id]
    stream = client.get(f"/api/jobs/{job_id}/stream")  # the viewer may follow it
    assert stream.status_code == 200
    stream.close()
    assert client_for(owner).post(f"/api/shell/cancel/{job_id}").status_code == 202
    finished(job_id)
    items = client.get(f"/api/shell/recent?project_id={team_project.pk}").json()["items"]
    assert [i["job_id"] for i in items] == [job_id]


def test_members_run_in_team_projects(team_project, member, client_for, task_runner):
    job, _ = run_and_wait(client_for(member), {"command": "whoami >/dev/null; echo member", "project_id": team_project.pk})
    assert job.owner == member and text_of(job.pk) == "member\n"


def test_api_keys_run_commands_and_read_only_keys_cannot(project, owner, task_runner):
    from rest_framework.test import APIClient

    from accounts.services import api_key_create

    _, write_key = api_key_create(user=owner, name="w", scopes=["write"], expires_in_days=None, ip=None)
    client = APIClient()  # no session, no CSRF token: the key is enough
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {write_key}")
    job = finished(start(client, {"command": "echo via key", "project_id": project.pk}))
    assert text_of(job.pk) == "via key\n"
    assert client.get(f"/api/shell/recent?project_id={project.pk}").status_code == 200
    _, read_key = api_key_create(user=owner, name="r", scopes=["read"], expires_in_days=None, ip=None)
    reader = APIClient()
    reader.credentials(HTTP_AUTHORIZATION=f"Bearer {read_key}")
    assert reader.post("/api/shell/run", {"command": "ls", "project_id": project.pk}, format="json").status_code == 403
    assert reader.get("/api/shell/jobs").status_code == 200


def test_anonymous_is_unauthenticated(anon):
    assert anon.post("/api/shell/run", {"command": "ls"}, format="json").status_code == 401
    assert anon.get("/api/shell/jobs").status_code == 401


def test_session_requests_need_the_csrf_token(project, owner, client_for):
    client = client_for(owner)
    client.defaults.pop("HTTP_X_CSRFTOKEN")
    response = client.post("/api/shell/run", {"command": "ls", "project_id": project.pk}, format="json")
    assert response.status_code == 403 and not Job.objects.exists()


# --- jobs and recent -----------------------------------------------------------------------------

def test_jobs_lists_in_flight_commands_of_all_my_workspaces(project, team_project, owner, outsider, client_for):
    mine = job_create(kind="shell", owner=owner, workspace=project.workspace, project_id=project.pk,
                      params={"command": "make build"})
    team = job_create(kind="ssh", owner=owner, workspace=team_project.workspace, project_id=team_project.pk,
                      params={"command": "uptime", "host": "web"})
    Job.objects.filter(pk=team.pk).update(status="running")
    job_create(kind="rescan", owner=owner, workspace=project.workspace, project_id=project.pk)  # not a command
    done = job_create(kind="shell", owner=owner, workspace=project.workspace, project_id=project.pk,
                      params={"command": "ls"})
    Job.objects.filter(pk=done.pk).update(status="succeeded")
    theirs = job_create(kind="shell", owner=outsider, workspace=personal(outsider), params={"command": "id"})
    body = client_for(owner).get("/api/shell/jobs").json()
    assert [i["id"] for i in body["items"]] == [team.pk, mine.pk] and body["next_cursor"] is None
    item = body["items"][1]
    assert {"id", "kind", "command", "started_at", "project_id"} <= set(item)
    assert item["command"] == "make build" and item["kind"] == "shell" and item["project_id"] == project.pk
    assert [i["id"] for i in client_for(owner).get(f"/api/shell/jobs?project_id={project.pk}").json()["items"]] == [mine.pk]
    assert [i["id"] for i in client_for(outsider).get("/api/shell/jobs").json()["items"]] == [theirs.pk]


def test_recent_is_newest_first_paginated_and_per_project(project, team_project, owner, member, client_for):
    client = client_for(owner)
    ids = []
    for i in range(3):
        job = job_create(kind="shell" if i != 1 else "test", owner=owner, workspace=project.workspace,
                         project_id=project.pk, params={"command": f"cmd {i}"})
        Job.objects.filter(pk=job.pk).update(status="succeeded", result={"exit_code": i})
        ids.append(job.pk)
    other = job_create(kind="shell", owner=member, workspace=team_project.workspace, project_id=team_project.pk,
                       params={"command": "team cmd"})
    page = client.get(f"/api/shell/recent?project_id={project.pk}&limit=2").json()
    assert [i["command"] for i in page["items"]] == ["cmd 2", "cmd 1"] and page["next_cursor"]
    assert set(page["items"][0]) >= {"command", "exit_code", "at", "project_id"}
    assert page["items"][0]["exit_code"] == 2 and page["items"][0]["at"].endswith("Z")
    rest = client.get(f"/api/shell/recent?project_id={project.pk}&limit=2&cursor={page['next_cursor']}").json()
    assert [i["command"] for i in rest["items"]] == ["cmd 0"] and rest["next_cursor"] is None
    everything = client.get("/api/shell/recent").json()["items"]
    assert [i["job_id"] for i in everything] == [other.pk, *reversed(ids)]
    assert client.get("/api/shell/recent?cursor=garbage").status_code == 400
    assert client.get("/api/shell/recent?limit=0").status_code == 400


def test_recent_of_an_unknown_project_is_not_found(owner, client_for):
    assert client_for(owner).get("/api/shell/recent?project_id=prj_nope").status_code == 404


# --- over real HTTP ------------------------------------------------------------------------------

def test_run_over_http_and_reconnect_mid_run_with_last_event_id(daphne, project, bearer):
    command = "for i in 1 2 3 4 5 6; do echo tick $i; sleep 0.3; done"
    s = SSEStream(f"{daphne.url}/api/shell/run", method="POST", body=json.dumps(
        {"command": command, "project_id": project.pk}).encode(), headers={**bearer, "Content-Type": "application/json"})
    assert s.status == 200 and s.headers["Content-Type"].startswith("text/event-stream")
    job_id = s.headers["X-Job-ID"]
    first = []
    for event in s.events():
        first.append(event)
        if event[1] == "stdout":
            break
    s.close()  # gone mid-run: the job goes on
    assert first[0][1] == "job" and first[0][2]["job_id"] == job_id
    assert Job.objects.get(pk=job_id).status == "running"
    last = first[-1][0]
    again = SSEStream(f"{daphne.url}/api/jobs/{job_id}/stream", headers={**bearer, "Last-Event-ID": str(last)})
    rest = list(again.events())
    again.close()
    seqs = [seq for seq, _, _ in first + rest]
    assert seqs == list(range(1, len(seqs) + 1))  # no gap, no duplicate
    assert rest[-1][1] == "end" and rest[-1][2]["status"] == "succeeded" and rest[-1][2]["exit_code"] == 0
    out = "".join(d["text"] for _, t, d in first + rest if t == "stdout")
    assert out == "".join(f"tick {i}\n" for i in range(1, 7))

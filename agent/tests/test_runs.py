"""Agent runs end to end: POST /api/agent/run through the real task runner (a Celery worker on
Postgres+Redis, the thread pool on SQLite), the loop talking over HTTP to the scripted model server,
real tools on a real git repository, then cancel, rollback, follow, history."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from accounts.models import User, Workspace
from agent import loop, services
from agent.models import AgentPrefs, Run
from budget.estimate import run_estimate
from budget.models import Reservation
from budget.services import caps_set
from conftest import _test_database_url, wait_for
from projects.models import Project
from projects.services import project_touch
from receipts.models import Receipt
from secrets_app.masking import MASK
from secrets_app.services import secret_set
from shell.runner import group_members
from streams.models import Event, Job
from streams.services import job_finish

pytestmark = pytest.mark.django_db(transaction=True)

APP = "def add(a, b):\n    return a - b\n"
TEST = "from app import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n"


def personal(user: User) -> Workspace:
    return Workspace.objects.get(memberships__user=user, personal=True)


def git(root: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.com"}
    return subprocess.run(["git", *args], cwd=root, env=env, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def repo() -> Path:
    root = Path(settings.KF_PROJECTS_ROOT) / f"agent-{uuid.uuid4().hex[:10]}"
    root.mkdir(parents=True)
    (root / "app.py").write_text(APP)
    (root / "test_app.py").write_text(TEST)
    (root / "README.md").write_text("# demo\n")
    (root / ".gitignore").write_text("*.log\n__pycache__/\n.pytest_cache/\n")
    (root / "pytest.ini").write_text("[pytest]\n")  # its own rootdir: not kf's conftest above it
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "init")
    return root


def make_project(root: Path, workspace: Workspace, user: User) -> Project:
    project = Project.objects.create(workspace=workspace, name=root.name, root=str(root.resolve()),
                                     source=Project.Source.PATH, vcs="git", created_by=user)
    project_touch(user=user, project=project)
    return project


@pytest.fixture
def project(owner: User, repo: Path) -> Project:
    return make_project(repo, personal(owner), owner)


def start(client: Any, body: dict[str, Any]) -> str:
    response = client.post("/api/agent/run", body, format="json")
    assert response.status_code == 200, getattr(response, "content", b"")[:500]
    assert response["Content-Type"].startswith("text/event-stream")
    run_id = response["X-Run-ID"]
    response.close()  # the client going away does not stop the run
    return run_id


def finished(run_id: str, timeout: float = 60) -> Run:
    return wait_for(lambda: Run.objects.filter(pk=run_id, status__in=Run.FINAL).first(), timeout=timeout)


def events(run: Run) -> list[tuple[str, dict[str, Any]]]:
    return [(e.type, e.data) for e in Event.objects.filter(job_id=run.job_id).order_by("seq")]


def of_type(run: Run, type: str) -> list[dict[str, Any]]:
    return [d for t, d in events(run) if t == type]


def event_seen(run_id: str, type: str, timeout: float = 30) -> dict[str, Any]:
    def seen() -> Any:
        run = Run.objects.get(pk=run_id)
        return next((e.data for e in Event.objects.filter(job_id=run.job_id, type=type).order_by("seq")), None)
    return wait_for(seen, timeout=timeout)


def assert_log_whole(run: Run) -> None:
    """seq dense from 1, `run` first, exactly one `end`, and it is last."""
    rows = list(Event.objects.filter(job_id=run.job_id).order_by("seq").values_list("seq", "type"))
    assert [seq for seq, _ in rows] == list(range(1, len(rows) + 1))
    assert rows[0][1] == "run"
    assert [t for _, t in rows].count("end") == 1 and rows[-1][1] == "end"


# --- the main scenario ---------------------------------------------------------------------------

def test_run_reads_edits_two_files_runs_tests_then_rollback(client_for: Any, owner: User, project: Project,
                                                            repo: Path, agent_model: Any, task_runner: str) -> None:
    agent_model.reply("Let me look.", tool_calls=[{"name": "read_file", "arguments": {"path": "app.py"}}],
                      usage=(100, 20))
    agent_model.reply(tool_calls=[
        {"name": "edit_file", "arguments": {"path": "app.py", "search": "return a - b", "replace": "return a + b"}},
        {"name": "write_file", "arguments": {"path": "NOTES.md", "content": "fixed add\n"}},
    ], usage=(200, 40))
    agent_model.reply(tool_calls=[{"name": "run_tests", "arguments": {}}], usage=(300, 10))
    agent_model.reply("Fixed `add`: it subtracted. The test passes now.", usage=(400, 30))

    client = client_for(owner)
    run_id = start(client, {"task": "Fix the add function", "project_id": project.pk})
    run = finished(run_id, timeout=120)
    assert run.status == Run.Status.SUCCEEDED, run.error
    assert (repo / "app.py").read_text() == "def add(a, b):\n    return a + b\n"
    assert (repo / "NOTES.md").read_text() == "fixed add\n"
    assert run.steps == 4 and run.files_changed == 2
    assert (run.input_tokens, run.output_tokens) == (1000, 100)
    assert_log_whole(run)

    types = [t for t, _ in events(run)]
    assert types[:2] == ["run", "status"]
    assert types.index("snapshot") < types.index("file_changed")  # recorded before the first write
    changed = of_type(run, "file_changed")
    assert [(c["path"], c["change"]) for c in changed] == [("app.py", "modified"), ("NOTES.md", "added")]
    assert "-    return a - b\n+    return a + b" in changed[0]["diff"]
    results = of_type(run, "tool_result")
    assert [r["name"] for r in results] == ["read_file", "edit_file", "write_file", "run_tests"]
    assert all(r["ok"] for r in results), results
    assert results[3]["data"]["passed"] == 1 and results[3]["data"]["failed"] == 0
    assert "return a - b" in results[0]["content"]
    deltas = "".join(d["delta"] for d in of_type(run, "message") if "delta" in d)
    assert "Let me look." in deltas and "The test passes now." in deltas
    assert of_type(run, "message")[-1] == {"step": 4, "text": "Fixed `add`: it subtracted. The test passes now.",
                                           "done": True}
    costs = of_type(run, "cost")
    assert [c["input_tokens"] for c in costs] == [100, 300, 600, 1000]
    snapshots = of_type(run, "snapshot")
    assert [s["kind"] for s in snapshots] == ["before", "after"]
    assert snapshots[0]["snapshot_id"] == run.snapshot_before and snapshots[1]["snapshot_id"] == run.snapshot_after
    end = of_type(run, "end")[0]
    assert end["status"] == "succeeded" and end["files_changed"] == 2 and end["steps"] == 4

    # What the model was sent: the tools, then each tool's result under its call id.
    bodies = [r.body for r in agent_model.requests]
    assert len(bodies) == 4 and bodies[0]["stream"] is True
    assert {t["function"]["name"] for t in bodies[0]["tools"]} >= {"read_file", "edit_file", "run_tests"}
    tool_messages = [m for m in bodies[1]["messages"] if m["role"] == "tool"]
    assert len(tool_messages) == 1 and "return a - b" in tool_messages[0]["content"]
    assert tool_messages[0]["tool_call_id"] == bodies[1]["messages"][-2]["tool_calls"][0]["id"]

    # Its receipt: the run's facts as hashes, in the workspace's signed log, verifiable.
    receipt = json.loads(bytes(Receipt.objects.get(run_id=run_id).body))
    assert receipt["task_sha256"] == hashlib.sha256(b"Fix the add function").hexdigest()
    assert [c["name"] for c in receipt["tool_calls"]] == ["read_file", "edit_file", "write_file", "run_tests"]
    assert receipt["tool_calls"][0]["result_sha256"] == hashlib.sha256(results[0]["content"].encode()).hexdigest()
    files = {f["path"]: f for f in receipt["files"]}
    assert set(files) == {"app.py", "NOTES.md"}
    assert files["app.py"]["before_sha256"] == hashlib.sha256(APP.encode()).hexdigest()
    assert files["app.py"]["after_sha256"] == hashlib.sha256((repo / "app.py").read_bytes()).hexdigest()
    assert files["NOTES.md"]["before_sha256"] is None
    assert receipt["status"] == "succeeded" and receipt["model"] == run.model
    verified = client.post(f"/api/receipts/{run_id}/verify").json()
    assert verified["ok"] is True and verified["first_bad_seq"] is None

    # The user's branch, index and status are untouched by the snapshots.
    assert git(repo, "rev-parse", "--abbrev-ref", "HEAD").strip() == "main"
    assert git(repo, "diff", "--cached", "--name-only") == ""

    # Rollback: app.py back, NOTES.md gone; a second rollback has nothing left to do.
    response = client.post("/api/agent/rollback", {"run_id": run_id}, format="json")
    assert response.status_code == 200, response.content
    assert sorted(response.json()["paths"]) == ["NOTES.md", "app.py"]
    assert response.json()["snapshot_id"] == run.snapshot_before
    assert (repo / "app.py").read_text() == APP and not (repo / "NOTES.md").exists()
    assert client.post("/api/agent/rollback", {"run_id": run_id}, format="json").json()["paths"] == []

    # Redo by the after-snapshot's id, then an edit after that makes a rollback a conflict, unless forced.
    response = client.post("/api/agent/rollback", {"snapshot_id": run.snapshot_after}, format="json")
    assert response.status_code == 200 and (repo / "NOTES.md").exists()
    (repo / "app.py").write_text("edited by the user\n")
    response = client.post("/api/agent/rollback", {"run_id": run_id}, format="json")
    assert response.status_code == 409 and response.json()["error"]["details"]["paths"] == ["app.py"]
    assert (repo / "app.py").read_text() == "edited by the user\n"
    response = client.post("/api/agent/rollback", {"run_id": run_id, "force": True}, format="json")
    assert response.status_code == 200 and (repo / "app.py").read_text() == APP

    history = client.get("/api/agent/history", {"project_id": project.pk}).json()["items"]
    assert [h["id"] for h in history] == [run_id] and history[0]["files_changed"] == 2


# --- cancel --------------------------------------------------------------------------------------

def test_cancel_mid_stream_closes_the_model_stream(client_for: Any, owner: User, project: Project,
                                                   agent_model: Any, task_runner: str) -> None:
    agent_model.reply("word " * 400, chunk_delay=0.2)  # ≈ 60 s of streaming if nobody stops it
    client = client_for(owner)
    run_id = start(client, {"task": "Talk a lot", "project_id": project.pk})
    event_seen(run_id, "message")
    response = client.post(f"/api/agent/cancel/{run_id}")
    assert response.status_code == 202
    run = finished(run_id, timeout=15)
    assert run.status == Run.Status.CANCELLED
    assert_log_whole(run)
    assert of_type(run, "end")[0]["status"] == "cancelled"
    # The model server saw kf hang up in the middle of the stream.
    assert agent_model.requests[0].client_gone.wait(15)
    # A finished run cannot be cancelled again.
    response = client.post(f"/api/agent/cancel/{run_id}")
    assert response.status_code == 409 and response.json()["error"]["code"] == "conflict"


def test_cancel_while_the_model_has_not_answered_yet(client_for: Any, owner: User, project: Project,
                                                     agent_model: Any, task_runner: str) -> None:
    agent_model.hang(60)  # the model server takes the request and sends nothing
    client = client_for(owner)
    run_id = start(client, {"task": "Think", "project_id": project.pk})
    wait_for(lambda: agent_model.requests)
    assert client.post(f"/api/agent/cancel/{run_id}").status_code == 202
    run = finished(run_id, timeout=20)  # well before the 60 s the model would have hung
    assert run.status == Run.Status.CANCELLED
    assert [t for t, _ in events(run)] == ["run", "status", "end"]


def test_cancel_kills_the_runs_command(client_for: Any, owner: User, project: Project, agent_model: Any,
                                       task_runner: str) -> None:
    agent_model.reply(tool_calls=[{"name": "run_command", "arguments": {"command": "sleep 300"}}])
    client = client_for(owner)
    run_id = start(client, {"task": "Sleep", "project_id": project.pk})
    run = Run.objects.get(pk=run_id)
    shell_job = wait_for(lambda: Job.objects.filter(params__agent_job_id=run.job_id,
                                                    status=Job.Status.RUNNING).first())
    pgid = wait_for(lambda: _pgid_of_sleep(project))
    assert client.post(f"/api/agent/cancel/{run_id}").status_code == 202
    run = finished(run_id, timeout=15)
    assert run.status == Run.Status.CANCELLED
    shell_job.refresh_from_db()
    assert shell_job.status == Job.Status.CANCELLED
    wait_for(lambda: not group_members(pgid), timeout=10)
    result = of_type(run, "tool_result")[0]
    assert result["ok"] is False and "cancelled" in result["content"]


def _pgid_of_sleep(project: Project) -> int | None:
    """The process group of the `sleep 300` the run started (found through /proc)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if cmdline[:2] == [b"sleep", b"300"] and cwd == project.root:
            return os.getpgid(int(entry.name))
    return None


# --- the model misbehaving -----------------------------------------------------------------------

def test_rate_limited_then_success(client_for: Any, owner: User, project: Project, agent_model: Any,
                                   task_runner: str) -> None:
    agent_model.fail(429, retry_after="0")
    agent_model.reply("All done.")
    run_id = start(client_for(owner), {"task": "Say done", "project_id": project.pk})
    run = finished(run_id)
    assert run.status == Run.Status.SUCCEEDED, run.error
    assert len(agent_model.requests) == 2
    retry = of_type(run, "retry")
    assert len(retry) == 1 and retry[0]["attempt"] == 1 and "429" in retry[0]["message"]
    assert of_type(run, "message")[-1]["text"] == "All done."


def test_bad_key_ends_the_run_with_a_clear_error_and_no_retry(client_for: Any, owner: User, project: Project,
                                                              agent_model: Any, task_runner: str) -> None:
    agent_model.fail(401, message=f"Incorrect API key provided: {agent_model.api_key}")
    run_id = start(client_for(owner), {"task": "Anything", "project_id": project.pk})
    run = finished(run_id)
    assert run.status == Run.Status.FAILED
    assert "credentials" in run.error and agent_model.api_key not in run.error
    assert len(agent_model.requests) == 1
    assert agent_model.api_key not in json.dumps([d for _, d in events(run)])


def test_unknown_model_ends_the_run_with_a_clear_error(client_for: Any, owner: User, project: Project,
                                                       agent_model: Any, task_runner: str) -> None:
    agent_model.fail(404, message="The model `nope-9` does not exist")
    run_id = start(client_for(owner), {"task": "Anything", "project_id": project.pk, "model": "nope-9"})
    run = finished(run_id)
    assert run.status == Run.Status.FAILED and "nope-9" in run.error
    assert agent_model.requests[0].body["model"] == "nope-9"


def test_malformed_tool_calls_go_back_to_the_model(client_for: Any, owner: User, project: Project,
                                                   agent_model: Any, task_runner: str) -> None:
    agent_model.reply(tool_calls=[{"name": "read_file", "arguments": '{"path": "app.py"'},
                                  {"name": "delete_everything", "arguments": {}}])
    agent_model.reply(tool_calls=[{"name": "read_file", "arguments": {"path": "app.py"}}])
    agent_model.reply("Read it.")
    run = finished(start(client_for(owner), {"task": "Read app.py", "project_id": project.pk}))
    assert run.status == Run.Status.SUCCEEDED, run.error
    calls = of_type(run, "tool_call")
    assert calls[0]["arguments"] == {"_raw": '{"path": "app.py"'}
    results = of_type(run, "tool_result")
    assert [r["ok"] for r in results] == [False, False, True]
    assert "not valid JSON" in results[0]["content"] and "Unknown tool" in results[1]["content"]
    second = [m for m in agent_model.requests[1].body["messages"] if m["role"] == "tool"]
    assert "not valid JSON" in second[0]["content"] and "Unknown tool" in second[1]["content"]


def test_stuck_loop_ends_the_run_before_the_third_identical_call(client_for: Any, owner: User, project: Project,
                                                                 agent_model: Any, task_runner: str) -> None:
    for _ in range(3):
        agent_model.reply(tool_calls=[{"name": "read_file", "arguments": {"path": "app.py"}}])
    agent_model.reply("never reached")
    run = finished(start(client_for(owner), {"task": "Loop", "project_id": project.pk}))
    assert run.status == Run.Status.FAILED and "stuck" in run.error and "read_file" in run.error
    assert len(of_type(run, "tool_result")) == 2  # the third identical call was not run
    assert len(agent_model.requests) == 3 and agent_model.pending() == 1


def test_alternating_pair_is_a_stuck_loop(client_for: Any, owner: User, project: Project, agent_model: Any,
                                          task_runner: str) -> None:
    for _ in range(3):
        agent_model.reply(tool_calls=[{"name": "read_file", "arguments": {"path": "app.py"}}])
        agent_model.reply(tool_calls=[{"name": "list_dir", "arguments": {"path": ""}}])
    run = finished(start(client_for(owner), {"task": "Loop", "project_id": project.pk}))
    assert run.status == Run.Status.FAILED and "alternated" in run.error
    assert len(of_type(run, "tool_result")) == 5


def test_step_limit(client_for: Any, owner: User, project: Project, agent_model: Any, task_runner: str) -> None:
    agent_model.reply(tool_calls=[{"name": "read_file", "arguments": {"path": "app.py"}}])
    agent_model.reply(tool_calls=[{"name": "read_file", "arguments": {"path": "README.md"}}])
    agent_model.reply("never reached")
    run = finished(start(client_for(owner), {"task": "Read", "project_id": project.pk, "max_steps": 2}))
    assert run.status == Run.Status.FAILED and "step limit" in run.error and run.steps == 2


def test_cost_cap_stops_the_run_before_unpaid_work(client_for: Any, owner: User, project: Project, repo: Path,
                                                   agent_model: Any, task_runner: str) -> None:
    # gpt-4o is in genai-prices: 1M input tokens cost $2.50, over the $1 cap.
    agent_model.reply(tool_calls=[{"name": "write_file", "arguments": {"path": "x.txt", "content": "x"}}],
                      usage=(1_000_000, 0))
    run = finished(start(client_for(owner), {"task": "Write", "project_id": project.pk, "model": "gpt-4o",
                                             "max_cost_usd": "1"}))
    assert run.status == Run.Status.BUDGET_EXCEEDED and run.usd == Decimal("2.5")
    assert not (repo / "x.txt").exists() and of_type(run, "tool_result") == []
    assert of_type(run, "cost")[0]["usd"] == "2.500000"
    assert of_type(run, "end")[0]["status"] == "budget_exceeded"
    # The call was settled in the workspace's ledger and the rest of the run's hold released.
    reservation = Reservation.objects.get(run_id=run.pk)
    assert reservation.status == Reservation.Status.RELEASED and reservation.reserved_micro == 0
    assert reservation.spent_micro == 2_500_000
    ledger = client_for(owner).get("/api/budget/ledger", {"ws_id": project.workspace_id}).json()["items"]
    assert [(row["usd"], row["input_tokens"], row["runs"]) for row in ledger if row["usd"] != "0.000000"] == [
        ("2.500000", 1_000_000, 1)]


def test_a_call_that_could_pass_the_runs_cap_is_never_made(client_for: Any, owner: User, project: Project,
                                                          agent_model: Any, task_runner: str) -> None:
    # gpt-4o's answer alone may cost 4,096 tokens × $10/M ≈ $0.04: more than the whole $0.01 cap.
    agent_model.reply("never asked")
    run = finished(start(client_for(owner), {"task": "Write", "project_id": project.pk, "model": "gpt-4o",
                                             "max_cost_usd": "0.01"}))
    assert run.status == Run.Status.BUDGET_EXCEEDED and "could cost up to" in run.error
    assert agent_model.requests == [] and run.usd == 0
    assert [t for t, _ in events(run)] == ["run", "status", "end"]


def test_the_workspace_cap_refuses_a_run_that_cannot_fit(client_for: Any, owner: User, project: Project,
                                                         agent_model: Any, task_runner: str) -> None:
    caps_set(actor=owner, workspace=project.workspace, daily_usd=Decimal("0.001"))
    client = client_for(owner)
    response = client.post("/api/agent/run", {"task": "Fix everything", "project_id": project.pk, "model": "gpt-4o"},
                           format="json")
    assert response.status_code == 402 and response.json()["error"]["code"] == "budget_exceeded"
    assert Run.objects.count() == 0 and not Reservation.objects.exists()
    # An unpriced (self-hosted) model costs nothing, so it still runs under the cap.
    agent_model.reply("done")
    run = finished(start(client, {"task": "Fix", "project_id": project.pk}))  # ended before the test's teardown
    assert run.status == Run.Status.SUCCEEDED and run.usd == 0


@pytest.mark.skipif(settings.DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql",
                    reason="concurrent writers need a server database; SQLite serializes them anyway")
def test_fifty_runs_started_at_once_never_pass_the_daily_cap(owner: User, agent_model: Any) -> None:
    import threading

    from django.db import connection

    workspace = personal(owner)
    projects = []
    for i in range(50):
        root = Path(settings.KF_PROJECTS_ROOT) / f"cap-{uuid.uuid4().hex[:8]}-{i}"
        root.mkdir(parents=True)
        (root / "a.py").write_text("x = 1\n")
        projects.append(make_project(root, workspace, owner))
    hold = run_estimate(workspace=workspace, user=owner, task="Fix a.py", model="gpt-4o",
                                 project=projects[0], max_steps=30,
                                 context_tokens=loop.context_tokens(model="gpt-4o")).high.usd
    cap = (hold * 7 + hold / 2).quantize(Decimal("0.000001"))  # room for exactly 7 runs
    caps_set(actor=owner, workspace=workspace, daily_usd=cap)
    barrier = threading.Barrier(50)
    outcomes: list[str] = []

    def start_one(project: Project) -> None:
        try:
            barrier.wait()
            services.run_start(user=owner, project=project, task="Fix a.py", model="gpt-4o", queue=False)
            outcomes.append("started")
        except Exception as exc:  # noqa: BLE001 — the outcome is what the test counts
            outcomes.append(getattr(exc, "default_code", type(exc).__name__))
        finally:
            connection.close()

    threads = [threading.Thread(target=start_one, args=(p,)) for p in projects]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("started") == 7 and outcomes.count("budget_exceeded") == 43, outcomes
    held = sum(r.reserved_micro for r in Reservation.objects.filter(workspace=workspace))
    assert held <= int(cap * 1_000_000) and Run.objects.count() == 7


def test_auto_rollback_on_failure(client_for: Any, owner: User, project: Project, repo: Path, agent_model: Any,
                                  task_runner: str) -> None:
    AgentPrefs.objects.create(user=owner, auto_rollback_on_failure=True)
    agent_model.reply(tool_calls=[{"name": "write_file", "arguments": {"path": "app.py", "content": "broken\n"}}])
    for _ in range(3):
        agent_model.reply(tool_calls=[{"name": "read_file", "arguments": {"path": "README.md"}}])
    run = finished(start(client_for(owner), {"task": "Break it", "project_id": project.pk}))
    assert run.status == Run.Status.FAILED
    assert (repo / "app.py").read_text() == APP
    rollback = of_type(run, "rollback")
    assert rollback == [{"snapshot_id": run.snapshot_before, "paths": ["app.py"], "automatic": True}]


def test_secret_values_are_masked_in_every_event(client_for: Any, owner: User, project: Project, repo: Path,
                                                 agent_model: Any, task_runner: str) -> None:
    value = "s3cr3t-" + uuid.uuid4().hex
    secret_set(user=owner, workspace=project.workspace, name="API_TOKEN", value=value)
    (repo / "config.txt").write_text(f"token={value}\n")
    agent_model.reply(f"I will read {value}", tool_calls=[{"name": "read_file", "arguments": {"path": "config.txt"}}])
    # Streamed slowly: the value reaches kf in several pieces, each flushed as its own delta batch.
    agent_model.reply(f"The token is {value}.", chunk_delay=0.08)
    run = finished(start(client_for(owner), {"task": "Read config", "project_id": project.pk}))
    assert run.status == Run.Status.SUCCEEDED, run.error
    leaks = [(t, d) for t, d in events(run) if value in json.dumps(d)]
    assert leaks == []
    deltas = [d["delta"] for d in of_type(run, "message") if d.get("step") == 2 and "delta" in d]
    assert len(deltas) > 2 and "".join(deltas) == f"The token is {MASK}."
    assert not any(value[:8] in d for d in deltas)  # no piece of it either
    assert MASK in json.dumps([d for _, d in events(run)], ensure_ascii=False)


# --- streams: disconnect, follow, two followers ----------------------------------------------------

def test_disconnect_then_follow_with_cursor_and_two_followers(daphne: Any, bearer: dict[str, str], owner: User,
                                                              project: Project, agent_model: Any) -> None:
    from conftest import SSEStream

    agent_model.reply("First part of a long answer. " * 5, chunk_delay=0.02,
                      tool_calls=[{"name": "read_file", "arguments": {"path": "app.py"}}])
    agent_model.reply("Second answer, " * 10, chunk_delay=0.05)
    stream = SSEStream(f"{daphne.url}/api/agent/run", method="POST",
                       headers={**bearer, "Content-Type": "application/json"},
                       body=json.dumps({"task": "Talk", "project_id": project.pk}).encode())
    assert stream.status == 200
    first = stream.take(3)
    stream.close()  # the client disconnects
    assert first[0][1] == "run"
    run_id = first[0][2]["run_id"]
    assert stream.headers["X-Run-ID"] == run_id

    # Reattach with Last-Event-ID while the run goes on; a second follower from the start; a third by
    # ?cursor= on the default (the caller's latest in-flight) run.
    resumed = SSEStream(f"{daphne.url}/api/agent/follow?run_id={run_id}",
                        headers={**bearer, "Last-Event-ID": str(first[-1][0])})
    whole = SSEStream(f"{daphne.url}/api/agent/follow?run_id={run_id}", headers=bearer)
    rest, everything = list(resumed.events()), list(whole.events())
    resumed.close()
    whole.close()
    run = finished(run_id)
    assert run.status == Run.Status.SUCCEEDED, run.error
    stored = [(e.seq, e.type, e.data) for e in Event.objects.filter(job_id=run.job_id).order_by("seq")]
    assert first + rest == stored  # every event exactly once across the disconnect
    assert everything == stored  # and the second follower saw the same log
    assert rest[-1][1] == "end"

    # A finished run replays whole; the default run (none in flight now) is a 404.
    again = SSEStream(f"{daphne.url}/api/agent/follow?run_id={run_id}&cursor=0", headers=bearer)
    assert list(again.events()) == stored
    again.close()
    missing = SSEStream(f"{daphne.url}/api/agent/follow", headers=bearer)
    assert missing.status == 404
    missing.close()


# --- a worker killed mid-run ---------------------------------------------------------------------

def test_worker_killed_mid_run_ends_failed_with_its_log_intact(owner: User, project: Project,
                                                               agent_model: Any) -> None:
    agent_model.reply("A long answer that will be cut. " * 60, chunk_delay=0.1)
    run = services.run_start(user=owner, project=project, task="Talk", queue=False)
    env = {**os.environ, "DATABASE_URL": _test_database_url(), "KF_DATA_DIR": str(settings.KF_DATA_DIR),
           "KF_LLM_BASE_URL": agent_model.url, "KF_LLM_API_KEY": agent_model.api_key,
           "KF_LLM_MODEL": agent_model.model, "DJANGO_SETTINGS_MODULE": "kfsite.settings"}
    code = ("import django; django.setup(); from agent.loop import run_execute; "
            f"run_execute(run_id={run.pk!r})")
    worker = subprocess.Popen([sys.executable, "-c", code], cwd=settings.BASE_DIR, env=env,
                              start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        event_seen(run.pk, "message")
        wait_for(lambda: Event.objects.filter(job_id=run.job_id, type="message").count() >= 3)
    finally:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()
    before = list(Event.objects.filter(job_id=run.job_id).order_by("seq").values_list("seq", "type", "data"))
    run.refresh_from_db()
    assert run.status == Run.Status.RUNNING  # nobody ended it: its worker is dead

    assert loop.runs_reap(stale_seconds=3600) == []  # its heartbeat is still fresh
    assert loop.runs_reap(stale_seconds=0) == [run.pk]
    run.refresh_from_db()
    assert run.status == Run.Status.FAILED and "worker" in run.error
    after = list(Event.objects.filter(job_id=run.job_id).order_by("seq").values_list("seq", "type", "data"))
    assert after[:-1] == before and after[-1][1] == "end" and after[-1][2]["status"] == "failed"
    assert_log_whole(run)
    # It still gets its receipt (every ended run does), once.
    assert json.loads(bytes(Receipt.objects.get(run_id=run.pk).body))["status"] == "failed"
    # A late redelivery of the task, or a second reaper, changes nothing.
    loop.run_execute(run_id=run.pk)
    assert loop.runs_reap(stale_seconds=0) == []
    assert list(Event.objects.filter(job_id=run.job_id).order_by("seq").values_list("seq", "type", "data")) == after


def test_a_run_whose_log_ended_but_whose_row_did_not_is_closed_by_the_reaper(owner: User, project: Project,
                                                                              agent_model: Any) -> None:
    # A worker dying between appending `end` and closing the row (receipt, status) leaves this state.
    run = services.run_start(user=owner, project=project, task="Talk", queue=False)
    job_finish(job_id=run.job_id, status="failed", result={"error": "boom"})
    assert Run.objects.get(pk=run.pk).status == Run.Status.QUEUED
    assert loop.runs_reap(stale_seconds=0) == [run.pk]
    run.refresh_from_db()
    assert (run.status, run.error) == (Run.Status.FAILED, "boom") and run.ended_at is not None
    assert Receipt.objects.filter(run_id=run.pk).count() == 1
    assert Reservation.objects.get(run_id=run.pk).status == Reservation.Status.RELEASED
    assert loop.runs_reap(stale_seconds=0) == []


# --- validation, roles, serialization --------------------------------------------------------------

def test_bad_input_is_rejected_before_a_run_exists(client_for: Any, owner: User, project: Project,
                                                   agent_model: Any) -> None:
    client = client_for(owner)
    for body, field in [({"project_id": project.pk}, "task"), ({"task": "", "project_id": project.pk}, "task"),
                        ({"task": "x", "project_id": project.pk, "max_steps": 0}, "max_steps"),
                        ({"task": "x", "project_id": project.pk, "max_steps": "3"}, "max_steps"),
                        ({"task": "x", "project_id": project.pk, "max_cost_usd": "-1"}, "max_cost_usd"),
                        ({"task": "x", "project_id": project.pk, "colour": "red"}, "colour"),
                        ({"task": 42, "project_id": project.pk}, "task")]:
        response = client.post("/api/agent/run", body, format="json")
        assert response.status_code == 400, body
        assert field in response.json()["error"]["details"], response.json()
    response = client.post("/api/agent/run", {"task": "x" * 100_001, "project_id": project.pk}, format="json")
    assert response.status_code == 413
    assert client.post("/api/agent/run", [1, 2], format="json").status_code == 400
    response = client.post("/api/agent/rollback", {}, format="json")
    assert response.status_code == 400
    response = client.post("/api/agent/rollback", {"snapshot_id": "../../etc"}, format="json")
    assert response.status_code == 400
    assert client.get("/api/agent/follow", {"run_id": "run_nope"}).status_code == 404
    assert client.get("/api/agent/runs/run_nope").status_code == 404
    assert Run.objects.count() == 0


def test_no_model_configured_is_503_and_no_run(client_for: Any, owner: User, project: Project, settings: Any) -> None:
    settings.KF_LLM_MODEL = ""
    response = client_for(owner).post("/api/agent/run", {"task": "x", "project_id": project.pk}, format="json")
    assert response.status_code == 503 and response.json()["error"]["code"] == "model_not_configured"
    assert Run.objects.count() == 0


def test_roles_and_outsiders(client_for: Any, owner: User, member: User, viewer: User, outsider: User,
                             team: Workspace, repo: Path, agent_model: Any, task_runner: str) -> None:
    project = make_project(repo, team, owner)
    agent_model.reply("hi")
    run_id = start(client_for(member), {"task": "Say hi", "project_id": project.pk})
    run = finished(run_id)
    assert run.user == member and run.status == Run.Status.SUCCEEDED

    viewer_client = client_for(viewer)
    assert viewer_client.post("/api/agent/run", {"task": "x", "project_id": project.pk},
                              format="json").status_code == 403
    assert viewer_client.post(f"/api/agent/cancel/{run_id}").status_code == 403
    assert viewer_client.post("/api/agent/rollback", {"run_id": run_id}, format="json").status_code == 403
    assert viewer_client.get(f"/api/agent/runs/{run_id}").json()["id"] == run_id
    response = viewer_client.get("/api/agent/follow", {"run_id": run_id})
    assert response.status_code == 200
    response.close()
    assert [r["id"] for r in viewer_client.get("/api/agent/history", {"ws_id": team.pk}).json()["items"]] == [run_id]

    out = client_for(outsider)
    for response in [out.post("/api/agent/run", {"task": "x", "project_id": project.pk}, format="json"),
                     out.post(f"/api/agent/cancel/{run_id}"), out.get(f"/api/agent/runs/{run_id}"),
                     out.get("/api/agent/follow", {"run_id": run_id}),
                     out.post("/api/agent/rollback", {"run_id": run_id}, format="json"),
                     out.post("/api/agent/rollback", {"snapshot_id": "a" * 40}, format="json")]:
        assert response.status_code == 404, response.content
    assert out.get("/api/agent/history", {"ws_id": team.pk}).status_code == 404


def test_a_project_runs_one_agent_at_a_time(client_for: Any, owner: User, project: Project, agent_model: Any,
                                            task_runner: str) -> None:
    agent_model.reply("slow " * 200, chunk_delay=0.1)
    client = client_for(owner)
    first = start(client, {"task": "One", "project_id": project.pk})
    response = client.post("/api/agent/run", {"task": "Two", "project_id": project.pk}, format="json")
    assert response.status_code == 409 and response.json()["error"]["details"]["run_id"] == first
    # Following without run_id finds the caller's run in flight.
    follow = client.get("/api/agent/follow")
    assert follow.status_code == 200 and follow["X-Run-ID"] == first
    follow.close()
    assert client.post(f"/api/agent/cancel/{first}").status_code == 202
    assert finished(first, timeout=15).status == Run.Status.CANCELLED
    agent_model.reset()
    agent_model.reply("done")
    second = start(client, {"task": "Two", "project_id": project.pk})
    assert finished(second).status == Run.Status.SUCCEEDED


def test_cancel_while_queued_ends_at_once(owner: User, project: Project, agent_model: Any) -> None:
    run = services.run_start(user=owner, project=project, task="Wait", queue=False)
    services.run_cancel(run=run)
    run.refresh_from_db()
    assert run.status == Run.Status.CANCELLED and run.job.status == Job.Status.CANCELLED
    loop.run_execute(run_id=run.pk)  # a worker picking it up later does nothing
    assert agent_model.requests == []
    assert [t for t, _ in events(run)] == ["run", "end"]
    assert Reservation.objects.get(run_id=run.pk).status == Reservation.Status.RELEASED
    assert json.loads(bytes(Receipt.objects.get(run_id=run.pk).body))["status"] == "cancelled"

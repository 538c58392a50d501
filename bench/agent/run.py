#!/usr/bin/env python
"""kf agent benchmark: the run loop, a long replay and cancel, through a real daphne and SSE.

    .venv/bin/python bench/agent/run.py                 # SQLite: a fresh database file
    .venv/bin/python bench/agent/run.py --steps 100 --repeats 5
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/kf .venv/bin/python bench/agent/run.py

A scripted OpenAI-compatible model (llm/tests/scripted_server.py, zero latency unless asked) runs in
this process; one daphne process (`daphne kfsite.asgi:application`, REDIS_URL unset: the embedded
shape, runs executed by the thread pool inside daphne) serves kf on the benchmark database. This
process is the client: it POSTs and reads the Server-Sent Events like a user's program would.

1. loop: a run of --steps steps (each a short streamed text and one read_file call, different lines
   or files every step), then a final answer. Wall time, events received, and the "model floor": the
   same model requests (the very messages kf sent, recorded by the scripted server) made again with
   llm.client.chat() straight from this process, so that (wall − floor) / steps is kf's own cost.
2. replay: a finished run whose log holds --replay-events events of realistic shapes (inserted in
   bulk, as event_append would have left them), read whole by GET /api/agent/follow?cursor=0.
3. cancel: runs whose model streams slowly; after the first `message` delta, POST
   /api/agent/cancel/<run_id>; time until `end {status: cancelled}` arrives on the stream.

With a Postgres DATABASE_URL it never touches the database named there: it uses `<name>_bench` on the
same server (created fresh, dropped at the end unless --keep). Results are printed and written to
bench/agent/results.json. See bench/agent/README.md.
"""

import argparse
import http.client
import json
import logging
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parents[2]
RESULTS = Path(__file__).resolve().parent / "results.json"
sys.path.insert(0, str(REPO))

from bench.search.run import database_drop, database_prepare
from llm.tests.scripted_server import ScriptedModelServer

SOURCE_FILES = 5
SOURCE_LINES = 200
READ_SPAN = 20  # lines per read_file call in the loop benchmark


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=50, help="tool steps per loop run (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="loop runs, each with its floor (default %(default)s)")
    parser.add_argument("--replay-events", type=int, default=10_000, help="events in the replayed log")
    parser.add_argument("--replays", type=int, default=5, help="timed replays (default %(default)s)")
    parser.add_argument("--cancels", type=int, default=10, help="cancelled runs (default %(default)s)")
    parser.add_argument("--keep", action="store_true", help="keep the benchmark database and data folder")
    args = parser.parse_args()
    if not 1 <= args.steps < 500:
        parser.error("--steps must be 1 … 499 (a run makes steps + 1 model calls, at most 500)")
    if args.replay_events < 3 or min(args.repeats, args.replays, args.cancels) < 1:
        parser.error("--replay-events must be at least 3, and --repeats, --replays, --cancels at least 1")

    base = Path(os.environ["KF_DATA_DIR"]) if os.environ.get("KF_DATA_DIR") else Path("/tmp/kf-bench")
    work = (base / "bench-agent").resolve()
    database = database_prepare(work)
    model = ScriptedModelServer().start()
    started = time.monotonic()
    django_setup(work, database, model)
    report: dict[str, Any] = {"database": database["vendor"], "cpus": os.cpu_count(),
                              "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}
    server = DaphneProcess(work)
    try:
        bench = Bench(work=work, model=model, url=server.url)
        report["loop"] = bench.loop(steps=args.steps, repeats=args.repeats)
        report["replay"] = bench.replay(events=args.replay_events, repeats=args.replays)
        report["cancel"] = bench.cancel(runs=args.cancels)
    finally:
        server.stop()
        model.stop()
    report["daphne_log_warnings"] = server.log_problems()
    report["elapsed_s"] = round(time.monotonic() - started, 1)
    summary_print(report)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nresults: {RESULTS}")

    if not args.keep:
        from django.db import connections

        connections.close_all()
        drop_when_free(database)
        for folder in ("kf", "projects"):
            shutil.rmtree(work / folder, ignore_errors=True)  # daphne.log stays, for a look afterwards
    return 0


# --- set-up --------------------------------------------------------------------------------------


def django_setup(work: Path, database: dict[str, Any], model: ScriptedModelServer) -> None:
    """This process's settings, which the daphne started later inherits through os.environ."""
    os.environ["DATABASE_URL"] = database["url"]
    os.environ["KF_DATA_DIR"] = str(work / "kf")
    os.environ["KF_PROJECTS_ROOT"] = str(work / "projects")
    os.environ.pop("REDIS_URL", None)  # the embedded shape: runs execute in daphne's own thread pool
    os.environ.update(KF_LLM_BASE_URL=model.url, KF_LLM_API_KEY=model.api_key, KF_LLM_MODEL=model.model)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kfsite.settings")
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)
    logging.getLogger("httpx2").setLevel(logging.WARNING)  # one INFO line per model request otherwise


class DaphneProcess:
    """One kf web process as the README starts it. Its output goes to a file (read back for warnings
    at the end) rather than a pipe nobody reads, which a long benchmark could fill and so stall."""

    def __init__(self, work: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = work / "daphne.log"
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port), "kfsite.asgi:application"],
            cwd=REPO, env=dict(os.environ), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + 60
        while not self._up():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"daphne did not come up:\n{self.log_path.read_text()[-3000:]}")
            time.sleep(0.2)

    def _up(self) -> bool:
        try:
            return urllib.request.urlopen(f"{self.url}/healthz", timeout=1).status == 200
        except OSError:
            return False

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def log_problems(self) -> list[str]:
        """Warnings and errors, each traceback shortened to its heading and its exception line."""
        problems: list[str] = []
        previous = ""
        in_traceback = False
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("Traceback"):
                in_traceback = True
                if previous.startswith("Exception in"):
                    problems.append(previous)
            elif in_traceback and not line.startswith(" "):
                in_traceback = False
                problems.append(line)
            elif " WARNING " in line or " ERROR " in line:
                problems.append(line)
            previous = line
        return problems[-20:]


def drop_when_free(database: dict[str, Any]) -> None:
    """Postgres refuses to drop a database while daphne's backends are still closing: retry a while."""
    if database["vendor"] != "postgresql":
        database_drop(database)
        return
    import psycopg

    deadline = time.monotonic() + 15
    while True:
        try:
            database_drop(database)
            return
        except psycopg.errors.ObjectInUse:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


# --- the client ----------------------------------------------------------------------------------


class SseReader:
    """An SSE client over one real HTTP connection that reads in large blocks and counts the bytes of
    the body. conftest.SSEStream reads line by line; at ten thousand events its per-line cost in this
    process would be measured instead of the server."""

    def __init__(self, url: str, *, method: str = "GET", headers: dict[str, str] | None = None,
                 body: bytes | None = None, timeout: float = 60.0) -> None:
        parts = urlsplit(url)
        self.conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
        self.conn.request(method, f"{parts.path}?{parts.query}" if parts.query else parts.path, body=body,
                          headers={"Accept": "text/event-stream", **(headers or {})})
        self.response = self.conn.getresponse()
        self.bytes = 0
        if self.response.status != 200:
            raise RuntimeError(f"{method} {parts.path} answered {self.response.status}: {self.response.read()[:500]!r}")

    def events(self) -> Iterator[tuple[int, str, dict[str, Any]]]:
        """(seq, type, data) as they arrive; comments (heartbeats) and `retry:` are skipped."""
        buffer = b""
        while True:
            block = self.response.read1(65536)
            if not block:
                return
            self.bytes += len(block)
            buffer += block
            *complete, buffer = buffer.split(b"\n\n")
            for raw in complete:
                event = _sse_event(raw)
                if event is not None:
                    yield event

    def close(self) -> None:
        self.conn.close()


def _sse_event(raw: bytes) -> tuple[int, str, dict[str, Any]] | None:
    fields: dict[str, list[str]] = {}
    for line in raw.decode().split("\n"):
        if line and not line.startswith(":"):
            name, _, value = line.partition(":")
            fields.setdefault(name, []).append(value.removeprefix(" "))
    if "event" not in fields:
        return None
    return int(fields["id"][0]), fields["event"][0], json.loads("\n".join(fields.get("data", ["null"])))


def http_post(url: str, headers: dict[str, str]) -> int:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.request("POST", parts.path, body=b"", headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


# --- the benchmarks ------------------------------------------------------------------------------


class Bench:
    def __init__(self, *, work: Path, model: ScriptedModelServer, url: str) -> None:
        from accounts.models import User
        from accounts.services import api_key_create, workspace_create

        self.work = work
        self.model = model
        self.url = url
        self.user = User.objects.create_user(email=f"bench-{uuid.uuid4().hex[:6]}@example.com", password=None)
        self.workspace = workspace_create(owner=self.user, name="bench", personal=True)
        _, raw_key = api_key_create(user=self.user, name="bench", scopes=["write"], expires_in_days=None, ip=None)
        self.auth = {"Authorization": f"Bearer {raw_key}"}
        self.project = self._project("loop")

    def _project(self, name: str) -> Any:
        from projects.models import Project

        root = self.work / "projects" / name
        (root / "src").mkdir(parents=True, exist_ok=True)
        for n in range(SOURCE_FILES):
            lines = [f"def helper_{n}_{i}(value: int) -> int:  # line {i + 1} of module {n}\n"
                     for i in range(SOURCE_LINES)]
            (root / "src" / f"mod_{n}.py").write_text("".join(lines))
        return Project.objects.create(workspace=self.workspace, name=name, root=str(root.resolve()),
                                      source=Project.Source.PATH, created_by=self.user)

    def _start(self, task: str, max_steps: int) -> SseReader:
        body = json.dumps({"task": task, "project_id": self.project.pk, "max_steps": max_steps}).encode()
        return SseReader(f"{self.url}/api/agent/run", method="POST", body=body,
                         headers={**self.auth, "Content-Type": "application/json"})

    def _wait_run_final(self, run_id: str) -> str:
        """`end` is appended just before the run row is marked final: the next run on the same
        project would be refused (one run in flight per project) during that moment."""
        from agent.models import Run

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            status = Run.objects.filter(pk=run_id).values_list("status", flat=True).first()
            if status in Run.FINAL:
                return status
            time.sleep(0.005)
        raise RuntimeError(f"run {run_id} did not end")

    # --- 1. loop overhead --------------------------------------------------------------------

    def _script_loop(self, steps: int) -> None:
        for i in range(steps):
            path = f"src/mod_{i % SOURCE_FILES}.py"
            first = 1 + (i // SOURCE_FILES * READ_SPAN) % SOURCE_LINES
            self.model.reply(f"Step {i + 1}: reading lines {first}-{first + READ_SPAN - 1} of {path} next.",
                             tool_calls=[{"name": "read_file", "arguments": {
                                 "path": path, "start_line": first, "end_line": first + READ_SPAN - 1}}])
        self.model.reply("Done: every helper is called with an int and returns one.")

    def _loop_run(self, steps: int) -> dict[str, Any]:
        self.model.reset()
        self._script_loop(steps)
        started = time.perf_counter()
        stream = self._start("Check how the helpers are called.", max_steps=steps + 1)
        received: list[tuple[int, str, dict[str, Any]]] = []
        first_at = None
        for event in stream.events():
            received.append(event)
            first_at = first_at or time.perf_counter()
            if event[1] == "end":
                break
        wall = time.perf_counter() - started
        stream.close()
        end = received[-1][2]
        if end.get("status") != "succeeded" or end.get("steps") != steps + 1:
            raise RuntimeError(f"the loop run ended {end}")
        _check_dense(received)
        self._wait_run_final(received[0][2]["run_id"])
        requests = [r.body for r in self.model.requests]
        if len(requests) != steps + 1:
            raise RuntimeError(f"the run made {len(requests)} model calls, not {steps + 1}")
        return {"wall_s": wall, "first_event_s": first_at - started, "events": len(received),
                "bytes": stream.bytes, "types": dict(Counter(t for _, t, _ in received)), "requests": requests}

    def _floor(self, steps: int, requests: list[dict[str, Any]]) -> float:
        """The same model calls as the run made (its exact requests), streamed, from this process."""
        from llm.client import chat

        self.model.reset()
        self._script_loop(steps)
        started = time.perf_counter()
        for body in requests:
            chat(messages=body["messages"], tools=body.get("tools"), model=body["model"], on_delta=lambda _: None)
        return time.perf_counter() - started

    def loop(self, *, steps: int, repeats: int) -> dict[str, Any]:
        print(f"loop: warm-up run (2 steps), then {repeats} runs of {steps} steps …", flush=True)
        warm = self._loop_run(2)
        self._floor(2, warm["requests"])
        client_build = model_client_build_seconds()
        runs = []
        for n in range(repeats):
            run = self._loop_run(steps)
            floor = self._floor(steps, run.pop("requests"))
            runs.append({**run, "floor_s": floor})
            print(f"  run {n + 1}: wall {run['wall_s'] * 1000:7.0f} ms, floor {floor * 1000:6.0f} ms, "
                  f"{run['events']} events, overhead {(run['wall_s'] - floor) / steps * 1000:5.1f} ms/step",
                  flush=True)
        return {**loop_summary(runs, steps), "model_client_build_ms": _spread(client_build, 1000, 2)}

    # --- 2. replay ---------------------------------------------------------------------------

    def replay(self, *, events: int, repeats: int) -> dict[str, Any]:
        print(f"replay: inserting a finished run of {events} events …", flush=True)
        started = time.perf_counter()
        run_id, shapes, data_bytes = self._finished_run(events)
        fill = time.perf_counter() - started
        print(f"  inserted in {fill:.2f} s ({dict(shapes)})", flush=True)
        timings = []
        for n in range(repeats):
            timings.append(self._replay_once(run_id, events))
            t = timings[-1]
            print(f"  replay {n + 1}: {t['seconds'] * 1000:7.0f} ms to `end` (first event "
                  f"{t['first_event_s'] * 1000:5.0f} ms), {events / t['seconds']:8.0f} events/s, "
                  f"{t['bytes'] / t['seconds'] / 1e6:6.1f} MB/s", flush=True)
        return replay_summary(timings, events=events, fill_s=fill, shapes=dict(shapes), data_bytes=data_bytes)

    def _finished_run(self, count: int) -> tuple[str, Counter, int]:
        """A run and its job as event_append and job_finish leave them: seq dense 1..N, last_seq = N,
        `end` last, job and run final. Inserted in bulk (the appends themselves are not measured)."""
        from django.db import transaction
        from django.utils import timezone

        from agent.models import AGENT_JOB_KIND, Run
        from streams.models import Event, Job
        from streams.services import job_create

        project = self._project("replay")
        now = timezone.now()
        with transaction.atomic():
            job = job_create(kind=AGENT_JOB_KIND, owner=self.user, workspace=self.workspace, project_id=project.pk)
            run = Run.objects.create(workspace=self.workspace, project=project, user=self.user, job=job,
                                     task="Refactor the helpers.", model=self.model.model, max_steps=500)
            log = replay_log(run_id=run.pk, job_id=job.pk, project_id=project.pk, count=count)
            end = log[-1][1]
            Event.objects.bulk_create(
                [Event(job=job, seq=seq, type=type, data=data, at=now + timedelta(milliseconds=seq))
                 for seq, (type, data) in enumerate(log, start=1)], batch_size=1000)
            ended = now + timedelta(milliseconds=count)
            Job.objects.filter(pk=job.pk).update(status=Job.Status.SUCCEEDED, last_seq=count, started_at=now,
                                                 heartbeat_at=ended, ended_at=ended,
                                                 result={k: v for k, v in end.items() if k != "status"})
            Run.objects.filter(pk=run.pk).update(status=Run.Status.SUCCEEDED, started_at=now, ended_at=ended,
                                                 steps=end["steps"], usd=Decimal(end["usd"]),
                                                 files_changed=end["files_changed"],
                                                 input_tokens=end["input_tokens"], output_tokens=end["output_tokens"])
        shapes = Counter(type for type, _ in log)
        data_bytes = sum(len(json.dumps(data, separators=(",", ":"))) for _, data in log)
        return run.pk, shapes, data_bytes

    def _replay_once(self, run_id: str, count: int) -> dict[str, float]:
        started = time.perf_counter()
        stream = SseReader(f"{self.url}/api/agent/follow?run_id={run_id}&cursor=0", headers=self.auth)
        seqs: list[int] = []
        first_at = None
        last_type = ""
        for seq, type, _ in stream.events():
            first_at = first_at or time.perf_counter()
            seqs.append(seq)
            last_type = type
            if type == "end":
                break
        seconds = time.perf_counter() - started
        stream.close()
        if seqs != list(range(1, count + 1)) or last_type != "end":
            missing = sorted(set(range(1, count + 1)) - set(seqs))[:10]
            raise RuntimeError(f"replay: {len(seqs)} events, {len(set(seqs))} distinct, in order: "
                               f"{seqs == sorted(seqs)}, missing {missing}, last {last_type}")
        return {"seconds": seconds, "first_event_s": first_at - started, "bytes": stream.bytes}

    # --- 3. cancel ---------------------------------------------------------------------------

    def cancel(self, *, runs: int) -> dict[str, Any]:
        print(f"cancel: {runs} runs, each cancelled after its first message delta …", flush=True)
        results = []
        for n in range(runs):
            results.append(self._cancel_once())
            r = results[-1]
            print(f"  run {n + 1:2d}: cancel → end {r['cancel_to_end_ms']:6.1f} ms (202 after "
                  f"{r['cancel_to_202_ms']:5.1f} ms), model stream closed: {r['model_stream_closed']}", flush=True)
        return cancel_summary(results)

    def _cancel_once(self) -> dict[str, Any]:
        self.model.reset()
        text = "The helpers are called from many places, so I will go through them one by one. " * 30
        self.model.reply(text, chunk_delay=0.2)  # about 7 characters per chunk: minutes of streaming
        stream = self._start("Explain the helpers at length.", max_steps=5)
        events = stream.events()
        run_id = ""
        for seq, type, data in events:
            run_id = run_id or data.get("run_id", "")
            if type == "message" and data.get("delta"):
                break
        started = time.perf_counter()
        status = http_post(f"{self.url}/api/agent/cancel/{run_id}", self.auth)
        acknowledged = time.perf_counter()
        if status != 202:
            raise RuntimeError(f"cancel answered {status}")
        end: dict[str, Any] = {}
        for seq, type, data in events:
            if type == "end":
                end = data
                break
        ended = time.perf_counter()
        stream.close()
        if end.get("status") != "cancelled":
            raise RuntimeError(f"the cancelled run ended {end}")
        self._wait_run_final(run_id)
        closed = self.model.requests[0].client_gone.wait(5)
        return {"cancel_to_end_ms": (ended - started) * 1000, "cancel_to_202_ms": (acknowledged - started) * 1000,
                "model_stream_closed": closed}


def model_client_build_seconds(times: int = 10) -> list[float]:
    """What part of the floor is building the SDK client (llm.client.chat makes one per call): the
    figure to look at first when the floor per call is far above the scripted server's near-zero cost."""
    import openai

    from llm.client import llm_config

    config = llm_config()
    seconds = []
    for _ in range(times):
        started = time.perf_counter()
        client = openai.OpenAI(base_url=config.base_url, api_key=config.api_key, timeout=config.timeout,
                               max_retries=0)
        client.close()
        seconds.append(time.perf_counter() - started)
    return seconds


def _check_dense(received: list[tuple[int, str, dict[str, Any]]]) -> None:
    seqs = [seq for seq, _, _ in received]
    if seqs != list(range(1, len(seqs) + 1)):
        raise RuntimeError(f"the stream's seqs are not 1..N: {seqs[:20]} …")


# --- the replayed log ----------------------------------------------------------------------------

_WORDS = ("the", "helper", "value", "returns", "module", "call", "int", "test", "file", "path", "change",
          "because", "so", "we", "read", "next", "line", "function", "argument", "error", "check", "it")


def _sentence(rng: random.Random, length: int) -> str:
    words: list[str] = []
    while sum(len(w) + 1 for w in words) < length:
        words.append(rng.choice(_WORDS))
    return " ".join(words)[:length]


def _code(rng: random.Random, size: int, prefix: str = "") -> str:
    lines: list[str] = []
    used = 0
    while used < size:
        line = f"{prefix}    result = helper_{rng.randint(0, 99)}(value + {rng.randint(0, 999)})  # {_sentence(rng, 24)}"
        lines.append(line)
        used += len(line) + 1
    return "\n".join(lines)


def replay_log(*, run_id: str, job_id: str, project_id: str, count: int) -> list[tuple[str, dict[str, Any]]]:
    """`count` events shaped like the loop's (agent/loop.py docstring): per step ~40-character
    message deltas, the whole text, cost, a tool call and its ~2 KB result; every fourth step an
    edit with a file_changed of a few-KB diff (and a snapshot before the first); `end` last."""
    rng = random.Random(20240611)
    log: list[tuple[str, dict[str, Any]]] = [
        ("run", {"run_id": run_id, "job_id": job_id, "project_id": project_id, "task": "Refactor the helpers.",
                 "model": "scripted-model-1", "max_steps": 500, "max_cost_usd": None}),
        ("status", {"status": "running"})]
    step = tokens_in = tokens_out = files = 0
    while len(log) < count - 1:
        step += 1
        deltas = [_sentence(rng, 40) for _ in range(8)]
        step_events: list[tuple[str, dict[str, Any]]] = [("message", {"step": step, "delta": d}) for d in deltas]
        tokens_in, tokens_out = tokens_in + 2400 + 40 * step, tokens_out + 90
        step_events += [
            ("message", {"step": step, "text": "".join(deltas), "done": True}),
            ("cost", {"step": step, "input_tokens": tokens_in, "output_tokens": tokens_out,
                      "usd": f"{tokens_in * 3e-6 + tokens_out * 15e-6:.6f}", "pricing_source": "unpriced"})]
        call_id = f"call_{step}_{rng.getrandbits(32):08x}"
        path = f"src/mod_{step % 40}.py"
        if step % 4 == 0:
            if files == 0:
                step_events.append(("snapshot", {"snapshot_id": f"{rng.getrandbits(160):040x}", "kind": "before"}))
            files += 1
            search, replace = _code(rng, 400), _code(rng, 400)
            step_events += [
                ("tool_call", {"step": step, "id": call_id, "name": "edit_file",
                               "arguments": {"path": path, "edits": [{"search": search, "replace": replace}]}}),
                ("file_changed", {"path": path, "change": "modified", "diff_truncated": False,
                                  "diff": f"--- a/{path}\n+++ b/{path}\n@@ -10,40 +10,40 @@\n"
                                          + _code(rng, 1500, "-") + "\n" + _code(rng, 1500, "+"),
                                  "before_sha256": f"{rng.getrandbits(256):064x}",
                                  "after_sha256": f"{rng.getrandbits(256):064x}"}),
                ("tool_result", {"step": step, "id": call_id, "name": "edit_file", "ok": True,
                                 "content": f"Edited {path}: 1 block replaced.\n" + _code(rng, 2000),
                                 "data": {"path": path, "change": "modified"}})]
        else:
            step_events += [
                ("tool_call", {"step": step, "id": call_id, "name": "read_file",
                               "arguments": {"path": path, "start_line": 1, "end_line": 60}}),
                ("tool_result", {"step": step, "id": call_id, "name": "read_file", "ok": True,
                                 "content": f"{path} (lines 1-60 of 200)\n" + _code(rng, 2000),
                                 "data": {"path": path, "total_lines": 200, "start_line": 1, "end_line": 60,
                                          "sha256": f"{rng.getrandbits(256):064x}"}})]
        log += step_events[:count - 1 - len(log)]
    log.append(("end", {"status": "succeeded", "steps": step, "usd": f"{tokens_in * 3e-6 + tokens_out * 15e-6:.6f}",
                        "files_changed": files, "input_tokens": tokens_in, "output_tokens": tokens_out}))
    return log


# --- figures -------------------------------------------------------------------------------------


def _spread(values: list[float], scale: float = 1.0, places: int = 1) -> dict[str, float]:
    return {"median": round(statistics.median(values) * scale, places), "min": round(min(values) * scale, places),
            "max": round(max(values) * scale, places)}


def loop_summary(runs: list[dict[str, Any]], steps: int) -> dict[str, Any]:
    return {
        "steps": steps, "model_calls_per_run": steps + 1, "repeats": len(runs),
        "wall_ms": _spread([r["wall_s"] for r in runs], 1000),
        "wall_ms_per_step": _spread([r["wall_s"] / steps for r in runs], 1000, 2),
        "model_floor_ms": _spread([r["floor_s"] for r in runs], 1000),
        "model_floor_ms_per_step": _spread([r["floor_s"] / steps for r in runs], 1000, 2),
        "loop_overhead_ms_per_step": _spread([(r["wall_s"] - r["floor_s"]) / steps for r in runs], 1000, 2),
        "events_per_run": _spread([r["events"] for r in runs], places=0),
        "events_per_step": _spread([r["events"] / steps for r in runs], places=2),
        "events_per_second": _spread([r["events"] / r["wall_s"] for r in runs], places=0),
        "first_event_ms": _spread([r["first_event_s"] for r in runs], 1000),
        "bytes_per_run": _spread([r["bytes"] for r in runs], places=0),
        "event_types": runs[-1]["types"],
    }


def replay_summary(timings: list[dict[str, float]], *, events: int, fill_s: float, shapes: dict[str, int],
                   data_bytes: int) -> dict[str, Any]:
    seconds = sorted(t["seconds"] for t in timings)
    p50 = statistics.median(seconds)
    body_bytes = timings[0]["bytes"]
    return {
        "events": events, "repeats": len(timings), "event_types": shapes, "data_json_bytes": data_bytes,
        "sse_body_bytes": body_bytes, "bulk_insert_s": round(fill_s, 2),
        "to_end_ms": {"p50": round(p50 * 1000, 1), "max": round(seconds[-1] * 1000, 1),
                      "min": round(seconds[0] * 1000, 1)},
        "first_event_ms_p50": round(statistics.median(t["first_event_s"] for t in timings) * 1000, 1),
        "events_per_second_p50": round(events / p50), "mb_per_second_p50": round(body_bytes / p50 / 1e6, 2),
        "events_per_second_worst": round(events / seconds[-1]),
        "every_seq_once_in_order": True,  # checked on every replay (a failure stops the benchmark)
    }


def cancel_summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    to_end = sorted(r["cancel_to_end_ms"] for r in results)
    to_202 = sorted(r["cancel_to_202_ms"] for r in results)
    return {"runs": len(results), "chunk_delay_s": 0.2,
            "cancel_to_end_ms": {"p50": round(statistics.median(to_end), 1), "max": round(to_end[-1], 1),
                                 "min": round(to_end[0], 1)},
            "cancel_to_202_ms": {"p50": round(statistics.median(to_202), 1), "max": round(to_202[-1], 1)},
            "model_stream_closed": sum(r["model_stream_closed"] for r in results)}


def summary_print(report: dict[str, Any]) -> None:
    loop, replay, cancel = report["loop"], report["replay"], report["cancel"]
    print(f"\n== kf agent benchmark on {report['database']} ({report['cpus']} CPUs, load at start "
          f"{report['load_average_at_start']}) ==")
    print(f"loop, {loop['steps']} steps + final answer, {loop['repeats']} runs (median [min … max]):")
    for key, unit in (("wall_ms", "ms"), ("model_floor_ms", "ms"), ("wall_ms_per_step", "ms"),
                      ("model_floor_ms_per_step", "ms"), ("loop_overhead_ms_per_step", "ms"),
                      ("events_per_step", ""), ("events_per_second", "")):
        s = loop[key]
        print(f"  {key:28s} {s['median']:>10} {unit:2s} [{s['min']} … {s['max']}]")
    print(f"  (building one SDK client, which chat() now does once per configuration: "
          f"{loop['model_client_build_ms']['median']} ms)")
    print(f"replay of {replay['events']} events ({replay['sse_body_bytes'] / 1e6:.2f} MB of SSE), "
          f"{replay['repeats']} times:")
    print(f"  to `end`: p50 {replay['to_end_ms']['p50']} ms, max {replay['to_end_ms']['max']} ms; "
          f"{replay['events_per_second_p50']} events/s, {replay['mb_per_second_p50']} MB/s at p50; "
          f"first event {replay['first_event_ms_p50']} ms")
    print(f"cancel, {cancel['runs']} runs: cancel → end p50 {cancel['cancel_to_end_ms']['p50']} ms, "
          f"max {cancel['cancel_to_end_ms']['max']} ms (202 p50 {cancel['cancel_to_202_ms']['p50']} ms)")
    if report["daphne_log_warnings"]:
        print("daphne log warnings:\n  " + "\n  ".join(report["daphne_log_warnings"]))


if __name__ == "__main__":
    sys.exit(main())

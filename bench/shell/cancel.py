#!/usr/bin/env python
"""How long a shell job's cancel takes to kill its whole process group.

    .venv/bin/python bench/shell/cancel.py                 # SQLite: a fresh database file
    .venv/bin/python bench/shell/cancel.py --runs 50
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/kf .venv/bin/python bench/shell/cancel.py

Each run starts `sleep N & sleep N` through the same service the API calls (the job runs in kf's
in-process task runner, as in the embedded shape), waits until both sleeps are alive, then cancels
the job exactly as POST /api/shell/cancel/<id> does, and measures:

- cancel → group death: until no live process is left in the job's process group (from /proc);
- cancel → end: until the job's `end {status: cancelled}` event is in the log.

With a Postgres DATABASE_URL it never touches the database named there: it uses `<name>_bench` on the
same server (created fresh, dropped at the end). REDIS_URL is ignored: everything runs in this process.
Results are printed and written to bench/shell/results.json.
"""

import argparse
import json
import os
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
RESULTS = Path(__file__).resolve().parent / "results.json"
sys.path.insert(0, str(REPO))

from bench.search.run import database_drop, database_prepare


def django_setup(work: Path, database: dict[str, Any]) -> None:
    os.environ["DATABASE_URL"] = database["url"]
    os.environ["KF_DATA_DIR"] = str(work / "kf")
    os.environ["KF_PROJECTS_ROOT"] = str(work / "projects")
    os.environ.pop("REDIS_URL", None)  # the job runs in this process's task runner
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kfsite.settings")
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)


def pids_of(marker: str) -> list[int]:
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                cmdline = Path(entry.path, "cmdline").read_bytes().split(b"\x00")
            except OSError:
                continue
            if cmdline[:2] == [b"sleep", marker.encode()]:
                found.append(int(entry.name))
    return found


def pgid_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rfind(")") + 2:].split()[2])


def wait(predicate: Any, timeout: float, step: float = 0.001) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise RuntimeError("timed out waiting")


def one_run(user: Any, project: Any, n: int) -> dict[str, float]:
    from shell.runner import group_members
    from shell.services import shell_cancel, shell_run_start
    from streams.models import Event

    marker = str(700000 + n)
    job = shell_run_start(user=user, project=project, command=f"sleep {marker} & sleep {marker}")
    pids = wait(lambda: len(pids_of(marker)) == 2 and pids_of(marker), timeout=30)
    pgid = pgid_of(pids[0])
    time.sleep(0.05)  # the runner is in its read loop
    started = time.monotonic()
    shell_cancel(job=job)
    wait(lambda: not group_members(pgid), timeout=10)
    dead = time.monotonic()
    wait(lambda: Event.objects.filter(job_id=job.pk, type="end").exists(), timeout=10, step=0.005)
    ended = time.monotonic()
    job.refresh_from_db()
    assert job.status == "cancelled", job.status
    return {"group_dead_ms": (dead - started) * 1000, "end_ms": (ended - started) * 1000}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    base = Path(os.environ["KF_DATA_DIR"]) if os.environ.get("KF_DATA_DIR") else Path("/tmp/kf-bench")
    work = (base / "bench-shell").resolve()
    database = database_prepare(work)
    django_setup(work, database)

    from accounts.models import User, Workspace
    from accounts.services import workspace_create
    from projects.models import Project

    user = User.objects.create_user(email=f"bench-{uuid.uuid4().hex[:6]}@example.com", password=None)
    workspace: Workspace = workspace_create(owner=user, name="bench", personal=True)
    root = work / "projects" / "p"
    root.mkdir(parents=True, exist_ok=True)
    project = Project.objects.create(workspace=workspace, name="p", root=str(root.resolve()), source="path")

    runs = []
    for n in range(args.runs):
        runs.append(one_run(user, project, n))
        print(f"run {n + 1:3d}: group dead {runs[-1]['group_dead_ms']:7.1f} ms, end event {runs[-1]['end_ms']:7.1f} ms",
              flush=True)

    def stats(key: str) -> dict[str, float]:
        values = sorted(r[key] for r in runs)
        return {"p50_ms": round(statistics.median(values), 1), "max_ms": round(values[-1], 1),
                "min_ms": round(values[0], 1)}

    report = {"database": database["vendor"], "runs": args.runs, "cancel_to_group_dead": stats("group_dead_ms"),
              "cancel_to_end_event": stats("end_ms")}
    print(json.dumps(report, indent=2))
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")

    from django.db import connections

    connections.close_all()
    database_drop(database)
    return 0


if __name__ == "__main__":
    sys.exit(main())

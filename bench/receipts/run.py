#!/usr/bin/env python
"""kf receipts benchmark: appends, a full verify of a 100,000-receipt log, one inclusion proof.

    .venv/bin/python bench/receipts/run.py            # SQLite (a fresh file)
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/kf .venv/bin/python bench/receipts/run.py

With a Postgres DATABASE_URL it never touches the database named there: it works in `<name>_bench` on
the same server (created fresh, dropped at the end unless --keep), as bench/search/run.py does. See
bench/receipts/README.md for what is measured and how to read the output.
"""

import argparse
import importlib.util
import json
import os
import random
import shutil
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
RESULTS = Path(__file__).resolve().parent / "results.json"


def _search_bench() -> Any:
    """The database set-up and tear-down of the search benchmark (one implementation for both)."""
    spec = importlib.util.spec_from_file_location("kf_bench_search", REPO / "bench" / "search" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--appends", type=int, default=2000, help="timed appends, one at a time (default %(default)s)")
    parser.add_argument("--threads", type=int, default=4, help="threads of the concurrent-append phase")
    parser.add_argument("--per-thread", type=int, default=250, help="appends per thread in that phase")
    parser.add_argument("--log-size", type=int, default=100_000, help="receipts in the verified log")
    parser.add_argument("--proofs", type=int, default=200, help="inclusion proofs built and checked")
    parser.add_argument("--keep", action="store_true", help="keep the benchmark database and data folder")
    args = parser.parse_args()

    search = _search_bench()
    base = Path(os.environ["KF_DATA_DIR"]) if os.environ.get("KF_DATA_DIR") else Path("/tmp/kf-bench")
    work = (base / "bench-receipts").resolve()
    shutil.rmtree(work / "kf", ignore_errors=True)
    database = search.database_prepare(work)
    django_setup(work, database)

    from django.db import connection

    report: dict[str, Any] = {"database": connection.vendor}
    project, user = fixtures(work)
    report["append"] = bench_appends(project, user, args.appends)
    print_append(report["append"], connection.vendor)
    report["append_concurrent"] = bench_concurrent(project, user, args.threads, args.per_thread)
    c = report["append_concurrent"]
    print(f"concurrent appends ({c['threads']} threads, one workspace): {c['per_second']}/s, "
          f"p99 {c['p99_ms']} ms, seqs dense: {c['dense']}", flush=True)

    report["fill"] = bench_fill(project, user, args.log_size)
    print(f"filled the log to {report['fill']['receipts']} receipts in {report['fill']['seconds']} s "
          f"({report['fill']['per_second']}/s, bulk inserts through the append's own code)", flush=True)
    report["verify"] = bench_verify(project.workspace_id)
    print_verify(report["verify"])
    report["proof"] = bench_proofs(project.workspace_id, args.proofs)
    p = report["proof"]
    print(f"one inclusion proof: built from the stored nodes in {p['build_ms_p50']} ms (p50), checked offline "
          f"(canonical JSON + audit path + Ed25519) in {p['verify_ms_p50']} ms (p50); path length {p['path_length']}")

    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"results: {RESULTS}")
    if not args.keep:
        from django.db import connections

        connections.close_all()
        search.database_drop(database)
        shutil.rmtree(work / "kf", ignore_errors=True)
    return 0


def django_setup(work: Path, database: dict[str, Any]) -> None:
    os.environ["DATABASE_URL"] = database["url"]
    os.environ["KF_DATA_DIR"] = str(work / "kf")  # a fresh signing key file, not the installation's
    os.environ["KF_PROJECTS_ROOT"] = str(work)
    os.environ.pop("KF_SIGNING_KEY", None)
    os.environ.pop("REDIS_URL", None)  # everything runs in this process
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kfsite.settings")
    sys.path.insert(0, str(REPO))
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)


APP_PY = "import os\n\n\ndef load(path):\n    # TODO: cache it\n    with open(path) as fh:\n        return fh.read()\n"


def fixtures(work: Path) -> tuple[Any, Any]:
    from accounts.models import User
    from accounts.services import workspace_create
    from projects.models import Project

    user = User.objects.create_user(email="bench@example.com", password="bench-only-password-1")
    workspace = workspace_create(owner=user, name="bench", personal=True)
    root = work / "kf" / "project"
    root.mkdir(parents=True, exist_ok=True)
    (root / "app.py").write_text(APP_PY)
    project = Project.objects.create(workspace=workspace, name="bench", root=str(root), source="path")
    return project, user


def facts(project: Any, user: Any, n: int) -> dict[str, Any]:
    """A run that read two files, edited one, ran the tests and left two findings (about 1.3 KB)."""
    digest = f"{n:064x}"
    return {
        "run_id": f"run_bench{n:012d}", "ws_id": project.workspace_id, "project_id": project.pk,
        "user_id": user.pk, "task": f"Refactor the config loader, step {n}", "model": "gpt-4o-mini",
        "status": "succeeded", "input_tokens": 12000 + n % 997, "output_tokens": 900 + n % 101, "usd": "0.002431",
        "tool_calls": [{"name": "read_file", "arguments": '{"path": "app.py"}', "result": APP_PY},
                       {"name": "edit_file", "arguments": '{"path": "app.py"}', "result": "edited app.py"},
                       {"name": "run_tests", "arguments": "{}", "result": f"{n % 50} passed"}],
        "files": [{"path": "app.py", "before_sha256": digest, "after_sha256": digest[::-1]},
                  {"path": "tests/test_app.py", "before_sha256": None, "after_sha256": digest}],
        "snapshot_before": "4b825dc642cb6eb9a060e54bf8d69288fbee4904",
        "snapshot_after": "9c1185a5c5e9fc54612808977ee8f548b2258d31",
        "findings": [{"path": "app.py", "line": 5, "rule": "todo", "severity": "info", "message": "TODO: cache it"},
                     {"path": "app.py", "line": 6, "rule": "ruff-F841", "severity": "warning", "message": "unused"}],
        "started_at": "2026-03-01T10:00:00Z", "ended_at": "2026-03-01T10:02:31Z",
    }


def _ms(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 3)


def bench_appends(project: Any, user: Any, count: int) -> dict[str, Any]:
    from receipts.services import receipt_append

    for n in range(20):  # warm-up: connection, caches, the key file
        receipt_append(facts=facts(project, user, 10_000_000 + n))
    times = []
    started = time.perf_counter()
    for n in range(count):
        t = time.perf_counter()
        receipt_append(facts=facts(project, user, n))
        times.append(time.perf_counter() - t)
    total = time.perf_counter() - started
    return {"count": count, "per_second": round(count / total), "p50_ms": _ms(times, 0.5),
            "p99_ms": _ms(times, 0.99), "max_ms": _ms(times, 1.0), "mean_ms": round(statistics.mean(times) * 1000, 3),
            "lock_section_ms_p50": _lock_section(project, user)}


def _lock_section(project: Any, user: Any) -> float:
    """The part of an append that holds the workspace's lock (everything after reading the files)."""
    from receipts import services
    from receipts.canonical import facts_clean
    from receipts.fingerprints import findings_fingerprinted

    times = []
    for n in range(200):
        clean = facts_clean(facts(project, user, 20_000_000 + n))
        findings = findings_fingerprinted(project.root, clean.findings)
        t = time.perf_counter()
        services._append(clean, findings)
        times.append(time.perf_counter() - t)
    return _ms(times, 0.5)


def print_append(result: dict[str, Any], vendor: str) -> None:
    print(f"append ({vendor}, one at a time, {result['count']}): {result['per_second']}/s, p50 {result['p50_ms']} ms, "
          f"p99 {result['p99_ms']} ms, max {result['max_ms']} ms; under the lock {result['lock_section_ms_p50']} ms "
          "(p50)", flush=True)


def bench_concurrent(project: Any, user: Any, threads: int, per_thread: int) -> dict[str, Any]:
    from django.db import connection

    from receipts.models import Receipt
    from receipts.services import receipt_append

    before = Receipt.objects.filter(workspace_id=project.workspace_id).count()
    times: list[float] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads)

    def worker(k: int) -> None:
        try:
            barrier.wait()
            for n in range(per_thread):
                t = time.perf_counter()
                receipt_append(facts=facts(project, user, 30_000_000 + k * 1_000_000 + n))
                times.append(time.perf_counter() - t)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connection.close()

    started = time.perf_counter()
    pool = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    total = time.perf_counter() - started
    if errors:
        raise errors[0]
    seqs = list(Receipt.objects.filter(workspace_id=project.workspace_id).order_by("seq").values_list("seq", flat=True))
    return {"threads": threads, "count": threads * per_thread, "per_second": round(threads * per_thread / total),
            "p50_ms": _ms(times, 0.5), "p99_ms": _ms(times, 0.99),
            "dense": seqs == list(range(1, before + threads * per_thread + 1))}


def bench_fill(project: Any, user: Any, size: int) -> dict[str, Any]:
    """Grows the log to `size` receipts with receipt_next (the append's own builder, signature included)
    and bulk inserts: the same rows, far quicker than one transaction per receipt."""
    from django.db import transaction
    from django.utils import timezone

    from receipts.canonical import facts_clean
    from receipts.fingerprints import findings_fingerprinted
    from receipts.models import Receipt, ReceiptLog
    from receipts.services import LogState, log_head_store, receipt_next

    log = ReceiptLog.objects.get(workspace_id=project.workspace_id)
    state = LogState.of(log)
    todo = size - state.tree_size
    started = time.perf_counter()
    findings = findings_fingerprinted(project.root, facts_clean(facts(project, user, 0)).findings)
    batch: list[Any] = []
    newest = None
    for n in range(todo):
        clean = facts_clean(facts(project, user, 100_000_000 + n))
        newest = receipt_next(state, clean, findings, at=timezone.now())
        batch.append(newest)
        if len(batch) == 2000 or n == todo - 1:
            with transaction.atomic():
                Receipt.objects.bulk_create(batch)
                log_head_store(log, state, newest)
            batch = []
    seconds = time.perf_counter() - started
    return {"receipts": state.tree_size, "added": todo, "seconds": round(seconds, 2),
            "per_second": round(todo / seconds) if seconds else None}


def bench_verify(ws_id: str) -> dict[str, Any]:
    import hashlib

    from receipts import merkle
    from receipts.audit import ROW_FIELDS, ChainScan, log_verify
    from receipts.models import Receipt

    newest = Receipt.objects.filter(workspace_id=ws_id).order_by("-seq").first()
    n = newest.seq
    started = time.perf_counter()
    result = log_verify(receipt=newest)
    endpoint = time.perf_counter() - started
    assert result["ok"], result

    started = time.perf_counter()
    rows = list(Receipt.objects.filter(workspace_id=ws_id).order_by("seq").values_list(*ROW_FIELDS)
                .iterator(chunk_size=2000))
    fetch = time.perf_counter() - started
    rows = [(seq, run_id, project_id, bytes(body), h, sub) for seq, run_id, project_id, body, h, sub in rows]
    rows[0][3].find(b"v")  # (the bytes() copies above are not timed: feed makes them only on Postgres)
    body_bytes = sum(len(r[3]) for r in rows)

    started = time.perf_counter()
    scan = ChainScan(ws_id)
    assert scan.feed(rows), scan.problem
    root = scan.frontier.root()
    compute = time.perf_counter() - started
    assert root.hex() == newest.root_hash

    started = time.perf_counter()
    leaves = []
    for row in rows:
        digest = hashlib.sha256(b"\x00")
        digest.update(row[3])
        leaves.append(digest.digest())
    hashing = time.perf_counter() - started
    started = time.perf_counter()
    assert merkle.root_of(leaves) == root
    tree = time.perf_counter() - started
    per_million = 1_000_000 / n
    return {"receipts": n, "body_bytes_mean": round(body_bytes / n), "endpoint_seconds": round(endpoint, 3),
            "fetch_seconds": round(fetch, 3), "compute_seconds": round(compute, 3),
            "leaf_hashing_seconds": round(hashing, 3), "merkle_tree_seconds": round(tree, 3),
            "compute_per_1m_per_core_seconds": round(compute * per_million, 2),
            "hashes_only_per_1m_per_core_seconds": round((hashing + tree) * per_million, 2),
            "endpoint_per_1m_seconds": round(endpoint * per_million, 2)}


def print_verify(v: dict[str, Any]) -> None:
    print(f"full verify of {v['receipts']} receipts (mean {v['body_bytes_mean']} bytes): {v['endpoint_seconds']} s "
          f"through log_verify = fetch {v['fetch_seconds']} s + recompute {v['compute_seconds']} s (of which leaf "
          f"hashing {v['leaf_hashing_seconds']} s)", flush=True)
    print(f"  extrapolated to 1M receipts: recompute {v['compute_per_1m_per_core_seconds']} s per core "
          f"(goal < 2 s); the hashes alone (leaves {v['leaf_hashing_seconds']} s + Merkle tree "
          f"{v['merkle_tree_seconds']} s per {v['receipts']}) {v['hashes_only_per_1m_per_core_seconds']} s; "
          f"whole call {v['endpoint_per_1m_seconds']} s", flush=True)


def bench_proofs(ws_id: str, count: int) -> dict[str, Any]:
    from receipts.models import Receipt
    from receipts.selectors import receipt_bundle
    from receipts.verify_bundle import verify

    size = Receipt.objects.filter(workspace_id=ws_id).count()
    rng = random.Random(7)
    build, check, lengths = [], [], []
    for _ in range(count):
        receipt = Receipt.objects.get(workspace_id=ws_id, seq=rng.randint(1, size))
        t = time.perf_counter()
        bundle = receipt_bundle(receipt=receipt)
        build.append(time.perf_counter() - t)
        t = time.perf_counter()
        verify(bundle)
        check.append(time.perf_counter() - t)
        lengths.append(len(bundle["inclusion_proof"]["audit_path"]))
    return {"count": count, "tree_size": size, "build_ms_p50": _ms(build, 0.5), "build_ms_p99": _ms(build, 0.99),
            "verify_ms_p50": _ms(check, 0.5), "verify_ms_p99": _ms(check, 0.99),
            "path_length": max(lengths)}


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""kf budget benchmark: estimate latency for a 400 KB prompt, token counting throughput (and the
characters-per-token calibration of budget/tokens.py), and the time of one run_reserve.

    .venv/bin/python bench/budget/run.py            # SQLite (a fresh file)
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/kf .venv/bin/python bench/budget/run.py

Like the other benchmarks it never touches the database DATABASE_URL names: it works in `<name>_bench`
on the same server (or a fresh SQLite file), dropped at the end unless --keep.
"""

import argparse
import glob
import importlib.util
import json
import math
import os
import shutil
import sys
import sysconfig
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
RESULTS = Path(__file__).resolve().parent / "results.json"
PROMPT_BYTES = 400 * 1024


def _search_bench() -> Any:
    """The database set-up and tear-down of the search benchmark (one implementation for all)."""
    spec = importlib.util.spec_from_file_location("kf_bench_search", REPO / "bench" / "search" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))]


def timings_ms(values: list[float]) -> dict[str, float]:
    return {"n": len(values), "p50": round(percentile(values, 50) * 1000, 3),
            "p95": round(percentile(values, 95) * 1000, 3), "p99": round(percentile(values, 99) * 1000, 3),
            "max": round(max(values) * 1000, 3)}


def read_texts(pattern: str, limit_bytes: int) -> list[str]:
    texts, total = [], 0
    for path in sorted(glob.glob(pattern, recursive=True)):
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        texts.append(text)
        total += len(text.encode())
        if total >= limit_bytes:
            break
    return texts


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


# --- tokens -------------------------------------------------------------------------------------------

def bench_tokens() -> dict[str, Any]:
    from budget import tokens

    corpus = read_texts(str(stdlib_dir() / "**" / "*.py"), 20 * 1024 * 1024)
    size = sum(len(t.encode()) for t in corpus)
    report: dict[str, Any] = {"corpus": "Python standard library (.py)", "mb": round(size / 1e6, 2)}
    for name in ("o200k_base", "cl100k_base", "llama3", "qwen3"):
        started = time.perf_counter()
        tokens._encoding(name).count("x")
        loaded = time.perf_counter() - started
        started = time.perf_counter()
        count = sum(tokens.TokenCounter(name).count(t) for t in corpus)
        seconds = time.perf_counter() - started
        report[name] = {"load_seconds": round(loaded, 3), "mb_per_s": round(size / 1e6 / seconds, 1), "tokens": count,
                        "chars_per_token": round(sum(map(len, corpus)) / count, 3)}
    started = time.perf_counter()
    count = sum(tokens.ratio_count(t) for t in corpus)
    seconds = time.perf_counter() - started
    report["ratio"] = {"mb_per_s": round(size / 1e6 / seconds, 1), "tokens": count}
    for name in ("o200k_base", "cl100k_base", "llama3", "qwen3", "ratio"):
        print(f"tokens {name:12} {report[name]['mb_per_s']:7.1f} MB/s  {report[name]['tokens']:>10,} tokens"
              + (f"  (first load {report[name]['load_seconds']} s)" if "load_seconds" in report[name] else ""))
    return report


def bench_calibration() -> dict[str, Any]:
    """Characters per token of the OpenAI encodings on the kinds of text kf sends a model, and the
    tokens per non-ASCII character (a least-squares fit over Django's translation catalogues)."""
    import django
    import rest_framework

    from budget import tokens

    site = Path(django.__file__).parent
    kinds = {
        "python": str(stdlib_dir() / "**" / "*.py"),
        "javascript": str(site / "**" / "*.js"),
        "css": str(Path(rest_framework.__file__).parent / "**" / "*.css"),
        "html": str(site / "**" / "*.html"),
        "english prose": "/usr/share/common-licenses/*",
        "markdown": str(REPO.parent / "shared" / "*.md"),
    }
    report: dict[str, Any] = {}
    for kind, pattern in kinds.items():
        texts = read_texts(pattern, 4 * 1024 * 1024)
        if not texts:
            continue
        chars = sum(map(len, texts))
        report[kind] = {enc: round(chars / sum(tokens.TokenCounter(enc).count(t) for t in texts), 2)
                        for enc in ("cl100k_base", "o200k_base")}
        report[kind]["ratio_rule"] = round(chars / sum(tokens.ratio_count(t) for t in texts), 2)
        print(f"chars/token {kind:14} cl100k {report[kind]['cl100k_base']:5}  o200k {report[kind]['o200k_base']:5}"
              f"  kf's ratio {report[kind]['ratio_rule']:5}")
    catalogues = read_texts(str(site / "conf" / "locale" / "*" / "LC_MESSAGES" / "django.po"), 10**9)
    for enc in ("cl100k_base", "o200k_base"):
        # tokens ≈ a·ascii + b·non_ascii: solve the 2×2 normal equations.
        rows = [(len(t.encode("ascii", "ignore")), len(t) - len(t.encode("ascii", "ignore")),
                 tokens.TokenCounter(enc).count(t)) for t in catalogues]
        saa = sum(a * a for a, _, _ in rows)
        sab = sum(a * b for a, b, _ in rows)
        sbb = sum(b * b for _, b, _ in rows)
        sat = sum(a * t for a, _, t in rows)
        sbt = sum(b * t for _, b, t in rows)
        det = saa * sbb - sab * sab
        a, b = (sat * sbb - sbt * sab) / det, (saa * sbt - sab * sat) / det
        report[f"non_ascii_{enc}"] = {"tokens_per_ascii_char": round(a, 3), "tokens_per_non_ascii_char": round(b, 3),
                                      "catalogues": len(catalogues)}
        print(f"non-ASCII   {enc}: {b:.3f} tokens per character ({len(catalogues)} catalogues)")
    return report


# --- estimate -----------------------------------------------------------------------------------------

def make_project(workspace: Any, files: int) -> Any:
    """A project whose last rescan stored `files` files of the standard library."""
    import hashlib

    from django.utils import timezone

    from projects.models import Blob, File, Project

    project = Project.objects.create(workspace=workspace, name="stdlib", root=str(stdlib_dir()),
                                     source=Project.Source.PATH, indexed_at=timezone.now())
    paths = sorted(glob.glob(str(stdlib_dir() / "**" / "*.py"), recursive=True))[:files]
    for path in paths:
        content = Path(path).read_text(encoding="utf-8", errors="replace")
        sha = hashlib.sha256(content.encode()).hexdigest()
        blob, _ = Blob.objects.get_or_create(sha=sha, defaults={"size": len(content.encode()), "content": content})
        File.objects.create(project=project, path=os.path.relpath(path, stdlib_dir()), blob=blob, size=blob.size,
                            mtime_ns=0, language="Python")
    return project


def bench_estimate(calls: int) -> dict[str, Any]:
    from django.core.cache import cache
    from django.test import Client

    from accounts.models import User
    from accounts.services import workspace_create
    from budget.estimate import run_estimate
    from budget.services import caps_set

    user = User.objects.create_user(email="bench@example.com", password="bench-only-password-1")
    workspace = workspace_create(owner=user, name="bench", personal=True)
    caps_set(actor=user, workspace=workspace, daily_usd=Decimal(100), monthly_usd=Decimal(1000))
    project = make_project(workspace, 1500)
    prompt = "".join(read_texts(str(stdlib_dir() / "**" / "*.py"), PROMPT_BYTES)).encode()[:PROMPT_BYTES]
    task = prompt.decode("utf-8", errors="ignore")
    report: dict[str, Any] = {"prompt_bytes": len(task.encode()), "project_files": project.files.count()}

    cache.clear()
    started = time.perf_counter()
    first = run_estimate(workspace=workspace, user=user, task=task, model="gpt-4o", project=project)
    report["first_call_ms"] = round((time.perf_counter() - started) * 1000, 1)  # tokenizer load + project profile
    report["task_tokens"] = first.task_tokens
    report["usd"] = {"low": str(first.low.usd), "expected": str(first.expected.usd), "high": str(first.high.usd)}

    for model in ("gpt-4o", "claude-sonnet-4-5"):
        seconds = []
        for _ in range(calls):
            started = time.perf_counter()
            run_estimate(workspace=workspace, user=user, task=task, model=model, project=project)
            seconds.append(time.perf_counter() - started)
        report[f"service_{model}"] = timings_ms(seconds)

    client = Client(HTTP_HOST="127.0.0.1")  # one of the default KF_ALLOWED_HOSTS
    client.force_login(user)
    body = json.dumps({"task": task, "project_id": project.pk, "model": "gpt-4o"})
    seconds = []
    for _ in range(calls):
        started = time.perf_counter()
        response = client.post("/api/budget/estimate", body, content_type="application/json")
        seconds.append(time.perf_counter() - started)
        assert response.status_code == 200, response.content[:500]
    report["api_gpt-4o"] = timings_ms(seconds)
    for key in ("service_gpt-4o", "service_claude-sonnet-4-5", "api_gpt-4o"):
        t = report[key]
        print(f"estimate {key:26} 400 KB prompt: p50 {t['p50']:7.1f} ms  p95 {t['p95']:7.1f} ms  (n={t['n']})")
    print(f"estimate first call (loads the tokenizer, profiles the project): {report['first_call_ms']} ms")
    return report


# --- reservations -------------------------------------------------------------------------------------

def bench_reserve(count: int) -> dict[str, Any]:
    from accounts.models import User
    from accounts.services import workspace_create
    from budget.services import (
        call_reserve,
        call_settle,
        caps_set,
        run_release,
        run_reserve,
    )

    user = User.objects.create_user(email="reserve@example.com", password="bench-only-password-1")
    workspace = workspace_create(owner=user, name="reserve bench")
    caps_set(actor=user, workspace=workspace, daily_usd=Decimal(1_000_000), monthly_usd=Decimal(1_000_000))
    caps_set(actor=user, workspace=workspace, user=user, daily_usd=Decimal(1_000_000))
    times: dict[str, list[float]] = {"run_reserve": [], "call_reserve": [], "call_settle": [], "run_release": []}

    def timed(name: str, call: Any, **kwargs: Any) -> None:
        started = time.perf_counter()
        call(**kwargs)
        times[name].append(time.perf_counter() - started)

    for i in range(count):
        run_id = f"run_bench_{i}"
        timed("run_reserve", run_reserve, workspace=workspace, user=user, run_id=run_id, model="gpt-4o",
              usd=Decimal("0.5"))
        timed("call_reserve", call_reserve, run_id=run_id, usd=Decimal("0.6"))
        timed("call_settle", call_settle, run_id=run_id, model="gpt-4o", input_tokens=20_000, output_tokens=300)
        timed("run_release", run_release, run_id=run_id)
    report = {name: timings_ms(values) for name, values in times.items()}
    for name, t in report.items():
        print(f"{name:13} p50 {t['p50']:6.2f} ms  p99 {t['p99']:6.2f} ms  (n={t['n']}, caps: workspace daily + "
              f"monthly, user daily)")
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=50, help="estimates timed per variant (default %(default)s)")
    parser.add_argument("--reservations", type=int, default=500, help="runs reserved (default %(default)s)")
    parser.add_argument("--skip-calibration", action="store_true", help="skip the ratio re-measurement")
    parser.add_argument("--keep", action="store_true", help="keep the benchmark database")
    args = parser.parse_args()

    search = _search_bench()
    base = Path(os.environ["KF_DATA_DIR"]) if os.environ.get("KF_DATA_DIR") else Path("/tmp/kf-bench")
    work = (base / "bench-budget").resolve()
    shutil.rmtree(work / "kf", ignore_errors=True)
    database = search.database_prepare(work)
    search.django_setup(work, database)

    from django.db import connection

    report: dict[str, Any] = {"database": connection.vendor, "python": sys.version.split()[0]}
    report["tokens"] = bench_tokens()
    if not args.skip_calibration:
        report["calibration"] = bench_calibration()
    report["estimate"] = bench_estimate(args.calls)
    report["reserve"] = bench_reserve(args.reservations)
    p95 = report["estimate"]["api_gpt-4o"]["p95"]
    print(f"goal: estimate p95 < 250 ms for a 400 KB prompt: {p95} ms through the API — "
          f"{'met' if p95 < 250 else 'NOT met'}")
    RESULTS.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"results: {RESULTS}")

    if not args.keep:
        from django.db import connections

        connections.close_all()
        search.database_drop(database)
        shutil.rmtree(work / "kf", ignore_errors=True)
    return 0 if p95 < 250 else 1


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""kf code search benchmark, with ripgrep measured on the same tree in the same run.

    .venv/bin/python bench/search/run.py            # SQLite (a fresh file)
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/kf .venv/bin/python bench/search/run.py

See bench/search/README.md for what is measured and how to read the output.
"""

import argparse
import inspect
import json
import os
import shutil
import statistics
import subprocess
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
RESULTS = Path(__file__).resolve().parent / "results.json"
MAX_FILE_BYTES = 1024 * 1024  # kf's default KF_INDEX_MAX_FILE_BYTES
LIMIT = 200  # the API's default

# (query, case sensitive): identifiers and strings that occur in the standard library, common and rare.
LITERALS: list[tuple[str, bool]] = [
    ("def __init__", True), ("import os", True), ("ValueError(", True), ("TODO", True),
    ("self.assertEqual(", True), ("return None", True), ("raise TypeError", True), ("isinstance(", True),
    ("from typing import", True), ("if __name__ == '__main__':", True), ("except Exception", True),
    ("@property", True), ("async def", True), ("logging.getLogger", True), ("os.path.join", True),
    ("subprocess.run", True), ("NotImplementedError", True), ("super().__init__(", True),
    ("sys.version_info", True), ("yield from", True), ("xyzzy_not_in_the_corpus", True),
    ("ZeroDivisionError", True), ("todo", False), ("copyright", False), ("deprecationwarning", False),
]
REGEXES: list[tuple[str, bool]] = [
    (r"def \w+_test\(", True), (r"class \w+Error\(", True), (r"^import \w+$", True), (r"\bTODO\b.*", True),
    (r"def test_\w+\(self\)", True), (r"raise \w+Error\(", True), (r"self\.\w+ = None", True),
    (r"except \w+ as \w+:", True), (r"^class \w+\(object\):", True), (r"[0-9]+\.[0-9]+\.[0-9]+", True),
    (r"@\w+\.setter", True), (r"^\s+return \w+\(\)$", True), (r"(get|set)_\w+_value", True),
    (r"class \w+error", False),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--linux", action="store_true",
                        help="add the kernel tree from /usr/src/linux-source-*.tar.* (Debian linux-source)")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per query for kf (rg: ceil(runs/2))")
    parser.add_argument("--keep", action="store_true", help="keep the corpus and the benchmark database")
    args = parser.parse_args()

    if shutil.which("rg") is None:
        print("ripgrep is missing: apt-get install -y ripgrep", file=sys.stderr)
        return 2
    if args.linux and not sorted(Path("/usr/src").glob("linux-source-*.tar.*")):
        print("--linux: no /usr/src/linux-source-*.tar.* (apt-get install linux-source)", file=sys.stderr)
        return 2
    base = Path(os.environ["KF_DATA_DIR"]) if os.environ.get("KF_DATA_DIR") else Path("/tmp/kf-bench")
    work = (base / "bench").resolve()
    corpus = work / "corpus"
    database = database_prepare(work)

    started = time.monotonic()
    print(f"corpus: copying text files into {corpus} …", flush=True)
    files, size = corpus_build(corpus, linux=args.linux)
    print(f"corpus: {files} files, {size / 1e6:.1f} MB ({time.monotonic() - started:.1f} s)", flush=True)

    django_setup(work, database)
    report: dict[str, Any] = {"database": database["vendor"], "corpus": {"files": files, "bytes": size,
                                                                          "linux": args.linux}}
    user, project = bench_project(corpus)

    print("index: full rescan …", flush=True)
    report["rescan_full"] = rescan(project, user)
    report["rescan_full"]["seconds_per_mb"] = report["rescan_full"]["seconds"] / (size / 1e6)
    touched = corpus_touch(corpus)
    print(f"index: incremental rescan after changing {touched} …", flush=True)
    report["rescan_incremental"] = rescan(project, user)
    report["rescan_unchanged"] = rescan(project, user)
    database_analyze()
    report["index"] = index_size(project)
    print(f"index: {report['index']}", flush=True)

    print("queries: kf and rg, same tree, same queries …", flush=True)
    report["queries"] = queries_run(project, user, corpus, runs=args.runs)
    report["summary"] = summarize(report)
    report["elapsed_s"] = round(time.monotonic() - started, 1)
    table_print(report)
    RESULTS.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"\nresults: {RESULTS}")

    if not args.keep:
        from django.db import connections

        connections.close_all()
        database_drop(database)
        shutil.rmtree(corpus, ignore_errors=True)
    return 0


# --- the corpus ----------------------------------------------------------------------------------


def corpus_sources() -> list[tuple[Path, str]]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    purelib = Path(sysconfig.get_paths()["purelib"])
    return [(stdlib, "stdlib"), (purelib, "site-packages")]


def corpus_build(corpus: Path, *, linux: bool) -> tuple[int, int]:
    """Copies what kf would index (UTF-8 text, no NUL, ≤ 1 MiB, not hidden) so that kf and rg search
    exactly the same files."""
    shutil.rmtree(corpus, ignore_errors=True)
    corpus.mkdir(parents=True)
    sources = corpus_sources()
    if linux:
        sources.append((linux_source(corpus), "linux"))
    count = total = 0
    for source, name in sources:
        for folder, dirs, names in os.walk(source):
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in ("__pycache__", "site-packages"))
            for filename in sorted(names):
                path = Path(folder) / filename
                if filename.startswith(".") or path.is_symlink() or not path.is_file():
                    continue
                if path.stat().st_size > MAX_FILE_BYTES:
                    continue
                data = path.read_bytes()
                if b"\x00" in data:
                    continue
                try:
                    data.decode("utf-8")
                except UnicodeDecodeError:
                    continue
                target = corpus / name / path.relative_to(source)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
                count += 1
                total += len(data)
    if linux:
        shutil.rmtree(corpus / ".linux-src", ignore_errors=True)
    return count, total


def linux_source(corpus: Path) -> Path:
    tarballs = sorted(Path("/usr/src").glob("linux-source-*.tar.*"))
    target = corpus / ".linux-src"
    target.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-xf", str(tarballs[-1]), "-C", str(target)], check=True)
    return target


def corpus_touch(corpus: Path) -> str:
    path = corpus / "stdlib" / "os.py"
    with path.open("a", encoding="utf-8") as fh:
        fh.write("\n# touched by the kf search benchmark\n")
    return str(path.relative_to(corpus))


# --- the database --------------------------------------------------------------------------------


def database_prepare(work: Path) -> dict[str, Any]:
    """Never the database DATABASE_URL names: a fresh one beside it (<name>_bench), or a new SQLite
    file when DATABASE_URL is unset."""
    url = os.environ.get("DATABASE_URL", "")
    work.mkdir(parents=True, exist_ok=True)
    if not url or url.startswith("sqlite"):
        path = work / "bench.sqlite3"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        return {"vendor": "sqlite", "url": f"sqlite:///{path}", "path": path}
    import environ
    import psycopg

    config = environ.Env.db_url_config(url)
    name = f"{config['NAME']}_bench"
    admin = psycopg.connect(host=config["HOST"] or "127.0.0.1", port=config["PORT"] or 5432, user=config["USER"],
                            password=config["PASSWORD"] or None, dbname="postgres", autocommit=True)
    with admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.execute(f'CREATE DATABASE "{name}"')
    bench_url = url.rsplit("/", 1)[0] + "/" + name
    return {"vendor": "postgresql", "url": bench_url, "config": config, "name": name}


def database_drop(database: dict[str, Any]) -> None:
    if database["vendor"] == "sqlite":
        for suffix in ("", "-wal", "-shm"):
            Path(f"{database['path']}{suffix}").unlink(missing_ok=True)
        return
    import psycopg

    config = database["config"]
    with psycopg.connect(host=config["HOST"] or "127.0.0.1", port=config["PORT"] or 5432, user=config["USER"],
                         password=config["PASSWORD"] or None, dbname="postgres", autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{database["name"]}"')


def django_setup(work: Path, database: dict[str, Any]) -> None:
    os.environ["DATABASE_URL"] = database["url"]
    os.environ["KF_DATA_DIR"] = str(work / "kf")
    os.environ["KF_PROJECTS_ROOT"] = str(work)
    os.environ.pop("REDIS_URL", None)  # everything runs in this process
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kfsite.settings")
    sys.path.insert(0, str(REPO))
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)


def database_analyze() -> None:
    """What autovacuum does soon after a bulk load; without statistics the planner guesses."""
    from django.db import connection

    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("VACUUM (ANALYZE) projects_blob, projects_file")
        else:
            cursor.execute("ANALYZE")


def index_size(project: Any) -> dict[str, Any]:
    from django.db import connection
    from django.db.models import Sum

    from projects.models import File

    indexed = File.objects.filter(project=project).aggregate(total=Sum("size"))["total"] or 0
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SELECT pg_relation_size('projects_blob_content_trgm'), pg_table_size('projects_blob'),"
                           " pg_indexes_size('projects_file')")
            index, table, file_indexes = cursor.fetchone()
            what = "GIN pg_trgm index (pg_relation_size)"
            table_what = "projects_blob with TOAST (pg_table_size)"
        else:
            cursor.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name")
            sizes = dict(cursor.fetchall())
            index = sum(size for name, size in sizes.items() if name.startswith("projects_blob_fts"))
            table = sizes.get("projects_blob", 0)
            file_indexes = sum(size for name, size in sizes.items()
                               if name.startswith(("sqlite_autoindex_projects_file", "projects_file_")))
            what = "FTS5 shadow tables (dbstat)"
            table_what = "projects_blob (dbstat)"
    return {"indexed_bytes": indexed, "index_bytes": index, "index_what": what,
            "index_ratio": round(index / indexed, 3) if indexed else None,
            "table_bytes": table, "table_what": table_what,
            "table_ratio": round(table / indexed, 3) if indexed else None, "file_index_bytes": file_indexes}


# --- the project and its rescans -----------------------------------------------------------------


def bench_project(corpus: Path) -> tuple[Any, Any]:
    from accounts.models import User
    from accounts.services import workspace_create
    from projects.models import Project, ProjectOpen

    user = User.objects.create_user(email="bench@example.com", password="bench-only-password-1")
    workspace = workspace_create(owner=user, name="bench", personal=True)
    project = Project.objects.create(workspace=workspace, name="corpus", root=str(corpus),
                                     source=Project.Source.PATH, created_by=user)
    ProjectOpen.objects.create(user=user, project=project)
    return user, project


def rescan(project: Any, user: Any) -> dict[str, Any]:
    from projects import services

    rescan_service = getattr(services, "project_rescan", None)
    if rescan_service is not None:
        measured = service_rescan(rescan_service, project, user)
        if measured is not None:
            return measured
        print("  projects.services.project_rescan did not succeed: falling back to the bench's own loader")
    else:
        print("  projects.services.project_rescan does not exist: indexing with the bench's own loader")
    started = time.perf_counter()
    counts = own_loader(project)
    return {"how": "bench loader (contents + search index only; no symbols, no findings)",
            "seconds": time.perf_counter() - started, **counts}


def service_rescan(rescan_service: Any, project: Any, user: Any) -> dict[str, Any] | None:
    from streams.models import Event, Job
    from streams.services import job_create

    job = job_create(kind="rescan", owner=user, workspace=project.workspace, project_id=project.pk)
    kwargs: dict[str, Any] = {"job_id": job.pk}
    if "project_id" in inspect.signature(rescan_service).parameters:
        kwargs["project_id"] = project.pk
    started = time.perf_counter()
    result = rescan_service(**kwargs)
    seconds = time.perf_counter() - started
    job.refresh_from_db()
    if job.status != Job.Status.SUCCEEDED:
        print(f"  rescan job {job.pk} ended {job.status}: {job.result}")
        return None
    # Phase durations from the job's own progress events (walk, index, symbols, findings).
    firsts: dict[str, Any] = {}
    for event in Event.objects.filter(job=job, type="progress").order_by("seq"):
        firsts.setdefault(event.data.get("phase"), event.at)
    marks = sorted(firsts.items(), key=lambda item: item[1]) + [("end", job.ended_at)]
    phases = {name: round((marks[i + 1][1] - at).total_seconds(), 2) for i, (name, at) in enumerate(marks[:-1])}
    return {"how": "projects.services.project_rescan (walk, contents, search index, symbols, findings)",
            "seconds": seconds, "phases_s": phases, "result": result}


def own_loader(project: Any) -> dict[str, int]:
    """A minimal rescan: walk, store changed UTF-8 text files once per sha, drop vanished ones."""
    import hashlib

    from django.db import transaction

    from projects.models import Blob, File

    root = Path(project.root)
    existing = {f.path: f for f in File.objects.filter(project=project)}
    seen: set[str] = set()
    changed = 0
    pending: list[tuple[str, bytes, int]] = []

    def flush() -> None:
        with transaction.atomic():
            blobs = {hashlib.sha256(data).hexdigest(): data for _, data, _ in pending}
            Blob.objects.bulk_create([Blob(sha=sha, size=len(data), content=data.decode("utf-8"))
                                      for sha, data in blobs.items()], ignore_conflicts=True, batch_size=200)
            ids = dict(Blob.objects.filter(sha__in=list(blobs)).values_list("sha", "id"))
            for rel, data, mtime_ns in pending:
                blob_id = ids[hashlib.sha256(data).hexdigest()]
                if rel in existing:
                    File.objects.filter(pk=existing[rel].pk).update(blob_id=blob_id, size=len(data), mtime_ns=mtime_ns)
                else:
                    File.objects.create(project=project, path=rel, blob_id=blob_id, size=len(data), mtime_ns=mtime_ns)
        pending.clear()

    for folder, dirs, names in os.walk(root):
        dirs.sort()
        for filename in sorted(names):
            path = Path(folder) / filename
            rel = path.relative_to(root).as_posix()
            info = path.stat()
            seen.add(rel)
            old = existing.get(rel)
            if old is not None and (old.size, old.mtime_ns) == (info.st_size, info.st_mtime_ns):
                continue
            pending.append((rel, path.read_bytes(), info.st_mtime_ns))
            changed += 1
            if len(pending) >= 200:
                flush()
    flush()
    gone = [f.pk for rel, f in existing.items() if rel not in seen]
    File.objects.filter(pk__in=gone).delete()
    Blob.objects.filter(files__isnull=True).delete()
    return {"changed": changed, "removed": len(gone)}


# --- the queries ---------------------------------------------------------------------------------


def kf_searcher(project: Any, user: Any) -> tuple[str, Any]:
    """Through the HTTP API when it is there (Django's test Client, a signed-in user), else the
    service directly."""
    from django.test import Client
    from django.urls import Resolver404, resolve

    from projects.search import search_project

    try:
        resolve("/api/project/search")
    except Resolver404:
        def direct(q: str, regex: bool, case: bool) -> dict[str, Any]:
            result = search_project(project=project, q=q, regex=regex, case=case, limit=LIMIT)
            return {"items": result.items, "truncated": result.truncated, "took_ms": result.took_ms}
        return "projects.search.search_project() called directly (no /api/project/search)", direct

    client = Client(HTTP_HOST="localhost")
    client.force_login(user)

    def http(q: str, regex: bool, case: bool) -> dict[str, Any]:
        response = client.get("/api/project/search", {"q": q, "regex": str(regex).lower(),
                                                      "case": str(case).lower(), "project_id": project.pk})
        if response.status_code != 200:
            raise RuntimeError(f"/api/project/search answered {response.status_code}: {response.content[:300]!r}")
        return response.json()

    return "GET /api/project/search through Django's test Client (session of a signed-in user)", http


def rg_search(corpus: Path, q: str, regex: bool, case: bool) -> list[tuple[str, int]]:
    command = ["rg", "-n", "--no-heading", "--null", "--no-config", "--color", "never",
               "-s" if case else "-i"]
    if not regex:
        command.append("-F")
    done = subprocess.run([*command, "-e", q], cwd=corpus, capture_output=True, check=False)
    if done.returncode not in (0, 1):
        raise RuntimeError(f"rg failed: {done.stderr[:300]!r}")
    found = []
    for row in done.stdout.split(b"\n"):
        if row:
            name, rest = row.split(b"\0", 1)
            found.append((name.decode(), int(rest.split(b":", 1)[0])))
    return found


def queries_run(project: Any, user: Any, corpus: Path, *, runs: int) -> dict[str, Any]:
    how, kf = kf_searcher(project, user)
    print(f"  kf: {how}")
    rg_runs = max(1, (runs + 1) // 2)
    rows = []
    for kind, queries in (("literal", LITERALS), ("regex", REGEXES)):
        for q, case in queries:
            kf(q, kind == "regex", case)  # warm-up: caches, plans
            kf_ms = []
            for _ in range(runs):
                started = time.perf_counter()
                answer = kf(q, kind == "regex", case)
                kf_ms.append((time.perf_counter() - started) * 1000)
            rg_search(corpus, q, kind == "regex", case)
            rg_ms = []
            for _ in range(rg_runs):
                started = time.perf_counter()
                found = rg_search(corpus, q, kind == "regex", case)
                rg_ms.append((time.perf_counter() - started) * 1000)
            expected = sorted(found)[:LIMIT]
            got = [(item["path"], item["line"]) for item in answer["items"]]
            row = {"kind": kind, "q": q, "case": case, "kf_ms": kf_ms, "rg_ms": rg_ms,
                   "kf_p50": statistics.median(kf_ms), "rg_p50": statistics.median(rg_ms),
                   "kf_items": len(got), "kf_truncated": answer["truncated"], "kf_took_ms": answer["took_ms"],
                   "rg_matches": len(found),
                   "same_lines": got == expected and answer["truncated"] == (len(found) > LIMIT)}
            rows.append(row)
            print(f"  {kind:7} {q!r:40} kf {row['kf_p50']:7.1f} ms  rg {row['rg_p50']:7.1f} ms  "
                  f"{'' if row['same_lines'] else 'DIFFERENT LINES'}", flush=True)
    return {"kf_how": how, "limit": LIMIT, "kf_runs": runs, "rg_runs": rg_runs, "rows": rows}


# --- the report ----------------------------------------------------------------------------------


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))]


def summarize(report: dict[str, Any]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for kind in ("literal", "regex"):
        rows = [row for row in report["queries"]["rows"] if row["kind"] == kind]
        kf_all = [ms for row in rows for ms in row["kf_ms"]]
        rg_all = [ms for row in rows for ms in row["rg_ms"]]
        summary[kind] = {
            "queries": len(rows),
            "kf_p50_ms": round(percentile(kf_all, 0.5), 2), "kf_p95_ms": round(percentile(kf_all, 0.95), 2),
            "rg_p50_ms": round(percentile(rg_all, 0.5), 2), "rg_p95_ms": round(percentile(rg_all, 0.95), 2),
            "same_lines": sum(row["same_lines"] for row in rows),
        }
        summary[kind]["rg_over_kf_p50"] = round(summary[kind]["rg_p50_ms"] / summary[kind]["kf_p50_ms"], 1)
        summary[kind]["rg_over_kf_p95"] = round(summary[kind]["rg_p95_ms"] / summary[kind]["kf_p95_ms"], 1)
    full = report["rescan_full"]
    summary["goals"] = {
        "search p50 >= 10x faster than rg (literal)": summary["literal"]["rg_over_kf_p50"] >= 10,
        "search p50 >= 10x faster than rg (regex)": summary["regex"]["rg_over_kf_p50"] >= 10,
        "literal p95 < 20 ms": summary["literal"]["kf_p95_ms"] < 20,
        "index <= 0.5x corpus": (report["index"]["index_ratio"] or 99) <= 0.5,
        "full rescan <= 0.1 s/MB": full["seconds_per_mb"] <= 0.1,
    }
    return summary


def table_print(report: dict[str, Any]) -> None:
    summary = report["summary"]
    full, incremental = report["rescan_full"], report["rescan_incremental"]
    index = report["index"]
    print("\n== kf search benchmark ==")
    print(f"database: {report['database']}   corpus: {report['corpus']['files']} files, "
          f"{report['corpus']['bytes'] / 1e6:.1f} MB   kf: {report['queries']['kf_how']}")
    print(f"rescan: {full['how']}")
    print(f"  full          {full['seconds']:8.1f} s   {full['seconds_per_mb']:.3f} s/MB"
          + (f"   phases {full['phases_s']}" if "phases_s" in full else ""))
    print(f"  one file      {incremental['seconds']:8.2f} s"
          + (f"   phases {incremental['phases_s']}" if "phases_s" in incremental else ""))
    print(f"  nothing new   {report['rescan_unchanged']['seconds']:8.2f} s")
    print(f"index: {index['index_what']} {index['index_bytes'] / 1e6:.1f} MB = {index['index_ratio']}x the "
          f"{index['indexed_bytes'] / 1e6:.1f} MB indexed; contents: {index['table_what']} "
          f"{index['table_bytes'] / 1e6:.1f} MB = {index['table_ratio']}x")
    print(f"\n{'kind':8}{'queries':>8}{'kf p50':>10}{'kf p95':>10}{'rg p50':>10}{'rg p95':>10}"
          f"{'rg/kf p50':>11}{'rg/kf p95':>11}{'same lines':>12}")
    for kind in ("literal", "regex"):
        row = summary[kind]
        print(f"{kind:8}{row['queries']:>8}{row['kf_p50_ms']:>10.1f}{row['kf_p95_ms']:>10.1f}{row['rg_p50_ms']:>10.1f}"
              f"{row['rg_p95_ms']:>10.1f}{row['rg_over_kf_p50']:>11.1f}{row['rg_over_kf_p95']:>11.1f}"
              f"{row['same_lines']:>8}/{row['queries']}")
    print("(ms; kf returns the first 200 matches in path order, rg prints every match; 'same lines': kf's "
          "items are rg's first 200 (path, line) pairs in path order, truncated when rg found more)")
    print("\ngoals (issue 3):")
    for goal, met in summary["goals"].items():
        print(f"  {'met ' if met else 'MISS'}  {goal}")


if __name__ == "__main__":
    sys.exit(main())

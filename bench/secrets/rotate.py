#!/usr/bin/env python
"""kf secrets benchmark: how long a master key rotation of 10,000 secrets takes.

    .venv/bin/python bench/secrets/rotate.py            # SQLite (a fresh file)
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/kf .venv/bin/python bench/secrets/rotate.py

With a Postgres DATABASE_URL it never touches the database named there: it works in `<name>_bench`
on the same server (created fresh, dropped at the end unless --keep), as bench/search/run.py does.
The rotation runs in this process exactly as the Celery task runs it (services.master_key_rotation_run:
batches of --batch-size rows, each its own transaction); the secrets are made with the real crypto and
inserted in bulk, and every one is decrypted afterwards to check the result.
"""

import argparse
import importlib.util
import json
import os
import secrets as random
import shutil
import sys
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
    parser.add_argument("--count", type=int, default=10_000, help="secrets to rotate (default %(default)s)")
    parser.add_argument("--workspaces", type=int, default=10, help="spread over this many workspaces")
    parser.add_argument("--batch-size", type=int, default=None, help="rows per batch (default: kf's)")
    parser.add_argument("--keep", action="store_true", help="keep the benchmark database and key file")
    args = parser.parse_args()

    search = _search_bench()
    base = Path(os.environ["KF_DATA_DIR"]) if os.environ.get("KF_DATA_DIR") else Path("/tmp/kf-bench")
    work = (base / "bench-secrets").resolve()
    shutil.rmtree(work / "kf", ignore_errors=True)
    database = search.database_prepare(work)
    django_setup(work, database)

    from django.db import connection

    from secrets_app import services

    batch = args.batch_size or services.ROTATION_BATCH
    report: dict[str, Any] = {"database": connection.vendor, "count": args.count, "batch_size": batch}
    started = time.perf_counter()
    expected = vault_fill(args.count, args.workspaces)
    report["fill_seconds"] = round(time.perf_counter() - started, 3)
    print(f"filled {args.count} secrets on {connection.vendor} in {report['fill_seconds']} s", flush=True)

    rotation, _ = services.master_key_rotation_start(user=None, background=False)
    started = time.perf_counter()
    rotation = services.master_key_rotation_run(rotation_id=rotation.pk, batch_size=batch)
    seconds = time.perf_counter() - started
    assert rotation.status == "succeeded", rotation.error
    report.update(rotate_seconds=round(seconds, 3), rewrapped=rotation.rewrapped,
                  per_second=round(rotation.rewrapped / seconds), key_version=rotation.target_version)

    started = time.perf_counter()
    report["verified"] = vault_check(expected, rotation.target_version)
    report["verify_seconds"] = round(time.perf_counter() - started, 3)

    print(f"rotation of {rotation.rewrapped} secrets to v{rotation.target_version} "
          f"({connection.vendor}, batches of {batch}): {seconds:.2f} s, {report['per_second']} data keys/s")
    print(f"verified: all {report['verified']} decrypt to their values ({report['verify_seconds']} s)")
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
    os.environ["KF_DATA_DIR"] = str(work / "kf")  # a fresh key file, not the installation's
    os.environ.pop("KF_MASTER_KEY", None)
    os.environ.pop("REDIS_URL", None)  # everything runs in this process
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kfsite.settings")
    sys.path.insert(0, str(REPO))
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)


def vault_fill(count: int, workspaces: int) -> dict[tuple[str, str], str]:
    from accounts.models import User
    from accounts.services import workspace_create
    from secrets_app import crypto, services
    from secrets_app.models import KeyState, Secret

    user = User.objects.create_user(email="bench@example.com", password="bench-only-password-1")
    spaces = [workspace_create(owner=user, name=f"bench {i}", personal=i == 0) for i in range(workspaces)]
    services._keystate_ensure()
    version = KeyState.objects.get(pk=1).current_version
    key = crypto.keyring().key(version)
    rows, expected = [], {}
    for i in range(count):
        ws = spaces[i % len(spaces)]
        name, value = f"BENCH_{i:06d}", random.token_urlsafe(32)
        box = crypto.seal(value=value, ws_id=ws.pk, name=name, version=1, key_version=version, master_key=key)
        rows.append(Secret(workspace=ws, name=name, version=1, key_version=version, wrapped_key=box.wrapped_key,
                           ciphertext=box.ciphertext))
        expected[(ws.pk, name)] = value
    Secret.objects.bulk_create(rows, batch_size=1000)
    return expected


def vault_check(expected: dict[tuple[str, str], str], version: int) -> int:
    from secrets_app import services
    from secrets_app.models import Secret

    checked = 0
    for row in Secret.objects.all().iterator(chunk_size=2000):
        assert row.key_version == version, row.name
        assert services._open(row) == expected[(row.workspace_id, row.name)], row.name
        checked += 1
    assert checked == len(expected)
    return checked


if __name__ == "__main__":
    sys.exit(main())

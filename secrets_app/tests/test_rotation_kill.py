"""Killing the rotation. A real process (`manage.py secrets_rotate_master`, on this test database) rotates
a few thousand secrets; the test watches its committed progress in the database and SIGKILLs it at
several points, runs it again, and finally checks that every secret still decrypts to its value, that
sets racing the rotation won, and that no master key version was lost or added twice."""

import json
import os
import secrets as random
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from django.conf import settings as django_settings

from accounts.models import User, Workspace
from conftest import _test_database_url, wait_for
from secrets_app import crypto, services
from secrets_app.models import KeyState, MasterKey, Rotation, Secret

pytestmark = pytest.mark.django_db(transaction=True)

N = 3000
BATCH = 50
PAUSE = "0.03"  # seconds between batches: room to land kills at different batch counts


def bulk_vault(workspaces: list[Workspace], count: int) -> dict[tuple[str, str], str]:
    """`count` secrets on the current master version, sealed by the real crypto, inserted in bulk."""
    services._keystate_ensure()
    version = KeyState.objects.get(pk=1).current_version
    key = crypto.keyring().key(version)
    rows, expected = [], {}
    for i in range(count):
        ws = workspaces[i % len(workspaces)]
        name, value = f"S_{i:05d}", f"value-{i}-{random.token_hex(8)}"
        box = crypto.seal(value=value, ws_id=ws.pk, name=name, version=1, key_version=version, master_key=key)
        rows.append(Secret(workspace=ws, name=name, version=1, key_version=version, wrapped_key=box.wrapped_key,
                           ciphertext=box.ciphertext))
        expected[(ws.pk, name)] = value
    Secret.objects.bulk_create(rows, batch_size=500)
    return expected


def rotate_process(keys_dir: Path) -> subprocess.Popen:
    env = {**os.environ, "DATABASE_URL": _test_database_url(), "KF_DATA_DIR": str(keys_dir), "KF_MASTER_KEY": ""}
    return subprocess.Popen(
        [sys.executable, "manage.py", "secrets_rotate_master", "--batch-size", str(BATCH), "--pause", PAUSE],
        cwd=django_settings.BASE_DIR, env=env, start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def progress() -> int:
    return Rotation.objects.filter(status="running").values_list("rewrapped", flat=True).first() or 0


def kill_when(proc: subprocess.Popen, condition: Callable[[], bool]) -> None:
    def ready() -> bool:
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"the rotation ended before the kill point ({proc.returncode}): {out!r} {err[-2000:]!r}")
        return condition()

    wait_for(ready, timeout=120, interval=0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL


def finish(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()[-3000:]
    return json.loads(out)


def assert_all_decrypt(expected: dict[tuple[str, str], str], version: int) -> None:
    rows = list(Secret.objects.all())
    assert {(r.workspace_id, r.name) for r in rows} == set(expected)
    assert {r.key_version for r in rows} == {version}
    for row in rows:
        assert services._open(row) == expected[(row.workspace_id, row.name)], row.name


def test_sigkill_at_several_batch_counts_then_rerun_loses_nothing(keys_dir, owner, team, outsider):
    workspaces = [owner.workspaces.get(personal=True), team, outsider.workspaces.get(personal=True)]
    expected = bulk_vault(workspaces, N)
    seen: list[int] = []

    # Killed after its first batch, then twice more further along: each run resumes the same rotation.
    for threshold in (BATCH, 900):
        proc = rotate_process(keys_dir)
        kill_when(proc, lambda threshold=threshold: progress() >= threshold)
        seen.append(progress())
    assert seen[0] >= BATCH and seen[1] >= 900 and seen[1] < N
    rotation = Rotation.objects.get()
    assert rotation.status == "running" and rotation.target_version == 2 and rotation.total == N

    # Sets racing the third run: one on a row already re-wrapped, one on a row not reached yet (batches
    # go by id: the highest ids come last), a new secret and a deletion. The rotation must undo none.
    proc = rotate_process(keys_dir)
    wait_for(lambda: progress() >= 1500 or proc.poll() is not None, timeout=120, interval=0.005)
    done_row = Secret.objects.filter(key_version=2).order_by("id").first()
    late_rows = list(Secret.objects.filter(key_version=1).order_by("-id")[:2])
    assert done_row is not None and len(late_rows) == 2 and proc.poll() is None
    for row in (done_row, late_rows[0]):
        services.secret_set(user=owner, workspace=row.workspace, name=row.name, value=f"raced-{row.name}")
        expected[(row.workspace_id, row.name)] = f"raced-{row.name}"
    services.secret_set(user=owner, workspace=team, name="BRAND_NEW", value="raced-new")
    expected[(team.pk, "BRAND_NEW")] = "raced-new"
    services.secret_delete(user=owner, secret=late_rows[1])
    del expected[(late_rows[1].workspace_id, late_rows[1].name)]
    kill_when(proc, lambda: progress() >= 2200)
    seen.append(progress())
    assert seen == sorted(seen)  # committed progress never goes back

    result = finish(rotate_process(keys_dir))
    assert result["resumed"] is True and result["status"] == "succeeded" and result["key_version"] == 2
    assert result["retired"] == [1] and result["rotation_id"] == rotation.pk
    rotation.refresh_from_db()
    # Every committed batch counts once; the late raced row got the new key from its set and the deleted
    # one is gone, so the rotation re-wrapped all but those two.
    assert rotation.rewrapped == N - 2
    assert Rotation.objects.count() == 1
    assert_all_decrypt(expected, 2)
    assert Secret.objects.get(pk=done_row.pk).version == 2 and Secret.objects.get(pk=late_rows[0].pk).version == 2
    ring = crypto.keyring()
    assert sorted(ring.keys) == [1, 2] and ring.retired == {1}  # reruns added no key
    assert MasterKey.objects.get(version=1).retired_at is not None
    assert KeyState.objects.get(pk=1).rotation is None and KeyState.objects.get(pk=1).current_version == 2


def test_sigkill_right_at_the_start_then_rerun(keys_dir, owner):
    """Killed as soon as the rotation exists: before, during or just after the new key is written to
    the file and recorded. The rerun reuses that key and finishes."""
    expected = bulk_vault([owner.workspaces.get(personal=True)], 600)
    proc = rotate_process(keys_dir)
    kill_when(proc, Rotation.objects.exists)
    assert progress() < 600
    result = finish(rotate_process(keys_dir))
    assert result["resumed"] is True and result["status"] == "succeeded" and result["key_version"] == 2
    assert_all_decrypt(expected, 2)
    assert sorted(crypto.keyring().keys) == [1, 2]


def test_a_second_rotation_after_a_killed_one_retires_both_old_versions(keys_dir, owner, team):
    expected = bulk_vault([owner.workspaces.get(personal=True), team], 1000)
    proc = rotate_process(keys_dir)
    kill_when(proc, lambda: progress() >= 300)
    finish(rotate_process(keys_dir))  # finishes v1 → v2
    admin: User = owner
    services.secret_set(user=admin, workspace=team, name="S_00001", value="changed")
    expected[(team.pk, "S_00001")] = "changed"
    proc = rotate_process(keys_dir)  # a new rotation: v2 → v3
    kill_when(proc, lambda: Rotation.objects.filter(target_version=3).exists() and progress() >= 100)
    result = finish(rotate_process(keys_dir))
    assert result["key_version"] == 3 and result["resumed"] is True and result["retired"] == [2]
    assert_all_decrypt(expected, 3)
    ring = crypto.keyring()
    assert sorted(ring.keys) == [1, 2, 3] and ring.retired == {1, 2}
    assert list(MasterKey.objects.filter(retired_at__isnull=True).values_list("version", flat=True)) == [3]


def test_a_killed_rotation_is_resumed_by_the_api_through_the_task_runner(operator, owner, client_for, task_runner,
                                                                         monkeypatch):
    """The runner dies; the next rotate-master call sees the rotation stalled, answers with its progress
    (started: false) and queues it again; the real runner (a Celery worker on Postgres+Redis, the
    in-process pool otherwise) finishes it. The runner reads this installation's key file, so this
    test uses the session's data folder rather than a private one."""
    expected = bulk_vault([owner.workspaces.get(personal=True)], 1500)
    proc = rotate_process(Path(django_settings.KF_DATA_DIR))
    kill_when(proc, lambda: progress() >= 300)
    rotation = Rotation.objects.get()
    monkeypatch.setattr(services, "ROTATION_STALL_SECONDS", 0)  # "stalled" at once, not after 30 s
    response = client_for(operator).post("/api/secrets/rotate-master")
    assert response.status_code == 202, response.content
    body = response.json()
    assert body["started"] is False and body["rotation_id"] == rotation.pk and body["rewrapped"] >= 300
    assert body["key_version"] == rotation.target_version and body["total"] == 1500
    wait_for(lambda: Rotation.objects.filter(pk=rotation.pk, status="succeeded").exists(), timeout=120)
    assert_all_decrypt(expected, rotation.target_version)
    assert Rotation.objects.get(pk=rotation.pk).rewrapped == 1500

"""Services: secrets_for_use (the shell's door to values) and the rotation's rules — one at a time,
racing sets never lost, tampered rows kept and reported, env keys, retirement."""

import json
import threading
from datetime import timedelta

import pytest
from django.db import connections
from django.utils import timezone

from accounts.models import AuditRecord
from api.errors import Forbidden, InvalidRequest, NotFound
from secrets_app import crypto, services
from secrets_app.crypto import MasterKeyUnavailable
from secrets_app.models import KeyState, MasterKey, Rotation, Secret
from secrets_app.tests.conftest import random_key_b64

pytestmark = pytest.mark.django_db(transaction=True)


def value_of(name: str, **filters: object) -> str:
    return services._open(Secret.objects.get(name=name, **filters))


# --- secrets_for_use -----------------------------------------------------------------------------

def test_secrets_for_use_gives_values_to_members(team, owner, member):
    services.secret_set(user=owner, workspace=team, name="DB_URL", value="postgres://x")
    services.secret_set(user=owner, workspace=team, name="TOKEN", value="t0k3n")
    got = services.secrets_for_use(user=member, workspace=team, names=["TOKEN", "DB_URL", "TOKEN"])
    assert got == {"TOKEN": "t0k3n", "DB_URL": "postgres://x"}
    record = AuditRecord.objects.get(action="secret.use")
    assert record.actor == member and record.workspace == team and record.meta["names"] == ["TOKEN", "DB_URL"]
    assert "t0k3n" not in json.dumps(record.meta) + record.target


def test_secrets_for_use_refuses_viewers_and_outsiders(team, owner, viewer, outsider):
    services.secret_set(user=owner, workspace=team, name="TOKEN", value="t0k3n")
    with pytest.raises(Forbidden):
        services.secrets_for_use(user=viewer, workspace=team, names=["TOKEN"])
    with pytest.raises(NotFound):
        services.secrets_for_use(user=outsider, workspace=team, names=["TOKEN"])
    assert not AuditRecord.objects.filter(action="secret.use").exists()


def test_secrets_for_use_lists_every_unknown_or_invalid_name(team, owner, member):
    services.secret_set(user=owner, workspace=team, name="TOKEN", value="t0k3n")
    with pytest.raises(InvalidRequest) as info:
        services.secrets_for_use(user=member, workspace=team, names=["TOKEN", "MISSING", "bad-name", 7])
    problems = info.value.details["secrets"]
    assert "MISSING: no such secret" in problems
    assert "bad-name: not a valid secret name" in problems and len(problems) == 3
    assert "t0k3n" not in info.value.message
    with pytest.raises(InvalidRequest):
        services.secrets_for_use(user=member, workspace=team, names="TOKEN")  # type: ignore[arg-type]
    assert services.secrets_for_use(user=member, workspace=team, names=[]) == {}
    assert not AuditRecord.objects.filter(action="secret.use").exists()


def test_secrets_for_use_does_not_cross_workspaces(team, owner, member):
    personal = owner.workspaces.get(personal=True)
    services.secret_set(user=owner, workspace=personal, name="MINE", value="x")
    with pytest.raises(InvalidRequest) as info:
        services.secrets_for_use(user=member, workspace=team, names=["MINE"])
    assert info.value.details == {"secrets": ["MINE: no such secret"]}


# --- rotation rules ------------------------------------------------------------------------------

def test_one_rotation_at_a_time(keys_dir, owner):
    ws = owner.workspaces.get(personal=True)
    services.secret_set(user=owner, workspace=ws, name="A", value="a")
    first, started = services.master_key_rotation_start(user=None, background=False)
    assert started and first.target_version == 2 and first.total == 1
    second, started_again = services.master_key_rotation_start(user=None, background=False)
    assert not started_again and second.pk == first.pk
    assert sorted(crypto.keyring().keys) == [1, 2]  # no extra key for the refused start
    services.master_key_rotation_run(rotation_id=first.pk)
    third, started = services.master_key_rotation_start(user=None, background=False)
    assert started and third.target_version == 3


def test_concurrent_starts_get_one_rotation(keys_dir, owner):
    """Two processes' worth of callers at once: the conditional UPDATE lets exactly one through."""
    ws = owner.workspaces.get(personal=True)
    services.secret_set(user=owner, workspace=ws, name="A", value="a")
    results: list[tuple[str, bool]] = []
    barrier = threading.Barrier(4)

    def start() -> None:
        barrier.wait()
        try:
            rotation, started = services.master_key_rotation_start(user=None, background=False)
            results.append((rotation.pk, started))
        finally:
            connections.close_all()

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4 and sum(started for _, started in results) == 1
    assert len({pk for pk, _ in results}) == 1
    assert Rotation.objects.filter(status="running").count() == 1
    assert sorted(crypto.keyring().keys) == [1, 2]


def test_a_set_after_the_switch_uses_the_new_version(keys_dir, owner):
    ws = owner.workspaces.get(personal=True)
    services.secret_set(user=owner, workspace=ws, name="OLD", value="old")
    rotation, _ = services.master_key_rotation_start(user=None, background=False)
    new, _ = services.secret_set(user=owner, workspace=ws, name="NEW", value="new")
    assert new.key_version == rotation.target_version == 2
    assert Secret.objects.get(name="OLD").key_version == 1  # not re-wrapped yet, still readable
    assert value_of("OLD") == "old"


def test_a_racing_set_is_never_overwritten_by_a_stale_batch(keys_dir, owner):
    """The batch read the row, then a set replaced it: the batch's UPDATE must match nothing."""
    ws = owner.workspaces.get(personal=True)
    services.secret_set(user=owner, workspace=ws, name="RACE", value="before")
    services.secret_set(user=owner, workspace=ws, name="CALM", value="calm")
    rotation, _ = services.master_key_rotation_start(user=None, background=False)
    stale = list(Secret.objects.filter(key_version__lt=2).order_by("id").values_list(
        "id", "workspace_id", "name", "version", "key_version", "wrapped_key"))
    services.secret_set(user=owner, workspace=ws, name="RACE", value="after")  # commits between read and write
    done = services._rewrap_batch(rotation=rotation, rows=stale, ring=crypto.keyring(),
                                  to_key=crypto.keyring().key(2), failed={})
    assert done == 1  # CALM only
    assert value_of("RACE") == "after" and value_of("CALM") == "calm"
    row = Secret.objects.get(name="RACE")
    assert row.version == 2 and row.key_version == 2
    finished = services.master_key_rotation_run(rotation_id=rotation.pk)
    assert finished.status == "succeeded" and finished.rewrapped == 1 and finished.retired == [1]


def test_a_tampered_wrapped_key_fails_the_rotation_without_losing_anything(keys_dir, owner):
    ws = owner.workspaces.get(personal=True)
    for name in ("GOOD_1", "BROKEN", "GOOD_2"):
        services.secret_set(user=owner, workspace=ws, name=name, value=name.lower())
    broken = Secret.objects.get(name="BROKEN")
    Secret.objects.filter(pk=broken.pk).update(wrapped_key=bytes(broken.wrapped_key)[:-1] + b"\x00")
    rotation, _ = services.master_key_rotation_start(user=None, background=False)
    done = services.master_key_rotation_run(rotation_id=rotation.pk)
    assert done.status == "failed" and done.rewrapped == 2
    assert done.failed == [f"{ws.pk}/BROKEN"] and "BROKEN" in done.error
    assert Secret.objects.get(name="BROKEN").key_version == 1  # left as it was
    assert not MasterKey.objects.filter(version=1, retired_at__isnull=False).exists()  # still in use
    assert 1 not in crypto.keyring().retired
    assert value_of("GOOD_1") == "good_1" and value_of("GOOD_2") == "good_2"
    assert KeyState.objects.get(pk=1).rotation is None  # the lock is free again
    assert AuditRecord.objects.filter(action="master_key.rotation_failed").exists()


def test_retirement_happens_only_when_nothing_uses_the_version(keys_dir, owner):
    ws = owner.workspaces.get(personal=True)
    services.secret_set(user=owner, workspace=ws, name="A", value="a")
    rotation, _ = services.master_key_rotation_start(user=None, background=False)
    done = services.master_key_rotation_run(rotation_id=rotation.pk, batch_size=1)
    assert done.status == "succeeded" and done.retired == [1]
    ring = crypto.keyring()
    assert ring.retired == {1} and 1 in ring.keys  # marked, material kept for old backups
    assert MasterKey.objects.get(version=1).retired_at is not None
    assert MasterKey.objects.get(version=2).retired_at is None
    assert value_of("A") == "a"


def test_rotation_with_kf_master_key(settings, owner):
    v1, v2 = random_key_b64(), random_key_b64()
    settings.KF_MASTER_KEY = f"v1:{v1}"
    ws = owner.workspaces.get(personal=True)
    services.secret_set(user=owner, workspace=ws, name="ENV", value="env-value")
    assert Secret.objects.get(name="ENV").key_version == 1
    # Nothing newer configured: the rotation has nothing to do, and says so by its numbers.
    rotation, _ = services.master_key_rotation_start(user=None, background=False)
    done = services.master_key_rotation_run(rotation_id=rotation.pk)
    assert done.status == "succeeded" and done.target_version == 1 and done.total == 0
    settings.KF_MASTER_KEY = f"v1:{v1},v2:{v2}"
    rotation, _ = services.master_key_rotation_start(user=None, background=False)
    done = services.master_key_rotation_run(rotation_id=rotation.pk)
    assert done.target_version == 2 and done.rewrapped == 1 and done.retired == [1]
    settings.KF_MASTER_KEY = f"v2:{v2}"  # the operator drops the retired key
    assert value_of("ENV") == "env-value"
    # Going back to an older key only is refused clearly, and releases the lock.
    settings.KF_MASTER_KEY = f"v1:{v1}"
    with pytest.raises(MasterKeyUnavailable):
        services.master_key_rotation_start(user=None, background=False)
    assert KeyState.objects.get(pk=1).rotation is None
    with pytest.raises(MasterKeyUnavailable):
        services.secret_set(user=owner, workspace=ws, name="ENV", value="x")
    with pytest.raises(MasterKeyUnavailable):
        value_of("ENV")


def test_a_stalled_rotation_is_claimed_once(keys_dir, owner, settings):
    ws = owner.workspaces.get(personal=True)
    services.secret_set(user=owner, workspace=ws, name="A", value="a")
    rotation, _ = services.master_key_rotation_start(user=None, background=False)
    assert not services._rotation_claim_stalled(rotation)  # fresh
    Rotation.objects.filter(pk=rotation.pk).update(heartbeat_at=timezone.now() - timedelta(minutes=5))
    rotation.refresh_from_db()
    assert services._rotation_claim_stalled(rotation)
    assert not services._rotation_claim_stalled(rotation)  # the heartbeat moved: one claim only

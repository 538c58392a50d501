"""Envelope encryption and the master keys: bindings, tampering, the env format, the key file."""

import base64
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings as django_settings

from secrets_app import crypto
from secrets_app.crypto import MasterKeyUnavailable, SecretCorrupted
from secrets_app.tests.conftest import random_key_b64

VALUE = "s3cr3t-välue-🔑"
MASTER = os.urandom(32)
OTHER = os.urandom(32)


def sealed(value: str = VALUE, **over: object) -> tuple[crypto.Sealed, dict]:
    facts = {"ws_id": "ws_A", "name": "API_TOKEN", "version": 3, "key_version": 2, **over}
    return crypto.seal(value=value, master_key=MASTER, **facts), facts


def opened(box: crypto.Sealed, facts: dict, *, master_key: bytes = MASTER) -> str:
    return crypto.open_sealed(wrapped_key=box.wrapped_key, ciphertext=box.ciphertext, master_key=master_key, **facts)


def test_seal_round_trips_and_every_seal_is_fresh():
    box, facts = sealed()
    assert opened(box, facts) == VALUE
    again, _ = sealed()
    assert again.ciphertext != box.ciphertext and again.wrapped_key != box.wrapped_key  # new data key, new nonces
    assert VALUE.encode() not in box.ciphertext
    big = "x" * 65536
    box, facts = sealed(big)
    assert opened(box, facts) == big


@pytest.mark.parametrize("field, other", [("ws_id", "ws_B"), ("name", "OTHER_TOKEN"), ("version", 4),
                                          ("key_version", 1)])
def test_associated_data_binds_workspace_name_and_versions(field, other):
    box, facts = sealed()
    with pytest.raises(SecretCorrupted) as info:
        opened(box, {**facts, field: other})
    assert info.value.status_code == 409 and VALUE not in info.value.message


def flip(blob: bytes, index: int) -> bytes:
    data = bytearray(blob)
    data[index] ^= 0x01
    return bytes(data)


@pytest.mark.parametrize("part, index", [("ciphertext", 0), ("ciphertext", 14), ("ciphertext", -1),
                                         ("wrapped_key", 0), ("wrapped_key", 20), ("wrapped_key", -1)])
def test_tampering_with_any_byte_is_detected(part, index):
    box, facts = sealed()
    tampered = crypto.Sealed(**{**box.__dict__, part: flip(getattr(box, part), index)})
    with pytest.raises(SecretCorrupted) as info:
        opened(tampered, facts)
    assert info.value.details["part"] == part
    assert VALUE not in info.value.message and "API_TOKEN" in info.value.message


@pytest.mark.parametrize("part", ["ciphertext", "wrapped_key"])
def test_truncated_or_empty_blobs_are_detected(part):
    box, facts = sealed()
    for cut in (b"", getattr(box, part)[:11], getattr(box, part)[:-1]):
        with pytest.raises(SecretCorrupted):
            opened(crypto.Sealed(**{**box.__dict__, part: cut}), facts)


def test_a_ciphertext_moved_to_another_secret_does_not_open():
    a, _ = sealed("value-of-a", name="A")
    b, facts_b = sealed("value-of-b", name="B")
    with pytest.raises(SecretCorrupted):
        opened(crypto.Sealed(wrapped_key=b.wrapped_key, ciphertext=a.ciphertext), facts_b)


def test_wrong_master_key_is_detected():
    box, facts = sealed()
    with pytest.raises(SecretCorrupted):
        opened(box, facts, master_key=OTHER)


def test_rewrap_changes_only_the_wrapping():
    box, facts = sealed()
    new_wrapped = crypto.rewrap(wrapped_key=box.wrapped_key, ws_id="ws_A", name="API_TOKEN", version=3,
                                from_version=2, from_key=MASTER, to_version=5, to_key=OTHER)
    moved = crypto.Sealed(wrapped_key=new_wrapped, ciphertext=box.ciphertext)
    assert opened(moved, {**facts, "key_version": 5}, master_key=OTHER) == VALUE
    with pytest.raises(SecretCorrupted):
        opened(moved, {**facts, "key_version": 5}, master_key=MASTER)
    with pytest.raises(SecretCorrupted):
        opened(moved, facts, master_key=OTHER)  # the new wrap binds the new version


# --- KF_MASTER_KEY -------------------------------------------------------------------------------

def test_env_keys_are_parsed(settings):
    one, two = random_key_b64(), random_key_b64()
    settings.KF_MASTER_KEY = f" v1:{one} , v7:{two} "
    ring = crypto.keyring()
    assert ring.source == "env" and sorted(ring.keys) == [1, 7] and ring.newest == 7
    assert ring.key(7) == base64.b64decode(two)
    with pytest.raises(MasterKeyUnavailable) as info:
        ring.key(3)
    assert "v3" in info.value.message and one not in info.value.message


@pytest.mark.parametrize("bad", ["v1:notbase64!!", "v1:" + "QUJD", "1:{k}", "v0:{k}", "v1:{k},v1:{k}", ",",
                                 "v1:{k} retired x", "v1 {k}", "vx:{k}"])
def test_malformed_env_keys_fail_clearly_without_echoing_them(settings, bad):
    key = random_key_b64()
    settings.KF_MASTER_KEY = bad.replace("{k}", key)
    with pytest.raises(MasterKeyUnavailable) as info:
        crypto.keyring()
    assert "KF_MASTER_KEY" in info.value.message and key not in info.value.message
    assert info.value.status_code == 409


# --- the key file --------------------------------------------------------------------------------

def test_key_file_is_created_private_on_first_use(keys_dir):
    ring = crypto.keyring()
    path = keys_dir / crypto.KEY_FILE_NAME
    assert ring.source == "file" and list(ring.keys) == [1] and ring.retired == frozenset()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert crypto.keyring().keys == ring.keys  # read back, not made again
    assert [p.name for p in keys_dir.iterdir() if p.name.endswith(".tmp")] == []


def test_processes_starting_together_agree_on_one_key(keys_dir):
    script = ("import os, sys; os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'kfsite.settings'); import django; "
              "django.setup(); from secrets_app import crypto; import base64; "
              "sys.stdout.write(base64.b64encode(crypto.keyring().key(1)).decode())")
    env = {**os.environ, "KF_DATA_DIR": str(keys_dir), "KF_MASTER_KEY": ""}
    env.pop("DATABASE_URL", None)  # settings only; no database is touched
    procs = [subprocess.Popen([sys.executable, "-c", script], cwd=django_settings.BASE_DIR, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(6)]
    outputs = {p.communicate(timeout=60)[0].decode() for p in procs}
    assert all(p.returncode == 0 for p in procs)
    assert len(outputs) == 1 and len(base64.b64decode(outputs.pop())) == 32
    assert list(crypto.keyring().keys) == [1]


def test_adding_versions_keeps_the_old_ones_and_retiring_keeps_the_material(keys_dir):
    first = crypto.keyring().key(1)
    assert crypto.key_file_add_version() == 2
    assert crypto.key_file_add_version() == 3
    ring = crypto.keyring()  # this process notices the file changed
    assert sorted(ring.keys) == [1, 2, 3] and ring.key(1) == first and ring.newest == 3
    crypto.key_file_mark_retired({1, 2})
    ring = crypto.keyring()
    assert ring.retired == {1, 2} and ring.key(1) == first
    text = (keys_dir / crypto.KEY_FILE_NAME).read_text()
    assert "v1:" in text and " retired" in text
    path = keys_dir / crypto.KEY_FILE_NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in keys_dir.iterdir() if p.name.endswith(".tmp")] == []


def test_a_damaged_key_file_fails_clearly(keys_dir):
    crypto.keyring()
    path: Path = keys_dir / crypto.KEY_FILE_NAME
    path.write_text(path.read_text() + "v2:tooshort\n")
    with pytest.raises(MasterKeyUnavailable) as info:
        crypto.keyring()
    assert "entry 2" in info.value.message and "tooshort" not in info.value.message

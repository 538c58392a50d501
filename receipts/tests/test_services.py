"""receipt_append: what a receipt holds, the chain and the Merkle tree it builds, the signed heads, the
signing key outside the database, and serialized appends under concurrency (real Postgres or SQLite)."""

import base64
import hashlib
import json
import os
import stat
import threading
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import rfc8785
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from django.db import connection

from accounts.services import workspace_create
from api.errors import Conflict, InvalidRequest, NotFound
from receipts import signing
from receipts.canonical import GENESIS_HASH
from receipts.models import Receipt, ReceiptLog
from receipts.services import receipt_append
from receipts.tests.conftest import APP_PY, make_project, new_key_b64, run_facts
from receipts.tests.test_merkle import ref_mth
from receipts.verify_bundle import head_message, key_id_of

pytestmark = pytest.mark.django_db


def public_key_of(seed_b64: str) -> bytes:
    private = Ed25519PrivateKey.from_private_bytes(base64.b64decode(seed_b64))
    return private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def check_log(ws_id: str, seed_b64: str) -> list[Receipt]:
    """The log as an outsider would check it, from the rows alone, with the RFC's own recursion."""
    rows = list(Receipt.objects.filter(workspace_id=ws_id).order_by("seq"))
    public = public_key_of(seed_b64)
    prev = GENESIS_HASH
    bodies: list[bytes] = []
    for expected_seq, row in enumerate(rows, start=1):
        body = bytes(row.body)
        document = json.loads(body)
        assert row.seq == document["seq"] == expected_seq
        assert rfc8785.dumps(document) == body  # exactly the canonical bytes
        assert document["prev_hash"] == prev
        assert row.hash == hashlib.sha256(b"\x00" + body).hexdigest()
        bodies.append(body)
        assert row.root_hash == ref_mth(bodies).hex()
        message = head_message(ws_id=ws_id, tree_size=row.seq, root_hash=row.root_hash,
                               at=row.appended_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
        Ed25519PublicKey.from_public_bytes(public).verify(base64.b64decode(row.signature), message)
        assert row.key_id == key_id_of(public)
        prev = row.hash
    log = ReceiptLog.objects.get(workspace_id=ws_id)
    assert log.tree_size == len(rows) and log.last_hash == prev
    assert log.root_hash == ref_mth(bodies).hex() == rows[-1].root_hash
    assert log.signature == rows[-1].signature
    return rows


def test_a_receipt_holds_the_runs_facts_as_hashes_and_never_the_task(facts_for, project, owner, signing_key_b64):
    facts = facts_for()
    receipt = receipt_append(facts=facts)
    document = json.loads(bytes(receipt.body))
    assert document["seq"] == 1 and document["prev_hash"] == GENESIS_HASH and document["v"] == 1
    assert document["run_id"] == facts["run_id"] and document["ws_id"] == project.workspace_id
    assert document["project_id"] == project.pk and document["user_id"] == owner.pk
    assert document["task_sha256"] == hashlib.sha256(facts["task"].encode()).hexdigest()
    assert facts["task"].encode() not in bytes(receipt.body)
    assert document["usage"] == {"input_tokens": 18234, "output_tokens": 1290, "usd": "0.003509"}
    assert document["tool_calls"][0] == {
        "name": "read_file", "arguments_sha256": hashlib.sha256(b'{"path": "app.py"}').hexdigest(),
        "result_sha256": hashlib.sha256(APP_PY.encode()).hexdigest()}
    assert APP_PY.encode() not in bytes(receipt.body)  # tool results are hashed, never kept
    assert document["files"][1] == {"path": "tests/test_app.py", "before_sha256": None,
                                    "after_sha256": facts["files"][1]["after_sha256"]}
    assert document["snapshots"] == {"before": facts["snapshot_before"], "after": facts["snapshot_after"]}
    assert document["started_at"] == "2026-03-01T10:00:00.000000Z"
    assert document["ended_at"] == "2026-03-01T10:02:31.250000Z"
    assert document["status"] == "succeeded" and document["model"] == "gpt-4o-mini"
    # Findings carry fingerprints of the project's file as it is now.
    todo, secret = document["findings"]
    assert todo["rule"] == "todo" and len(todo["fingerprint"]) == 64 and len(todo["line_sha256"]) == 64
    assert todo["line_sha256"] == hashlib.sha256(b"# TODO: cache the parsed config").hexdigest()
    assert secret["fingerprint"] != todo["fingerprint"]
    check_log(project.workspace_id, signing_key_b64)


def test_appends_chain_and_sign_every_head(facts_for, project, signing_key_b64):
    for i in range(13):
        receipt_append(facts=facts_for(status=["succeeded", "failed", "cancelled", "budget_exceeded"][i % 4],
                                       usd=Decimal("0.5") * i))
    rows = check_log(project.workspace_id, signing_key_b64)
    assert [r.seq for r in rows] == list(range(1, 14))
    # The perfect Merkle nodes stored with each receipt: one per trailing 1 bit of its leaf index.
    assert [len(r.subtree_hashes) for r in rows] == [((n ^ (n + 1)).bit_length() - 1) for n in range(13)]


def test_each_workspace_has_its_own_log(facts_for, project, owner, tmp_path, signing_key_b64):
    team = workspace_create(owner=owner, name="Acme")
    other = make_project(tmp_path / "team-demo", team, owner)
    receipt_append(facts=facts_for())
    first = receipt_append(facts=run_facts(other, user=owner))
    receipt_append(facts=facts_for())
    assert first.seq == 1 and json.loads(bytes(first.body))["prev_hash"] == GENESIS_HASH
    assert [r.seq for r in check_log(project.workspace_id, signing_key_b64)] == [1, 2]
    assert [r.seq for r in check_log(team.pk, signing_key_b64)] == [1]


def test_append_is_idempotent_per_run(facts_for, project, signing_key_b64):
    facts = facts_for()
    first = receipt_append(facts=facts)
    again = receipt_append(facts={**facts, "status": "failed"})
    assert again.pk == first.pk and Receipt.objects.count() == 1
    assert ReceiptLog.objects.get(workspace_id=project.workspace_id).tree_size == 1


def test_a_run_id_of_another_workspace_is_a_conflict(facts_for, owner, tmp_path, signing_key_b64):
    facts = facts_for()
    receipt_append(facts=facts)
    other = make_project(tmp_path / "elsewhere", workspace_create(owner=owner, name="Other"), owner)
    with pytest.raises(Conflict):
        receipt_append(facts=run_facts(other, user=owner, run_id=facts["run_id"]))
    assert Receipt.objects.count() == 1 and not ReceiptLog.objects.filter(workspace=other.workspace).exclude(tree_size=0).exists()


def test_malformed_facts_are_refused_with_every_field_named(facts_for, signing_key_b64):
    facts = facts_for(status="done", input_tokens=-1, usd="lots", started_at="yesterday", run_id="42",
                      files=[{"path": "a", "before_sha256": "xyz", "after_sha256": None}],
                      tool_calls=[{"name": "x", "arguments": "{}", "result": None}],
                      findings=[{"path": "a", "line": 1, "rule": "r", "severity": "fatal", "message": ""}])
    with pytest.raises(InvalidRequest) as caught:
        receipt_append(facts=facts)
    assert set(caught.value.details) >= {"status", "input_tokens", "usd", "started_at", "run_id",
                                         "files[0].before_sha256", "tool_calls[0].result", "findings[0].severity"}
    assert not Receipt.objects.exists()
    with pytest.raises(NotFound):
        receipt_append(facts=facts_for(ws_id="ws_doesnotexist"))


def test_odd_but_valid_facts_make_canonical_receipts(facts_for, project, signing_key_b64):
    """Unicode, control characters, a file name that was not UTF-8, parsed arguments, aware datetimes."""
    receipt = receipt_append(facts=facts_for(
        model="modèle\u2028x", user_id=None, task="",
        tool_calls=[{"name": "write_file", "arguments": {"path": "é.txt", "n": 1}, "result": "\x00\x1f"}],
        files=[{"path": "bad-\udcff-name.txt", "before_sha256": None, "after_sha256": None}],
        started_at=datetime(2026, 3, 1, 12, 0, tzinfo=timezone(timedelta(hours=2))),
        ended_at=datetime(2026, 3, 1, 10, 5, 1, 7, tzinfo=UTC), findings=[]))
    document = json.loads(bytes(receipt.body))
    assert rfc8785.dumps(document) == bytes(receipt.body)
    assert document["started_at"] == "2026-03-01T10:00:00.000000Z"
    assert document["ended_at"] == "2026-03-01T10:05:01.000007Z"
    assert document["files"][0]["path"] == "bad-\\udcff-name.txt"
    assert document["tool_calls"][0]["arguments_sha256"] == hashlib.sha256(
        rfc8785.dumps({"path": "é.txt", "n": 1})).hexdigest()
    assert document["user_id"] is None and document["model"] == "modèle\u2028x"
    check_log(project.workspace_id, signing_key_b64)


def test_a_run_cancelled_before_it_started(facts_for, project, signing_key_b64):
    receipt = receipt_append(facts=facts_for(status="cancelled", started_at=None, tool_calls=[], files=[],
                                             findings=[], input_tokens=0, output_tokens=0, usd="0",
                                             snapshot_before="", snapshot_after=""))
    document = json.loads(bytes(receipt.body))
    assert document["started_at"] is None and document["status"] == "cancelled"
    assert document["snapshots"] == {"before": "", "after": ""} and document["usage"]["usd"] == "0"
    with pytest.raises(InvalidRequest) as caught:
        receipt_append(facts=facts_for(ended_at=None))
    assert "ended_at" in caught.value.details
    check_log(project.workspace_id, signing_key_b64)


def test_findings_without_a_readable_line_have_no_fingerprint(facts_for, project, signing_key_b64):
    receipt = receipt_append(facts=facts_for(findings=[
        {"path": "gone.py", "line": 3, "rule": "todo", "severity": "info", "message": "m"},
        {"path": "app.py", "line": 999, "rule": "todo", "severity": "info", "message": "m"},
        {"path": "../outside.py", "line": 1, "rule": "todo", "severity": "info", "message": "m"}]))
    findings = json.loads(bytes(receipt.body))["findings"]
    assert [(f["fingerprint"], f["line_sha256"]) for f in findings] == [(None, None)] * 3


# --- the signing key -------------------------------------------------------------------------------

def test_the_key_file_is_created_once_private_and_reused(settings, tmp_path, facts_for, owner):
    settings.KF_SIGNING_KEY = ""
    settings.KF_DATA_DIR = tmp_path / "data"
    receipt = receipt_append(facts=facts_for())
    path = tmp_path / "data" / signing.KEY_FILE_NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    seed = next(line for line in path.read_text().splitlines() if not line.startswith("#"))
    assert receipt.key_id == key_id_of(public_key_of(seed)) == signing.signing_key().key_id
    assert seed not in json.dumps([bytes(r.body).decode() for r in Receipt.objects.all()])
    check_log(receipt.workspace_id, seed)
    # Concurrent first uses in fresh folders all end up with one key.
    folder = tmp_path / "race"
    folder.mkdir()
    keys: list[str] = []
    threads = [threading.Thread(target=lambda: (signing.key_file_create(folder / "k"),
                                                keys.append((folder / "k").read_text()))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(keys)) == 1 and [p.name for p in folder.iterdir()] == ["k"]


def test_a_configured_key_is_used_and_a_bad_one_refused(settings, facts_for, signing_key_b64):
    receipt = receipt_append(facts=facts_for())
    assert receipt.key_id == key_id_of(public_key_of(signing_key_b64))
    settings.KF_SIGNING_KEY = base64.b64encode(os.urandom(16)).decode()
    with pytest.raises(signing.SigningKeyUnavailable):
        receipt_append(facts=facts_for())
    settings.KF_SIGNING_KEY = new_key_b64()
    assert receipt_append(facts=facts_for()).key_id != receipt.key_id


# --- concurrency -----------------------------------------------------------------------------------

@pytest.mark.django_db(transaction=True)
def test_concurrent_appends_in_one_workspace_are_dense_and_chained(tmp_path: Path, owner, settings: Any):
    """Threads, each with its own database connection, append to one log at once."""
    settings.KF_SIGNING_KEY = seed = new_key_b64()
    project = make_project(tmp_path / "busy", owner.workspaces.get(personal=True), owner)
    threads_count, per_thread = 6, 5
    barrier = threading.Barrier(threads_count)
    errors: list[BaseException] = []
    seqs: list[int] = []

    def worker() -> None:
        try:
            barrier.wait()
            for _ in range(per_thread):
                seqs.append(receipt_append(facts=run_facts(project, user=owner)).seq)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(threads_count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    total = threads_count * per_thread
    assert sorted(seqs) == list(range(1, total + 1))
    assert len(check_log(project.workspace_id, seed)) == total


@pytest.mark.django_db(transaction=True)
def test_the_same_run_appended_at_once_gets_one_receipt(tmp_path: Path, owner, settings: Any):
    settings.KF_SIGNING_KEY = seed = new_key_b64()
    project = make_project(tmp_path / "twice", owner.workspaces.get(personal=True), owner)
    facts = run_facts(project, user=owner)
    barrier = threading.Barrier(4)
    got: list[str] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            barrier.wait()
            got.append(receipt_append(facts=facts).pk)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(set(got)) == 1 and len(got) == 4
    assert len(check_log(project.workspace_id, seed)) == 1

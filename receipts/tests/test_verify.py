"""log_verify against a log tampered with directly in the database: edited, removed, swapped, inserted
receipts, forged heads, edited Merkle nodes, and a complete rewrite by someone without the key."""

import base64
import json
from typing import Any

import pytest
import rfc8785
from django.db import connection

from api.errors import Conflict
from receipts import merkle
from receipts.audit import log_verify
from receipts.models import Receipt, ReceiptLog
from receipts.selectors import receipt_bundle
from receipts.services import receipt_append
from receipts.signing import signing_key
from receipts.tests.conftest import new_key_b64
from receipts.verify_bundle import head_message, inclusion_root, signature_valid

pytestmark = pytest.mark.django_db

SIZE = 8


@pytest.fixture
def log(facts_for) -> list[Receipt]:
    return [receipt_append(facts=facts_for()) for _ in range(SIZE)]


def row(seq: int) -> Receipt:
    return Receipt.objects.get(seq=seq)


def verify(seq: int) -> dict[str, Any]:
    return log_verify(receipt=row(seq))


def document(seq: int) -> dict[str, Any]:
    return json.loads(bytes(row(seq).body))


def write_body(seq: int, doc: dict[str, Any], *, rehash: bool) -> None:
    body = rfc8785.dumps(doc)
    changes: dict[str, Any] = {"body": body}
    if rehash:
        changes["hash"] = merkle.leaf_hash(body).hex()
    Receipt.objects.filter(seq=seq).update(**changes)


def rewrite_from(seq: int, change: dict[str, Any]) -> None:
    """What someone with database access but without the key can do best: change receipt `seq` and
    recompute every hash, link, Merkle node and root after it (the signatures stay the old ones)."""
    frontier = merkle.Frontier()
    prev = "0" * 64
    for current in Receipt.objects.order_by("seq"):
        doc = json.loads(bytes(current.body))
        if current.seq == seq:
            doc.update(change)
        doc["prev_hash"] = prev
        body = rfc8785.dumps(doc)
        leaf = merkle.leaf_hash(body)
        completed = frontier.append(leaf)
        Receipt.objects.filter(pk=current.pk).update(body=body, hash=leaf.hex(), root_hash=frontier.root().hex(),
                                                     subtree_hashes=[n.hex() for n in completed])
        prev = leaf.hex()
    ReceiptLog.objects.update(root_hash=frontier.root().hex(), last_hash=prev,
                              frontier=[h.hex() for h in frontier.hashes])


def assert_bad(result: dict[str, Any], seq: int, *words: str) -> None:
    assert result["ok"] is False, result
    assert result["first_bad_seq"] == seq, result
    for word in words:
        assert word in result["reason"], result["reason"]


def test_an_intact_log_verifies_with_a_proof_in_the_newest_signed_head(log):
    public = signing_key().public
    for receipt in log:
        result = log_verify(receipt=receipt)
        assert result["ok"] is True and result["first_bad_seq"] is None and result["reason"] is None
        assert result["checked"] == receipt.seq and result["seq"] == receipt.seq
        head, proof = result["head"], result["inclusion_proof"]
        assert head["tree_size"] == SIZE and proof["tree_size"] == SIZE and proof["leaf_index"] == receipt.seq - 1
        assert proof["root"] == head["root_hash"] == ReceiptLog.objects.get().root_hash
        reached = inclusion_root(receipt.seq - 1, SIZE, merkle.leaf_hash(bytes(receipt.body)),
                                 [bytes.fromhex(p) for p in proof["audit_path"]])
        assert reached.hex() == head["root_hash"]
        message = head_message(ws_id=head["ws_id"], tree_size=SIZE, root_hash=head["root_hash"], at=head["at"])
        assert signature_valid(public, base64.b64decode(head["signature"]), message)
        assert result["receipt_head"]["tree_size"] == receipt.seq
        assert result["receipt_head"]["root_hash"] == receipt.root_hash


def test_edited_bytes(log):
    doc = document(3)
    doc["usage"]["usd"] = "0.000001"
    write_body(3, doc, rehash=False)
    assert verify(2)["ok"] is True
    assert_bad(verify(3), 3, "receipt 3", "edited")
    result = verify(6)
    assert_bad(result, 3, "edited")
    assert result["checked"] == 3


def test_edited_bytes_with_the_hash_column_recomputed(log):
    doc = document(3)
    doc["status"] = "succeeded" if doc["status"] != "succeeded" else "failed"
    write_body(3, doc, rehash=True)
    assert_bad(verify(6), 3, "root signed when receipt 3 was appended")
    assert_bad(verify(3), 3, "root signed")


def test_a_complete_rewrite_without_the_key_is_caught_at_the_edited_receipt(log):
    rewrite_from(4, {"model": "a-cheaper-model"})
    for seq in (4, 5, SIZE):
        assert_bad(verify(seq), 4, "receipt 4 was inserted, or it was edited", "signing key")
    assert verify(3)["ok"] is False  # its proof in the newest head no longer reaches the signed root
    assert verify(3)["first_bad_seq"] == 4


def test_bytes_no_longer_canonical(log):
    body = bytes(row(SIZE).body).replace(b'"v":1', b'"v": 1')
    assert json.loads(body) == document(SIZE)
    Receipt.objects.filter(seq=SIZE).update(body=body, hash=merkle.leaf_hash(body).hex())
    assert_bad(verify(SIZE), SIZE, "receipt 8")


def test_removed(log):
    Receipt.objects.filter(seq=4).delete()
    assert_bad(verify(6), 4, "receipt 4 is missing", "removed")
    assert_bad(verify(3), 4, "missing")  # its proof needs receipt 4


def test_removed_at_the_end(log):
    Receipt.objects.filter(seq=SIZE).delete()
    assert_bad(verify(SIZE - 1), SIZE, f"receipt {SIZE} is missing")


def test_swapped(log):
    with connection.cursor() as cursor:
        table = Receipt._meta.db_table
        cursor.execute(f"UPDATE {table} SET seq = 1000 WHERE seq = 2")
        cursor.execute(f"UPDATE {table} SET seq = 2 WHERE seq = 5")
        cursor.execute(f"UPDATE {table} SET seq = 5 WHERE seq = 1000")
    for seq in (2, 5, SIZE):
        assert_bad(verify(seq), 2, "says it is receipt 5", "reordered")
    assert verify(1)["ok"] is False and verify(1)["first_bad_seq"] == 2


def test_run_ids_swapped_between_rows(log):
    run_3, run_6 = row(3).run_id, row(6).run_id
    Receipt.objects.filter(seq=3).update(run_id="run_placeholder")
    Receipt.objects.filter(seq=6).update(run_id=run_3)
    Receipt.objects.filter(seq=3).update(run_id=run_6)
    assert_bad(log_verify(receipt=Receipt.objects.get(run_id=run_3)), 3, f"is for run {run_3}", "swapped")


def test_inserted_in_the_middle(log):
    """A well-formed receipt slipped in at seq 4 (linked to 3, hashes right), the rest moved up one."""
    with connection.cursor() as cursor:
        table = Receipt._meta.db_table
        cursor.execute(f"UPDATE {table} SET seq = seq + 1000 WHERE seq >= 4")
        cursor.execute(f"UPDATE {table} SET seq = seq - 999 WHERE seq >= 1000")
    forged = {**document(3), "seq": 4, "run_id": "run_forged", "prev_hash": row(3).hash}
    body = rfc8785.dumps(forged)
    leaves = [bytes.fromhex(r.hash) for r in Receipt.objects.filter(seq__lte=3).order_by("seq")]
    frontier = merkle.Frontier()
    for leaf in leaves:
        frontier.append(leaf)
    completed = frontier.append(merkle.leaf_hash(body))
    Receipt.objects.create(workspace_id=row(3).workspace_id, seq=4, run_id="run_forged", body=body,
                           project_id=row(3).project_id,
                           hash=merkle.leaf_hash(body).hex(), subtree_hashes=[n.hex() for n in completed],
                           root_hash=frontier.root().hex(), signature=row(3).signature, key_id=row(3).key_id)
    assert_bad(log_verify(receipt=Receipt.objects.get(run_id="run_forged")), 4, "does not verify", "inserted")
    assert_bad(verify(SIZE + 1), 4, "inserted")
    assert verify(3)["first_bad_seq"] == 4


def test_inserted_at_the_end_with_a_forged_head(log):
    last = row(SIZE)
    doc = {**document(SIZE), "seq": SIZE + 1, "run_id": "run_appended", "prev_hash": last.hash}
    body = rfc8785.dumps(doc)
    frontier = merkle.Frontier(SIZE, [bytes.fromhex(h) for h in ReceiptLog.objects.get().frontier])
    completed = frontier.append(merkle.leaf_hash(body))
    Receipt.objects.create(workspace_id=last.workspace_id, seq=SIZE + 1, run_id="run_appended", body=body,
                           project_id=last.project_id,
                           hash=merkle.leaf_hash(body).hex(), subtree_hashes=[n.hex() for n in completed],
                           root_hash=frontier.root().hex(), signature=last.signature, key_id=last.key_id)
    ReceiptLog.objects.update(tree_size=SIZE + 1, root_hash=frontier.root().hex(), signature=last.signature)
    assert_bad(verify(SIZE + 1), SIZE + 1, "does not verify with the signing key")
    assert_bad(verify(2), SIZE + 1, "does not verify")


def test_edited_merkle_nodes(log):
    receipt = row(4)  # leaf index 3 completes nodes at levels 1 and 2
    assert len(receipt.subtree_hashes) == 2
    Receipt.objects.filter(seq=4).update(subtree_hashes=[receipt.subtree_hashes[0], "ab" * 32])
    assert_bad(verify(SIZE), 4, "Merkle nodes stored with receipt 4")
    # Receipt 1's proof never reads that node (it is the root of the subtree receipt 1 is in) ...
    assert verify(1)["ok"] is True


def test_edited_merkle_node_after_the_receipt_breaks_its_proof(log):
    # Node (level 2, index 1), over leaves 4..7, stored with receipt 8: receipt 2's proof reads it.
    receipt = row(SIZE)
    Receipt.objects.filter(seq=SIZE).update(subtree_hashes=[receipt.subtree_hashes[0], "cd" * 32,
                                                            *receipt.subtree_hashes[2:]])
    result = verify(2)
    assert_bad(result, SIZE, "Merkle nodes stored with receipt 8")
    assert result["checked"] == SIZE


def test_forged_head_signature(log):
    Receipt.objects.filter(seq=SIZE).update(signature=row(2).signature)
    assert_bad(verify(SIZE), SIZE, "does not verify with the signing key")


def test_forged_newest_head_row(log):
    ReceiptLog.objects.update(signature=row(2).signature)
    result = verify(3)
    assert result["ok"] is False and result["first_bad_seq"] is None
    assert "the head row was edited" in result["reason"]


def test_another_signing_key_fails_every_head(log, settings):
    settings.KF_SIGNING_KEY = new_key_b64()
    assert_bad(verify(5), 1, "does not verify with the signing key")


def test_garbage_in_the_stored_nodes_is_reported_not_crashed_on(log):
    Receipt.objects.filter(seq=SIZE).update(subtree_hashes=["not hex", 42, None])
    assert_bad(verify(2), SIZE, "Merkle nodes stored with receipt 8")
    with pytest.raises(Conflict):
        receipt_bundle(receipt=row(2))
    Receipt.objects.filter(seq=SIZE).update(subtree_hashes={"level": "x"})
    assert_bad(verify(SIZE), SIZE, "not a list")

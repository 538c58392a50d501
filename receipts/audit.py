"""Verifying a workspace's receipt log from the database, and inclusion proofs from its stored nodes.

`log_verify` recomputes the log up to one receipt (seq k) from the stored bytes alone:
  1. a streaming pass over receipts 1..k: seqs dense, each receipt's bytes hash to its recorded hash,
     its prev_hash is the previous receipt's hash, its bytes name its row's seq, run, project and
     workspace, and the Merkle nodes stored with it are the ones the recomputed tree completes; the
     leaves and the Merkle frontier are rebuilt on the way (one SHA-256 per receipt, about one more
     per node);
  2. the recomputed root over 1..k against the head signed when receipt k was appended (Ed25519,
     the configured key). Only the key holder can sign, so any edited, removed, inserted or reordered
     receipt makes this fail even if whoever edited it recomputed every hash column;
  3. the first bad seq: the first receipt failing (1), or earlier, the first seq whose signed head no
     longer matches the recomputed root (found by bisection over the heads signed with each receipt:
     once a receipt differs, every later root differs). The receipt k itself is also re-encoded from
     its JSON and must give the same bytes (RFC 8785): every other receipt's bytes are pinned by the
     signed root, and kf only ever signs canonical bytes, so re-encoding all of them adds no check;
  4. the receipt's inclusion proof in the newest signed head, from the stored nodes, checked the way
     an offline verifier checks it; if it fails, the pass goes on over k+1..n to find where.
"""

import hashlib
import json
from collections.abc import Iterable, Iterator
from typing import Any

from receipts import merkle
from receipts.canonical import GENESIS_HASH, canonical_bytes, iso_z
from receipts.models import Receipt, ReceiptLog
from receipts.signing import head_signature_valid, signing_key
from receipts.verify_bundle import inclusion_root

ROW_FIELDS = ("seq", "run_id", "project_id", "body", "hash", "subtree_hashes")
CHUNK = 2000
_PREV = b'"prev_hash":"'
_HASH_LEN = 64

Row = tuple[int, str, str, bytes, str, list[str]]


class ProofUnavailable(Exception):
    """A node the proof needs is not stored: the receipt that completed it is missing, or its stored
    nodes are not hashes any more."""

    def __init__(self, seq: int) -> None:
        super().__init__(f"receipt {seq} or the Merkle nodes stored with it are missing or malformed")
        self.seq = seq


def log_rows(ws_id: str, first: int, last: int) -> Iterator[Row]:
    rows = (Receipt.objects.filter(workspace_id=ws_id, seq__gte=first, seq__lte=last).order_by("seq")
            .values_list(*ROW_FIELDS))
    return rows.iterator(chunk_size=CHUNK)


class ChainScan:
    """The streaming pass (step 1). `feed` stops at the first problem, kept in `problem`."""

    def __init__(self, ws_id: str) -> None:
        self.ws_id = ws_id
        self.expected = 1
        self.prev = GENESIS_HASH.encode()
        self.frontier = merkle.Frontier()
        self.leaves = bytearray()  # every leaf hash so far, concatenated: roots at any size, proofs
        self.checked = 0
        self.problem: tuple[int, str] | None = None

    def feed(self, rows: Iterable[Row]) -> bool:
        """Checks `rows` (the next ones in seq order). Written for speed: this loop is the whole cost of a
        full recompute besides SHA-256 itself. Receipts are canonical JSON with sorted keys, so run_id and
        seq follow prev_hash, ws_id is the last key, and a key cannot be spelled inside a string value
        (its quotes would be escaped): plain byte searches find them."""
        sha256 = hashlib.sha256
        frontier = self.frontier
        nodes, leaves = frontier.hashes, self.leaves
        ws_tail = b'"ws_id":"%s"}' % self.ws_id.encode()
        expected, prev, size, checked = self.expected, self.prev, frontier.size, self.checked
        try:
            for seq, run_id, project_id, body, stored_hash, subtree in rows:
                checked += 1
                if seq != expected:
                    return self._fail(expected, f"receipt {expected} is missing: it was removed (the next one "
                                                f"stored is {seq})")
                if type(body) is not bytes:
                    body = bytes(body)  # memoryview from Postgres
                if type(subtree) is not list:
                    return self._fail(seq, f"the Merkle nodes stored with receipt {seq} are not a list: they were "
                                           "edited")
                digest = sha256(b"\x00")
                digest.update(body)  # cheaper than hashing b"\x00" + body, which copies it
                leaf = digest.digest()
                leaf_hex = leaf.hex()
                if leaf_hex != stored_hash:
                    return self._fail(seq, f"receipt {seq}'s bytes do not hash to the hash recorded when it was "
                                           "appended: it was edited")
                # find(_PREV) scans at ~1.5 ns a byte (quotes everywhere defeat its skip table); memchr for
                # its rare "v", then a check, is about three times faster.
                at = body.find(b"v")
                while at >= 0 and not body.startswith(_PREV, at - 4):
                    at = body.find(b"v", at + 1)
                at = at - 4 if at >= 0 else -1
                if (at < 0 or not body.endswith(ws_tail) or not body.startswith(
                        b'","project_id":"%s","run_id":"%s","seq":%d,' % (project_id.encode(), run_id.encode(), seq),
                        at + 77)):
                    return self._fail(seq, _misfiled(seq, run_id, project_id, self.ws_id, body))
                if body[at + 13:at + 77] != prev:
                    return self._fail(seq, f"receipt {seq}'s prev_hash is not the hash of receipt {seq - 1}: a "
                                           "receipt was edited, removed, inserted or reordered")
                # Frontier.append inlined, each completed node checked against the one stored with the row.
                current, rest, level = leaf, size, 0
                while rest & 1:
                    current = sha256(b"\x01" + nodes.pop() + current).digest()
                    if level >= len(subtree) or current.hex() != subtree[level]:
                        frontier.size = -1  # spoilt: roots come from the leaves from now on
                        return self._fail(seq, f"the Merkle nodes stored with receipt {seq} are not the ones its "
                                               "append completed: they were edited")
                    level += 1
                    rest >>= 1
                if level != len(subtree):
                    frontier.size = -1
                    return self._fail(seq, f"the Merkle nodes stored with receipt {seq} are not the ones its "
                                           "append completed: they were edited")
                nodes.append(current)
                size += 1
                leaves += leaf
                prev = leaf_hex.encode()
                expected += 1
        finally:
            self.expected, self.prev, self.checked = expected, prev, checked
            if frontier.size != -1:
                frontier.size = size
        return True

    def _fail(self, seq: int, reason: str) -> bool:
        self.problem = (seq, reason)
        return False

    def root_at(self, size: int) -> bytes:
        if size == self.frontier.size:
            return self.frontier.root()
        return merkle.root_of(bytes(self.leaves[i * 32:(i + 1) * 32]) for i in range(size))

    def leaf(self, seq: int) -> bytes:
        return bytes(self.leaves[(seq - 1) * 32:seq * 32])


def _misfiled(seq: int, run_id: str, project_id: str, ws_id: str, body: bytes) -> str:
    try:
        document = json.loads(body)
    except ValueError:
        return f"receipt {seq}'s bytes are not JSON: they were edited"
    if not isinstance(document, dict):
        return f"receipt {seq}'s bytes are not a receipt: they were edited"
    if document.get("seq") != seq:
        return (f"the receipt stored at seq {seq} says it is receipt {document.get('seq')}: receipts were "
                "reordered, or one was inserted or removed before it")
    if document.get("run_id") != run_id:
        return f"receipt {seq} is for run {document.get('run_id')}, but its row says {run_id}: rows were swapped"
    if document.get("project_id") != project_id:
        return f"receipt {seq} is for project {document.get('project_id')}, but its row says {project_id}"
    if document.get("ws_id") == ws_id:
        return f"receipt {seq}'s bytes are not laid out as kf writes them (RFC 8785): they were edited"
    return f"receipt {seq} belongs to workspace {document.get('ws_id')}: it was moved between logs"


def _canonical_problem(seq: int, body: bytes) -> str | None:
    try:
        document = json.loads(body)
        if canonical_bytes(document) == body:
            return None
    except (ValueError, TypeError):
        pass
    return f"receipt {seq}'s bytes are not RFC 8785 canonical JSON: they were edited by hand"


def _head(ws_id: str, seq: int) -> dict[str, Any] | None:
    row = (Receipt.objects.filter(workspace_id=ws_id, seq=seq)
           .values("root_hash", "signature", "appended_at", "key_id").first())
    if row is None:
        return None
    return {"ws_id": ws_id, "tree_size": seq, "root_hash": row["root_hash"], "at": iso_z(row["appended_at"]),
            "signature": row["signature"], "key_id": row["key_id"]}


def _head_problem(head: dict[str, Any], root: bytes) -> str | None:
    """Why `head` is not a valid signature of `root` at its size, or None."""
    size = head["tree_size"]
    if not head_signature_valid(ws_id=head["ws_id"], tree_size=size, root_hash=head["root_hash"], at=head["at"],
                                signature=head["signature"]):
        return (f"the head stored with receipt {size} does not verify with the signing key "
                f"{signing_key().key_id}: receipt {size} was inserted, or it was edited and its head recomputed "
                "or forged (or the log was signed with another key)")
    if head["root_hash"] != root.hex():
        return (f"the receipts up to {size} do not hash to the root signed when receipt {size} was appended: "
                f"receipt {size} was edited, replaced or inserted")
    return None


class LogCheck:
    def __init__(self, ws_id: str) -> None:
        self.ws_id = ws_id
        self.scan = ChainScan(ws_id)

    def diverged(self, seq: int) -> str | None:
        head = _head(self.ws_id, seq)
        if head is None:
            return f"receipt {seq} is missing"
        return _head_problem(head, self.scan.root_at(seq))

    def first_divergence(self, low: int, high: int, reason: str) -> tuple[int, str]:
        """The smallest seq in [low, high] whose head does not match (`high`'s does not, for `reason`)."""
        while low < high:
            middle = (low + high) // 2
            middle_reason = self.diverged(middle)
            if middle_reason is None:
                low = middle + 1
            else:
                high, reason = middle, middle_reason
        return high, reason

    def check_through(self, last: int, *, first: int = 1) -> tuple[int, str] | None:
        """Steps 1–3 over receipts first..last (those before `first` already passed)."""
        self.scan.feed(log_rows(self.ws_id, first, last))
        if self.scan.problem is None:
            if self.scan.frontier.size < last:
                return self.scan.frontier.size + 1, f"receipt {self.scan.frontier.size + 1} is missing: it was removed"
            reason = self.diverged(last)
            return None if reason is None else self.first_divergence(first, last, reason)
        seq, reason = self.scan.problem
        # An earlier receipt may be the real culprit (edited with its hash column recomputed, or inserted).
        if seq > first:
            earlier = self.diverged(seq - 1)
            if earlier is not None:
                return self.first_divergence(first, seq - 1, earlier)
        return seq, reason


def _latest_head(log: ReceiptLog) -> dict[str, Any]:
    return {"ws_id": log.workspace_id, "tree_size": log.tree_size, "root_hash": log.root_hash,
            "at": iso_z(log.signed_at) if log.signed_at else "", "signature": log.signature, "key_id": log.key_id}


def inclusion_proof(*, ws_id: str, seq: int, tree_size: int, leaf: bytes | None = None) -> dict[str, Any]:
    """Receipt seq's RFC 9162 inclusion proof in the tree of `tree_size`, from the stored nodes (one
    query for the O(log n) rows that hold them), with the root it leads to from `leaf` (default: the
    stored hash of receipt seq). Raises ProofUnavailable if a row it needs is missing."""
    needed = merkle.nodes_needed(seq - 1, tree_size)
    holders = {merkle.completing_seq(level, index) for level, index in needed} | {seq}
    rows = {row[0]: row for row in Receipt.objects.filter(workspace_id=ws_id, seq__in=holders)
            .values_list("seq", "hash", "subtree_hashes")}

    def node(level: int, index: int) -> bytes:
        holder = merkle.completing_seq(level, index)
        row = rows.get(holder)
        try:
            value = bytes.fromhex(row[1] if level == 0 else row[2][level - 1])
        except (TypeError, ValueError, IndexError, KeyError):
            raise ProofUnavailable(holder) from None
        if len(value) != 32:
            raise ProofUnavailable(holder)
        return value

    path = merkle.inclusion_path(seq - 1, tree_size, node)
    reached = inclusion_root(seq - 1, tree_size, leaf if leaf is not None else node(0, seq - 1), path)
    return {"leaf_index": seq - 1, "tree_size": tree_size, "audit_path": [item.hex() for item in path],
            "root": reached.hex() if reached is not None else None}


def log_verify(*, receipt: Receipt) -> dict[str, Any]:
    """Recomputes the log up to `receipt` (see the module docstring) →
    {ok, checked, first_bad_seq, reason, seq, head, receipt_head, inclusion_proof}."""
    ws_id, seq = receipt.workspace_id, receipt.seq
    check = LogCheck(ws_id)
    problem = check.check_through(seq)
    if problem is None:
        bad = _canonical_problem(seq, bytes(receipt.body))
        problem = (seq, bad) if bad else None
    result: dict[str, Any] = {"seq": seq, "run_id": receipt.run_id, "ws_id": ws_id,
                              "receipt_head": _head(ws_id, seq), "head": None, "inclusion_proof": None}
    if problem is None:
        problem = _proof_check(check, seq, result)
    result.update(ok=problem is None, checked=check.scan.checked,
                  first_bad_seq=problem[0] if problem else None, reason=problem[1] if problem else None)
    return result


def _proof_check(check: LogCheck, seq: int, result: dict[str, Any]) -> tuple[int | None, str] | None:
    """Step 4: the proof of receipt `seq` in the newest signed head, or where the log after it breaks."""
    log = ReceiptLog.objects.filter(workspace_id=check.ws_id).first()
    if log is None or log.tree_size < seq:
        return None, "the log's head row is missing or older than this receipt: it was edited"
    head = _latest_head(log)
    result["head"] = head
    try:
        proof = inclusion_proof(ws_id=check.ws_id, seq=seq, tree_size=log.tree_size, leaf=check.scan.leaf(seq))
    except ProofUnavailable:
        proof = None
    if proof is not None and proof["root"] is not None:
        result["inclusion_proof"] = proof
        if _head_problem(head, bytes.fromhex(proof["root"])) is None:
            return None
    # Something after this receipt is wrong: go on through the newest one to say what.
    later = check.check_through(log.tree_size, first=seq + 1) if log.tree_size > seq else None
    if later is not None:
        return later
    if _head_problem(head, check.scan.root_at(log.tree_size)) is not None:
        return None, (f"the log's newest head (size {log.tree_size}) is not a valid signature of its receipts' "
                      "root, though every receipt's own head is: the head row was edited")
    return None, "the inclusion proof from the stored Merkle nodes does not reach the signed head"

"""Reads of the receipt logs with their access checks: any member of a workspace (viewers too) may read,
verify and reground its receipts; everyone else gets not_found."""

import json
from typing import Any

from django.db.models import QuerySet
from django.utils import timezone

from accounts.models import Role, User, Workspace
from accounts.selectors import workspace_get, workspace_object_check
from api.errors import Conflict, NotFound
from projects.models import Project
from receipts import merkle
from receipts.audit import ProofUnavailable, inclusion_proof
from receipts.canonical import iso_z
from receipts.fingerprints import findings_reground
from receipts.models import Receipt, ReceiptLog
from receipts.signing import head_sign, signing_key
from receipts.verify_bundle import BUNDLE_FORMAT

ALGORITHM = "Ed25519"


def receipt_get(*, user: User, run_id: str) -> Receipt:
    receipt = Receipt.objects.filter(run_id=run_id).first()
    try:
        return workspace_object_check(user=user, obj=receipt, kind="receipt", min_role=Role.VIEWER)
    except NotFound:
        raise NotFound("No receipt for this run: it has not ended yet, or you cannot see it.") from None


def receipt_list(*, user: User, ws_id: str | None) -> tuple[Workspace, QuerySet[Receipt]]:
    workspace = workspace_get(user=user, ws_id=ws_id, min_role=Role.VIEWER)
    return workspace, Receipt.objects.filter(workspace=workspace).defer("subtree_hashes")


def receipt_document(receipt: Receipt) -> dict[str, Any]:
    """The receipt's JSON. Raises Conflict when its stored bytes are no longer JSON (edited)."""
    try:
        document = json.loads(bytes(receipt.body))
    except ValueError:
        document = None
    if not isinstance(document, dict):
        raise Conflict(f"Receipt {receipt.seq}'s stored bytes are not JSON any more: verify the log.",
                       details={"seq": receipt.seq})
    return document


def receipt_summary(receipt: Receipt) -> dict[str, Any]:
    """A line of the log: the row's facts and a few of the receipt's (None where its bytes are not JSON)."""
    try:
        document = json.loads(bytes(receipt.body))
    except ValueError:
        document = None
    document = document if isinstance(document, dict) else {}
    usage = document.get("usage") if isinstance(document.get("usage"), dict) else {}
    return {"seq": receipt.seq, "run_id": receipt.run_id, "hash": receipt.hash, "at": iso_z(receipt.appended_at),
            "project_id": receipt.project_id, "user_id": receipt.user_id or None,
            "status": document.get("status"), "model": document.get("model"), "usd": usage.get("usd")}


def chain_head(*, user: User, ws_id: str | None) -> dict[str, Any]:
    """The newest signed head of the workspace's log. An empty log's head (size 0, the empty tree's
    root) is signed when asked for, with the time of asking."""
    workspace = workspace_get(user=user, ws_id=ws_id, min_role=Role.VIEWER)
    log = ReceiptLog.objects.filter(workspace=workspace).first()
    key = signing_key()
    if log is None or log.tree_size == 0:
        at = iso_z(timezone.now())
        root = merkle.EMPTY_ROOT.hex()
        signature, key_id = head_sign(ws_id=workspace.pk, tree_size=0, root_hash=root, at=at)
        head = {"tree_size": 0, "root_hash": root, "at": at, "signature": signature, "key_id": key_id,
                "last_hash": None}
    else:
        head = {"tree_size": log.tree_size, "root_hash": log.root_hash, "at": iso_z(log.signed_at),
                "signature": log.signature, "key_id": log.key_id, "last_hash": log.last_hash}
    return {"ws_id": workspace.pk, "seq": head["tree_size"], "hash": head["root_hash"], **head,
            "public_key": key.public_b64, "algorithm": ALGORITHM}


def receipt_bundle(*, receipt: Receipt) -> dict[str, Any]:
    """What the offline verifier needs: the receipt, its proof in the newest signed head, that head
    and the public key (verify_bundle.py)."""
    log = ReceiptLog.objects.filter(workspace_id=receipt.workspace_id).first()
    if log is None or log.tree_size < receipt.seq:
        raise Conflict("The log's head is missing or older than this receipt: verify the log.")
    try:
        proof = inclusion_proof(ws_id=receipt.workspace_id, seq=receipt.seq, tree_size=log.tree_size)
    except ProofUnavailable as exc:
        raise Conflict(f"The log is damaged ({exc}): verify it.", details={"seq": exc.seq}) from None
    head = {"ws_id": log.workspace_id, "tree_size": log.tree_size, "root_hash": log.root_hash,
            "at": iso_z(log.signed_at), "signature": log.signature, "key_id": log.key_id}
    return {"format": BUNDLE_FORMAT, "seq": receipt.seq, "run_id": receipt.run_id,
            "receipt": receipt_document(receipt), "inclusion_proof": proof, "head": head,
            "public_key": signing_key().public_b64, "algorithm": ALGORITHM}


def receipt_reground(*, receipt: Receipt) -> list[dict[str, Any]]:
    """The receipt's findings against the project's files as they are now."""
    findings = receipt_document(receipt).get("findings")
    findings = findings if isinstance(findings, list) else []
    project = Project.objects.filter(pk=receipt.project_id, workspace_id=receipt.workspace_id).only("root").first()
    if project is None:
        raise NotFound("The run's project no longer exists.")
    places = findings_reground(project.root, findings)
    return [{"finding": finding, "status": place.status, "path": place.path, "line": place.line}
            for finding, place in zip(findings, places, strict=True)]

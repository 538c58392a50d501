"""The Receipts group of API.md (chain-head, verify, reground) plus the log's list and a receipt's
bundle. Every call only reads, so an API key with the `read` scope may make all of them, POSTs included.

Encodings: hashes are lower-case hex SHA-256; signatures and public keys are base64 (standard alphabet,
padded); the public key is the raw 32-byte Ed25519 key. A head's signature covers the RFC 8785 JSON of
{"at", "kind": "kf.receipts.tree_head", "root_hash", "tree_size", "v": 1, "ws_id"}.
"""

from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from api.pagination import paginate
from receipts import audit, selectors

WS_PARAM = OpenApiParameter("ws_id", str, description="The workspace (viewer+); your personal one when omitted.")
HEX = "lower-case hex SHA-256"


def _head_fields() -> dict[str, serializers.Field]:
    return {
        "ws_id": serializers.CharField(),
        "tree_size": serializers.IntegerField(help_text="Receipts in the log when it was signed"),
        "root_hash": serializers.CharField(help_text=f"RFC 9162 Merkle root, {HEX}"),
        "at": serializers.CharField(help_text="When it was signed: ISO 8601 UTC, microseconds, Z"),
        "signature": serializers.CharField(help_text="Ed25519 over the head's canonical JSON, base64"),
        "key_id": serializers.CharField(help_text="First 16 hex digits of SHA-256(public key)"),
    }


SignedHead = inline_serializer("ReceiptsSignedHead", _head_fields())
InclusionProof = inline_serializer("ReceiptsInclusionProof", {
    "leaf_index": serializers.IntegerField(help_text="seq - 1"),
    "tree_size": serializers.IntegerField(),
    "audit_path": serializers.ListField(child=serializers.CharField(), help_text=f"RFC 9162 §2.1.3.1, bottom-up, {HEX}"),
    "root": serializers.CharField(allow_null=True, help_text="The root the path leads to from the receipt's leaf"),
})


class ReceiptListApi(APIView):
    @extend_schema(
        tags=["receipts"], operation_id="receipts_list",
        parameters=[WS_PARAM, OpenApiParameter("cursor", str), OpenApiParameter("limit", int, description="Default 50, max 200.")],
        responses={200: inline_serializer("ReceiptList", {
            "ws_id": serializers.CharField(),
            "items": inline_serializer("ReceiptSummary", {
                "seq": serializers.IntegerField(), "run_id": serializers.CharField(),
                "hash": serializers.CharField(help_text=f"SHA-256(0x00 ‖ receipt bytes), {HEX}"),
                "at": serializers.CharField(), "project_id": serializers.CharField(),
                "user_id": serializers.CharField(allow_null=True), "status": serializers.CharField(allow_null=True),
                "model": serializers.CharField(allow_null=True), "usd": serializers.CharField(allow_null=True)},
                many=True),
            "next_cursor": serializers.CharField(allow_null=True)})},
        description="The workspace's receipt log, newest first (by seq).")
    def get(self, request: Request) -> Response:
        workspace, qs = selectors.receipt_list(user=request.user, ws_id=request.query_params.get("ws_id") or None)
        rows, next_cursor = paginate(qs, request, order_field="seq")
        return Response({"ws_id": workspace.pk, "items": [selectors.receipt_summary(row) for row in rows], "next_cursor": next_cursor})


class ChainHeadApi(APIView):
    @extend_schema(
        tags=["receipts"], operation_id="receipts_chain_head", parameters=[WS_PARAM],
        responses={200: inline_serializer("ReceiptsChainHead", {
            **_head_fields(),
            "seq": serializers.IntegerField(help_text="The newest receipt's seq (= tree_size; 0: empty log)"),
            "hash": serializers.CharField(help_text=f"The Merkle root (= root_hash), {HEX}"),
            "last_hash": serializers.CharField(allow_null=True, help_text="The newest receipt's hash (prev_hash of the next)"),
            "public_key": serializers.CharField(help_text="Raw 32-byte Ed25519 public key, base64"),
            "algorithm": serializers.CharField()})},
        description="The newest signed head of the workspace's log with the public key that checks it. An empty "
                    "log's head (size 0, root SHA-256 of nothing) is signed at the time of asking.")
    def get(self, request: Request) -> Response:
        return Response(selectors.chain_head(user=request.user, ws_id=request.query_params.get("ws_id") or None))


class VerifyApi(APIView):
    required_scope = "read"

    @extend_schema(
        tags=["receipts"], operation_id="receipts_verify", request=None,
        responses={200: inline_serializer("ReceiptVerify", {
            "ok": serializers.BooleanField(), "checked": serializers.IntegerField(help_text="Receipts recomputed"),
            "first_bad_seq": serializers.IntegerField(allow_null=True),
            "reason": serializers.CharField(allow_null=True, help_text="Why the log fails, naming the receipt"),
            "seq": serializers.IntegerField(), "run_id": serializers.CharField(), "ws_id": serializers.CharField(),
            "receipt_head": SignedHead, "head": SignedHead, "inclusion_proof": InclusionProof})},
        description="Recomputes the log up to this run's receipt from the stored bytes: seqs dense, each receipt's "
                    "hash and prev_hash link, its bytes naming its row's seq and run, the stored Merkle nodes, and the "
                    "Merkle root against the head signed when the receipt was appended; the receipt's own bytes must "
                    "be RFC 8785 canonical. Reports the first bad seq and why when a receipt was edited, removed, "
                    "reordered or inserted. Also returns the receipt's inclusion proof in the newest signed head "
                    "(`head`), checked like the offline verifier checks it.")
    def post(self, request: Request, run_id: str) -> Response:
        receipt = selectors.receipt_get(user=request.user, run_id=run_id)
        return Response(audit.log_verify(receipt=receipt))


class RegroundApi(APIView):
    required_scope = "read"

    @extend_schema(
        tags=["receipts"], operation_id="receipts_reground", request=None,
        responses={200: inline_serializer("ReceiptReground", {"items": inline_serializer("RegroundItem", {
            "finding": serializers.DictField(help_text="The receipt's finding: path, line, rule, severity, message, "
                                                       "fingerprint, line_sha256"),
            "status": serializers.ChoiceField(["present", "moved", "resolved"]),
            "path": serializers.CharField(allow_null=True), "line": serializers.IntegerField(allow_null=True)},
            many=True)})},
        description="Re-checks the run's findings against the project's files as they are now: `present` (its line "
                    "still matches the fingerprint: rule, the line's text with blanks normalised, and its nearest "
                    "non-blank neighbours), `moved` (found at another line or file; path and line say where), "
                    "`resolved` (gone; path and line null).")
    def post(self, request: Request, run_id: str) -> Response:
        receipt = selectors.receipt_get(user=request.user, run_id=run_id)
        return Response({"items": selectors.receipt_reground(receipt=receipt)})


class BundleApi(APIView):
    renderer_classes = [JSONRenderer]  # a file to keep, also when a browser opens the link

    @extend_schema(
        tags=["receipts"], operation_id="receipts_bundle",
        responses={200: inline_serializer("ReceiptBundle", {
            "format": serializers.CharField(), "seq": serializers.IntegerField(), "run_id": serializers.CharField(),
            "receipt": serializers.DictField(help_text="The receipt; its RFC 8785 bytes are the Merkle leaf"),
            "inclusion_proof": InclusionProof, "head": SignedHead,
            "public_key": serializers.CharField(), "algorithm": serializers.CharField()})},
        description="Everything needed to check the receipt offline, without kf: `manage.py receipts_verify_bundle "
                    "<file>` or the standalone `receipts/verify_bundle.py <file>` (Python + cryptography + rfc8785).")
    def get(self, request: Request, run_id: str) -> Response:
        receipt = selectors.receipt_get(user=request.user, run_id=run_id)
        bundle = selectors.receipt_bundle(receipt=receipt)
        return Response(bundle, headers={
            "Content-Disposition": f'attachment; filename="receipt-{receipt.run_id}.json"'})

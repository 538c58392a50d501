"""A workspace's receipts: an append-only log of finished agent runs (DESIGN decision 8).

Each Receipt row keeps the exact RFC 8785 bytes of one receipt, its hash (the RFC 9162 leaf hash), the
perfect Merkle nodes its append completed, and the head signed right after it (tree size = its seq).
ReceiptLog is the workspace's one head row: appends lock it, so seqs are dense and the chain never
forks, and it keeps the Merkle frontier so an append costs O(log n) whatever the log's length.

Projects and users are plain ids, not foreign keys: deleting a project or purging an account must not
take receipts out of the middle of a log (that is exactly what verify reports as tampering).
"""

from django.db import models
from django.utils import timezone

from accounts.models import Workspace
from api.ids import PrefixedIdField
from receipts.canonical import GENESIS_HASH

HASH_HELP = "lower-case hex SHA-256"


class ReceiptLog(models.Model):
    workspace = models.OneToOneField(Workspace, primary_key=True, on_delete=models.CASCADE,
                                     related_name="receipt_log")
    tree_size = models.PositiveBigIntegerField(default=0, help_text="Receipts in the log = the newest seq")
    last_hash = models.CharField(max_length=64, default=GENESIS_HASH,
                                 help_text="Hash of the newest receipt: the next one's prev_hash")
    frontier = models.JSONField(default=list, blank=True,
                                help_text="Roots of the perfect subtrees of the Merkle tree, left to right (hex)")
    root_hash = models.CharField(max_length=64, blank=True, help_text=HASH_HELP)
    signed_at = models.DateTimeField(null=True, blank=True)
    signature = models.CharField(max_length=100, blank=True, help_text="Ed25519, base64")
    key_id = models.CharField(max_length=16, blank=True, help_text="SHA-256 prefix of the signing public key")

    def __str__(self) -> str:
        return f"receipt log of {self.workspace_id} ({self.tree_size})"


class Receipt(models.Model):
    id = PrefixedIdField("rct")
    # No index of its own: the (workspace, seq) constraint's index serves every lookup by workspace.
    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="receipts", db_index=False)
    seq = models.PositiveBigIntegerField(help_text="1, 2, 3, … per workspace; leaf index = seq - 1")
    run_id = models.CharField(max_length=40, unique=True)
    project_id = models.CharField(max_length=40, blank=True)
    user_id = models.CharField(max_length=40, blank=True)
    body = models.BinaryField(help_text="The receipt's exact RFC 8785 canonical JSON bytes")
    hash = models.CharField(max_length=64, help_text="SHA-256(0x00 ‖ body): the Merkle leaf and the next prev_hash")
    subtree_hashes = models.JSONField(default=list, blank=True,
                                      help_text="Perfect Merkle nodes this append completed, levels 1, 2, … (hex)")
    root_hash = models.CharField(max_length=64, help_text="Merkle root of the log at tree size = seq")
    signature = models.CharField(max_length=100, help_text="Ed25519 over the head (ws, seq, root_hash, appended_at)")
    key_id = models.CharField(max_length=16)
    appended_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["workspace", "seq"], name="receipt_ws_seq_unique")]

    def __str__(self) -> str:
        return f"receipt {self.seq} of {self.workspace_id} ({self.run_id})"

#!/usr/bin/env python3
"""Verify a kf receipt bundle offline: no kf, no database, no network.

    python verify_bundle.py receipt-run_xxx.json [--public-key BASE64]

Needs only Python 3.10+, `cryptography` and `rfc8785` (pip install cryptography rfc8785). Exit code 0
when the bundle verifies, 1 when it does not (or cannot be read), with one line saying why.

A bundle (GET /api/receipts/<run_id>/bundle) holds a receipt, its RFC 9162 inclusion proof, the signed
head of the workspace's log and the Ed25519 public key. It verifies when
  1. the head's signature is valid for the public key (pass --public-key with the key you trust, e.g.
     from /api/receipts/chain-head, or the bundle's own key is only checked for self-consistency);
  2. the receipt, re-encoded as RFC 8785 canonical JSON, hashes to the leaf SHA-256(0x00 ‖ bytes);
  3. the audit path leads from that leaf, at index seq - 1, to the head's root hash for its tree size.

The signed head is the RFC 8785 canonical JSON of
    {"at", "kind": "kf.receipts.tree_head", "root_hash", "tree_size", "v": 1, "ws_id"}
(root hash in lower-case hex, `at` ISO 8601 UTC with microseconds and Z); signature and public key
(the raw 32 bytes) are base64. kf's server uses the functions here too, so both sides agree.
"""

import argparse
import base64
import binascii
import hashlib
import json
import sys
from typing import Any

import rfc8785
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

BUNDLE_FORMAT = "kf.receipt-bundle.v1"
HEAD_KIND = "kf.receipts.tree_head"
HEAD_VERSION = 1
HASH_HEX_LEN = 64


class BundleInvalid(Exception):
    """The bundle does not verify; the message says which check failed."""


def head_message(*, ws_id: str, tree_size: int, root_hash: str, at: str) -> bytes:
    """The exact bytes an Ed25519 head signature covers."""
    return rfc8785.dumps({"kind": HEAD_KIND, "v": HEAD_VERSION, "ws_id": ws_id, "tree_size": tree_size,
                          "root_hash": root_hash, "at": at})


def key_id_of(public_key: bytes) -> str:
    """A short name of a public key: the first 16 hex digits of its SHA-256."""
    return hashlib.sha256(public_key).hexdigest()[:16]


def b64decode(text: str) -> bytes:
    if not isinstance(text, str):
        raise TypeError("not a string")
    text = text.strip().replace("-", "+").replace("_", "/")
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def signature_valid(public_key: bytes, signature: bytes, message: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def inclusion_root(leaf_index: int, tree_size: int, leaf: bytes, audit_path: list[bytes]) -> bytes | None:
    """The root an inclusion proof leads to (RFC 9162 §2.1.3.2), or None when the proof has the
    wrong length for its position."""
    if not 0 <= leaf_index < tree_size:
        return None
    fn, sn, root = leaf_index, tree_size - 1, leaf
    for sibling in audit_path:
        if sn == 0:
            return None
        if fn & 1 or fn == sn:
            root = _node(sibling, root)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            root = _node(root, sibling)
        fn >>= 1
        sn >>= 1
    return root if sn == 0 else None


def _hex32(value: Any, what: str) -> bytes:
    if not isinstance(value, str) or len(value) != HASH_HEX_LEN:
        raise BundleInvalid(f"{what} is not 64 hex digits")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise BundleInvalid(f"{what} is not 64 hex digits") from None


def _field(obj: Any, name: str, kind: type, where: str) -> Any:
    value = obj.get(name) if isinstance(obj, dict) else None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise BundleInvalid(f"{where}.{name} is missing or not a {kind.__name__}")
    return value


def verify(bundle: Any, *, public_key: str | None = None) -> str:
    """Checks a bundle; returns a one-line summary, or raises BundleInvalid saying what failed."""
    if not isinstance(bundle, dict) or bundle.get("format") != BUNDLE_FORMAT:
        raise BundleInvalid(f"not a kf receipt bundle (format must be {BUNDLE_FORMAT!r})")
    receipt = _field(bundle, "receipt", dict, "bundle")
    head = _field(bundle, "head", dict, "bundle")
    proof = _field(bundle, "inclusion_proof", dict, "bundle")

    try:
        key = b64decode(_field(bundle, "public_key", str, "bundle"))
        trusted = b64decode(public_key) if public_key is not None else key
    except (binascii.Error, ValueError, TypeError):
        raise BundleInvalid("a public key is not valid base64") from None
    if len(key) != 32 or len(trusted) != 32:
        raise BundleInvalid("an Ed25519 public key must be 32 bytes")
    if key != trusted:
        raise BundleInvalid(f"the bundle's public key ({key_id_of(key)}) is not the trusted key ({key_id_of(trusted)})")

    ws_id = _field(head, "ws_id", str, "head")
    tree_size = _field(head, "tree_size", int, "head")
    root_hex = _field(head, "root_hash", str, "head")
    at = _field(head, "at", str, "head")
    root = _hex32(root_hex, "head.root_hash")
    try:
        signature = b64decode(_field(head, "signature", str, "head"))
    except (binascii.Error, ValueError, TypeError):
        raise BundleInvalid("head.signature is not valid base64") from None
    message = head_message(ws_id=ws_id, tree_size=tree_size, root_hash=root_hex, at=at)
    if not signature_valid(trusted, signature, message):
        raise BundleInvalid(f"the head's signature is not valid for key {key_id_of(trusted)}")

    seq = _field(receipt, "seq", int, "receipt")
    if receipt.get("ws_id") != ws_id:
        raise BundleInvalid(f"the receipt is from workspace {receipt.get('ws_id')!r}, the head from {ws_id!r}")
    leaf_index = _field(proof, "leaf_index", int, "inclusion_proof")
    if leaf_index != seq - 1:
        raise BundleInvalid(f"the proof is for leaf {leaf_index}, the receipt has seq {seq} (leaf {seq - 1})")
    if _field(proof, "tree_size", int, "inclusion_proof") != tree_size:
        raise BundleInvalid("the proof's tree size is not the signed head's")
    path_hex = _field(proof, "audit_path", list, "inclusion_proof")
    path = [_hex32(item, f"inclusion_proof.audit_path[{i}]") for i, item in enumerate(path_hex)]
    try:
        leaf = leaf_hash(rfc8785.dumps(receipt))
    except rfc8785.CanonicalizationError as exc:
        raise BundleInvalid(f"the receipt cannot be canonicalized: {exc}") from None
    reached = inclusion_root(leaf_index, tree_size, leaf, path)
    if reached is None:
        raise BundleInvalid(f"the audit path has the wrong length for leaf {leaf_index} of {tree_size}")
    if reached != root:
        raise BundleInvalid("the receipt and its audit path do not lead to the signed root hash "
                            "(the receipt or the proof was altered)")
    return (f"receipt seq {seq} (run {receipt.get('run_id')}) is entry {seq} of {tree_size} in the log of "
            f"workspace {ws_id}; root {root_hex[:16]}…, signed at {at} by key {key_id_of(trusted)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Verify a kf receipt bundle offline.")
    parser.add_argument("bundle", help="the bundle file (JSON), or - for standard input")
    parser.add_argument("--public-key", help="the Ed25519 public key you trust (base64 of 32 bytes)")
    args = parser.parse_args(argv)
    try:
        if args.bundle == "-":
            text = sys.stdin.read()
        else:
            with open(args.bundle, encoding="utf-8") as fh:
                text = fh.read()
        bundle = json.loads(text)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        print(f"FAIL: cannot read {args.bundle}: {exc}")
        return 1
    try:
        summary = verify(bundle, public_key=args.public_key)
    except BundleInvalid as exc:
        print(f"FAIL: {exc}")
        return 1
    print(f"OK: {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

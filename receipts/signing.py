"""The Ed25519 key that signs each workspace's log head, kept outside the database.

KF_SIGNING_KEY: base64 of the 32-byte private seed. Unset: the key file KF_DATA_DIR/receipts_signing_key
(0600), created on first use the way secrets_app/crypto.py creates the master key file: written under a
temporary O_EXCL name, then linked into place, so processes starting together (daphne and a worker)
all end up with the one key that won and none reads a half-written file. Whoever can read the database
can recompute every hash, but only the holder of this key can sign a head: that is what makes an edit
of the log evident. Nothing here logs key material.
"""

import base64
import binascii
import os
import secrets as random
import threading
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from django.conf import settings

from api.errors import Conflict
from receipts.verify_bundle import b64decode, head_message, key_id_of, signature_valid

KEY_FILE_NAME = "receipts_signing_key"
SEED_BYTES = 32
_KEY_FILE_HEADER = ("# kf receipts signing key: the base64 of an Ed25519 private seed. Keep it private and back\n"
                    "# it up with the database: kf checks every signed head with this key.\n")


class SigningKeyUnavailable(Conflict):
    """KF_SIGNING_KEY or the key file is malformed or unreadable."""

    default_detail = "The receipts signing key is not available."


@dataclass(frozen=True)
class SigningKey:
    private: Ed25519PrivateKey
    public: bytes  # raw 32 bytes

    @property
    def public_b64(self) -> str:
        return base64.b64encode(self.public).decode()

    @property
    def key_id(self) -> str:
        return key_id_of(self.public)


def _from_seed_text(value: str, *, where: str) -> SigningKey:
    try:
        seed = b64decode(value)
    except (binascii.Error, ValueError, TypeError):
        seed = b""
    if len(seed) != SEED_BYTES:
        raise SigningKeyUnavailable(f"{where} must be base64 of a {SEED_BYTES}-byte Ed25519 seed.")
    private = Ed25519PrivateKey.from_private_bytes(seed)
    return SigningKey(private=private, public=private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))


_cache_lock = threading.Lock()
_cache: dict[tuple, SigningKey] = {}


def signing_key() -> SigningKey:
    """The configured key; the key file is re-read when it changes (it was restored from a backup)."""
    configured = settings.KF_SIGNING_KEY.strip()
    if configured:
        cache_key: tuple = ("env", configured)
        key = _cache.get(cache_key) or _from_seed_text(configured, where="KF_SIGNING_KEY")
    else:
        path = key_file_path()
        if not path.exists():
            key_file_create(path)
        stat = path.stat()
        cache_key = ("file", str(path), stat.st_ino, stat.st_mtime_ns, stat.st_size)
        key = _cache.get(cache_key) or _from_seed_text(_read_key_file(path), where=str(path))
    if cache_key not in _cache:
        with _cache_lock:
            if len(_cache) > 32:  # settings of earlier tests
                _cache.clear()
            _cache[cache_key] = key
    return key


def key_file_path() -> Path:
    return Path(settings.KF_DATA_DIR) / KEY_FILE_NAME


def _read_key_file(path: Path) -> str:
    try:
        lines = [line.strip() for line in path.read_text().splitlines()]
    except OSError as exc:
        raise SigningKeyUnavailable(f"The signing key file {path} cannot be read ({exc.strerror}).") from None
    entries = [line for line in lines if line and not line.startswith("#")]
    if len(entries) != 1:
        raise SigningKeyUnavailable(f"The signing key file {path} must hold exactly one key.")
    return entries[0]


def key_file_create(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    seed = base64.b64encode(os.urandom(SEED_BYTES)).decode()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{random.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(_KEY_FILE_HEADER + seed + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process won: everyone uses its key
    finally:
        tmp.unlink()
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def head_sign(*, ws_id: str, tree_size: int, root_hash: str, at: str) -> tuple[str, str]:
    """(base64 signature, key id) of a head."""
    key = signing_key()
    message = head_message(ws_id=ws_id, tree_size=tree_size, root_hash=root_hash, at=at)
    return base64.b64encode(key.private.sign(message)).decode(), key.key_id


def head_signature_valid(*, ws_id: str, tree_size: int, root_hash: str, at: str, signature: str) -> bool:
    """Whether the configured key signed this head."""
    try:
        raw = b64decode(signature)
    except (binascii.Error, ValueError, TypeError):
        return False
    message = head_message(ws_id=ws_id, tree_size=tree_size, root_hash=root_hash, at=at)
    return signature_valid(signing_key().public, raw, message)

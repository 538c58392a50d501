"""Envelope encryption for secrets and the master keys that wrap it.

A value is sealed with AES-256-GCM under a fresh random data key (96-bit random nonce), with associated
data binding workspace id, name and version, so a ciphertext copied to another row fails to open. The
data key is wrapped with AES-256-GCM under a versioned master key, its associated data binding the same
facts plus the master version. Master keys never enter the database: they come from KF_MASTER_KEY
("v1:<base64 32 bytes>[,v2:…]") or, when that is unset, from the key file KF_DATA_DIR/master_keys
(0600), which rotation extends. Nothing here logs, and no message carries a value or key material.
"""

import base64
import binascii
import fcntl
import json
import os
import re
import secrets as random
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from django.conf import settings

from api.errors import Conflict

KEY_BYTES = 32
NONCE_BYTES = 12
KEY_FILE_NAME = "master_keys"
_ENTRY = re.compile(r"^v([1-9][0-9]{0,8}):([A-Za-z0-9+/=_-]+)$")
_KEY_FILE_HEADER = ("# kf secrets master keys. Keep this file private and back it up with the database:\n"
                    "# without it no secret can be decrypted. One \"v<N>:<base64 32 bytes>\" per line;\n"
                    "# \"retired\" marks a version no secret uses any more (kept for restored backups).\n")


class SecretCorrupted(Conflict):
    """A stored secret failed authentication: its ciphertext, wrapped key or binding was altered, or the
    master key of its version is not the one that sealed it."""

    default_detail = "The stored secret could not be decrypted."


class MasterKeyUnavailable(Conflict):
    """The master key configuration cannot serve this request (missing version, malformed entry)."""

    default_detail = "The secrets master key is not available."


@dataclass(frozen=True)
class Keyring:
    keys: dict[int, bytes]
    retired: frozenset[int]
    source: str  # "env" (KF_MASTER_KEY) or "file"

    @property
    def newest(self) -> int:
        return max(self.keys)

    def key(self, version: int) -> bytes:
        try:
            return self.keys[version]
        except KeyError:
            where = "KF_MASTER_KEY" if self.source == "env" else "the master key file"
            have = ", ".join(f"v{v}" for v in sorted(self.keys))
            raise MasterKeyUnavailable(
                f"Master key v{version} is needed but {where} only has {have}.",
                details={"key_version": version}) from None


@dataclass(frozen=True)
class Sealed:
    wrapped_key: bytes
    ciphertext: bytes


# --- associated data -----------------------------------------------------------------------------

def _value_ad(ws_id: str, name: str, version: int) -> bytes:
    return b"kf.secret.value\x00" + json.dumps([ws_id, name, version]).encode()


def _key_ad(ws_id: str, name: str, version: int, key_version: int) -> bytes:
    return b"kf.secret.key\x00" + json.dumps([ws_id, name, version, key_version]).encode()


def _encrypt(key: bytes, plaintext: bytes, ad: bytes) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, ad)


def _decrypt(key: bytes, blob: bytes, ad: bytes) -> bytes:
    if len(blob) < NONCE_BYTES + 16:
        raise InvalidTag()
    return AESGCM(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], ad)


# --- sealing -------------------------------------------------------------------------------------

def seal(*, value: str, ws_id: str, name: str, version: int, key_version: int, master_key: bytes) -> Sealed:
    data_key = AESGCM.generate_key(bit_length=256)
    ciphertext = _encrypt(data_key, value.encode(), _value_ad(ws_id, name, version))
    wrapped = _encrypt(master_key, data_key, _key_ad(ws_id, name, version, key_version))
    return Sealed(wrapped_key=wrapped, ciphertext=ciphertext)


def unwrap(*, wrapped_key: bytes, ws_id: str, name: str, version: int, key_version: int,
           master_key: bytes) -> bytes:
    try:
        data_key = _decrypt(master_key, bytes(wrapped_key), _key_ad(ws_id, name, version, key_version))
    except InvalidTag:
        raise SecretCorrupted(
            f"Secret {name} could not be decrypted: its wrapped data key failed authentication "
            f"(altered, moved, or sealed with a different master key v{key_version}).",
            details={"name": name, "part": "wrapped_key"}) from None
    if len(data_key) != KEY_BYTES:
        raise SecretCorrupted(f"Secret {name} has a malformed data key.", details={"name": name})
    return data_key


def open_sealed(*, wrapped_key: bytes, ciphertext: bytes, ws_id: str, name: str, version: int,
                key_version: int, master_key: bytes) -> str:
    data_key = unwrap(wrapped_key=wrapped_key, ws_id=ws_id, name=name, version=version,
                      key_version=key_version, master_key=master_key)
    try:
        raw = _decrypt(data_key, bytes(ciphertext), _value_ad(ws_id, name, version))
    except InvalidTag:
        raise SecretCorrupted(
            f"Secret {name} could not be decrypted: its ciphertext failed authentication "
            "(altered, or copied from another secret or version).",
            details={"name": name, "part": "ciphertext"}) from None
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise SecretCorrupted(f"Secret {name} decrypted to invalid text.", details={"name": name}) from None


def rewrap(*, wrapped_key: bytes, ws_id: str, name: str, version: int, from_version: int, from_key: bytes,
           to_version: int, to_key: bytes) -> bytes:
    """The same data key, wrapped by another master version; the ciphertext does not change."""
    data_key = unwrap(wrapped_key=wrapped_key, ws_id=ws_id, name=name, version=version,
                      key_version=from_version, master_key=from_key)
    return _encrypt(to_key, data_key, _key_ad(ws_id, name, version, to_version))


# --- master keys ---------------------------------------------------------------------------------

def _decode_key(text: str) -> bytes | None:
    try:
        raw = base64.b64decode(text.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == KEY_BYTES else None


def parse_entries(entries: list[str], *, where: str) -> dict[int, tuple[bytes, bool]]:
    """`v<N>:<base64>` entries (optionally followed by ` retired`) → {N: (key, retired)}. Errors name
    the entry by position, never by content: it is key material."""
    keys: dict[int, tuple[bytes, bool]] = {}
    for index, entry in enumerate(entries, start=1):
        words = entry.split()
        retired = len(words) == 2 and words[1] == "retired"
        match = _ENTRY.match(words[0]) if words and (len(words) == 1 or retired) else None
        key = _decode_key(match.group(2)) if match else None
        if match is None or key is None:
            raise MasterKeyUnavailable(
                f"{where}: entry {index} is not of the form v<N>:<base64 of 32 bytes>.",
                details={"entry": index})
        version = int(match.group(1))
        if version in keys:
            raise MasterKeyUnavailable(f"{where}: version v{version} appears twice.", details={"entry": index})
        keys[version] = (key, retired)
    if not keys:
        raise MasterKeyUnavailable(f"{where} has no master key.")
    return keys


def format_entry(version: int, key: bytes) -> str:
    return f"v{version}:{base64.b64encode(key).decode()}"


_cache_lock = threading.Lock()
_cache: dict[tuple, Keyring] = {}


def keyring() -> Keyring:
    """The configured master keys. The key file is re-read when it changes (another process rotated)."""
    configured = settings.KF_MASTER_KEY.strip()
    if configured:
        cache_key: tuple = ("env", configured)
        ring = _cache.get(cache_key)
        if ring is None:
            parsed = parse_entries([e.strip() for e in configured.split(",") if e.strip()], where="KF_MASTER_KEY")
            ring = Keyring(keys={v: k for v, (k, _) in parsed.items()}, retired=frozenset(), source="env")
            with _cache_lock:
                _cache[cache_key] = ring
        return ring
    path = key_file_path()
    try:
        stat = path.stat()
    except FileNotFoundError:
        key_file_create(path)
        stat = path.stat()
    cache_key = ("file", str(path), stat.st_ino, stat.st_mtime_ns, stat.st_size)
    ring = _cache.get(cache_key)
    if ring is None:
        parsed = _read_key_file(path)
        ring = Keyring(keys={v: k for v, (k, _) in parsed.items()},
                       retired=frozenset(v for v, (_, r) in parsed.items() if r), source="file")
        with _cache_lock:
            if len(_cache) > 32:  # old file states and settings of earlier tests
                _cache.clear()
            _cache[cache_key] = ring
    return ring


def key_file_path() -> Path:
    return Path(settings.KF_DATA_DIR) / KEY_FILE_NAME


def _read_key_file(path: Path) -> dict[int, tuple[bytes, bool]]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise MasterKeyUnavailable(f"The master key file {path} cannot be read ({exc.strerror}).") from None
    lines = [line.strip() for line in text.splitlines()]
    return parse_entries([line for line in lines if line and not line.startswith("#")], where=str(path))


def _write_new(path: Path, text: str) -> Path:
    """A new private file beside `path` holding `text`, flushed to disk."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{random.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    return tmp


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def key_file_create(path: Path) -> None:
    """First use: a fresh v1 in a 0600 file. The content is written under a temporary name (O_EXCL)
    and linked into place; link() fails if the file exists, so processes starting together (daphne and
    a worker) all end up with the one that won, and none ever reads a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _write_new(path, _KEY_FILE_HEADER + format_entry(1, AESGCM.generate_key(bit_length=256)) + "\n")
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    _fsync_dir(path.parent)


@contextmanager
def _key_file_locked(path: Path) -> Iterator[dict[int, tuple[bytes, bool]]]:
    """Read-modify-write of the key file under an exclusive flock: rotation already holds the database
    lock, this also covers two installations that (wrongly) share one data folder."""
    lock_path = path.with_name(f".{path.name}.lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if not path.exists():
            key_file_create(path)
        yield _read_key_file(path)
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _key_file_replace(path: Path, keys: dict[int, tuple[bytes, bool]]) -> None:
    lines = [format_entry(v, k) + (" retired" if r else "") for v, (k, r) in sorted(keys.items())]
    tmp = _write_new(path, _KEY_FILE_HEADER + "\n".join(lines) + "\n")
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def key_file_add_version() -> int:
    """Appends a new master version (temp file + fsync + rename; old versions kept) and returns it."""
    path = key_file_path()
    with _key_file_locked(path) as keys:
        version = max(keys) + 1
        keys[version] = (AESGCM.generate_key(bit_length=256), False)
        _key_file_replace(path, keys)
    return version


def key_file_mark_retired(versions: set[int]) -> None:
    """Marks versions retired in the file (they stay in it, for backups taken before the rotation)."""
    path = key_file_path()
    with _key_file_locked(path) as keys:
        todo = {v for v in versions if v in keys and not keys[v][1]}
        if todo:
            for v in todo:
                keys[v] = (keys[v][0], True)
            _key_file_replace(path, keys)

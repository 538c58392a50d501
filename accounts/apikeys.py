"""API key format: `kf_` + 12-char public id + 40-char secret + 6-char base62 CRC32 of what precedes.

The checksum lets a malformed or mistyped key be refused without touching the database, and lets
secret scanners recognise a kf key. Only SHA-256(secret) is stored.
"""

import hashlib
import re
import zlib
from typing import NamedTuple

from api.ids import BASE62, random_base62

PUBLIC_LEN = 12
SECRET_LEN = 40
CRC_LEN = 6
_SHAPE = re.compile(rf"^kf_([0-9A-Za-z]{{{PUBLIC_LEN}}})([0-9A-Za-z]{{{SECRET_LEN}}})([0-9A-Za-z]{{{CRC_LEN}}})$")


def _base62(n: int, width: int) -> str:
    out = []
    for _ in range(width):
        n, r = divmod(n, 62)
        out.append(BASE62[r])
    return "".join(reversed(out))


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode()), CRC_LEN)


class ParsedKey(NamedTuple):
    public_id: str
    secret: str


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def generate() -> tuple[str, ParsedKey]:
    public_id, secret = random_base62(PUBLIC_LEN), random_base62(SECRET_LEN)
    body = f"kf_{public_id}{secret}"
    return body + _checksum(body), ParsedKey(public_id, secret)


def parse(raw: str) -> ParsedKey | None:
    """The key's parts, or None if its shape or checksum is wrong."""
    match = _SHAPE.match(raw)
    if not match:
        return None
    public_id, secret, crc = match.groups()
    if _checksum(f"kf_{public_id}{secret}") != crc:
        return None
    return ParsedKey(public_id, secret)

"""Fixed-window counters in the shared cache (Redis in the scaled-out shape)."""

import hashlib
import time

from django.core.cache import cache

from api.errors import RateLimited


def _key(bucket: str, ident: str, window: int) -> tuple[str, int]:
    start = int(time.time()) // window * window
    digest = hashlib.sha256(ident.encode()).hexdigest()[:32]
    return f"rl:{bucket}:{digest}:{start}", start + window


def count(bucket: str, ident: str, window: int) -> int:
    key, _ = _key(bucket, ident, window)
    return int(cache.get(key, 0))


def check(bucket: str, ident: str, *, limit: int, window: int, message: str | None = None) -> None:
    """Raise RateLimited if `limit` hits have already been recorded in this window."""
    key, window_end = _key(bucket, ident, window)
    if int(cache.get(key, 0)) >= limit:
        raise RateLimited(message, retry_after=window_end - int(time.time()))


def hit(bucket: str, ident: str, *, window: int) -> int:
    key, _ = _key(bucket, ident, window)
    cache.add(key, 0, timeout=window + 1)
    try:
        return cache.incr(key)
    except ValueError:  # expired between add and incr
        cache.set(key, 1, timeout=window + 1)
        return 1


def hit_and_check(bucket: str, ident: str, *, limit: int, window: int, message: str | None = None) -> None:
    """Count this request, then refuse it if it is over the limit."""
    key, window_end = _key(bucket, ident, window)
    if hit(bucket, ident, window=window) > limit:
        raise RateLimited(message, retry_after=window_end - int(time.time()))


def reset(bucket: str, ident: str, window: int) -> None:
    key, _ = _key(bucket, ident, window)
    cache.delete(key)

"""Opaque, unguessable, prefixed ids: `ws_3hK…` (prefix + 22 base62 chars ≈ 131 bits)."""

import functools
import secrets
import string
from typing import Any

from django.db import models

BASE62 = string.digits + string.ascii_letters


def random_base62(length: int) -> str:
    # 8 random bits per character drawn, 5.95 used: the modulo bias is below (62/256)**length.
    n = int.from_bytes(secrets.token_bytes(length), "big")
    out = []
    for _ in range(length):
        n, r = divmod(n, 62)
        out.append(BASE62[r])
    return "".join(out)


def new_id(prefix: str) -> str:
    return f"{prefix}_{random_base62(22)}"


class PrefixedIdField(models.CharField):
    """Primary key of the form `<prefix>_<random>`, generated on creation."""

    def __init__(self, prefix: str = "", *args: Any, **kwargs: Any) -> None:
        self.prefix = prefix
        kwargs.setdefault("max_length", 40)
        kwargs.setdefault("primary_key", True)
        kwargs.setdefault("editable", False)
        kwargs["default"] = functools.partial(new_id, prefix)
        super().__init__(*args, **kwargs)

    def deconstruct(self) -> tuple[str, str, list[Any], dict[str, Any]]:
        name, path, args, kwargs = super().deconstruct()
        kwargs.pop("default", None)
        kwargs["prefix"] = self.prefix
        return name, path, args, kwargs

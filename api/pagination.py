"""Keyset (cursor) pagination: `?cursor=…&limit=…` → `{"items": […], "next_cursor": "…" | null}`.

The cursor is the sort key of the last item returned, so pages stay stable while rows are added.
"""

import base64
import json
from datetime import datetime
from typing import Any

from django.core.exceptions import ValidationError
from django.db.models import Model, Q, QuerySet
from rest_framework.request import Request

from api.errors import InvalidRequest

DEFAULT_LIMIT = 50
MAX_LIMIT = 200


def _encode(values: list[Any]) -> str:
    raw = json.dumps([v.isoformat() if isinstance(v, datetime) else v for v in values])
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode(cursor: str) -> list[Any]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        values = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest("The cursor is malformed.", details={"cursor": ["malformed"]}) from exc
    if not isinstance(values, list) or len(values) != 2:
        raise InvalidRequest("The cursor is malformed.", details={"cursor": ["malformed"]})
    return values


def page_limit(request: Request) -> int:
    raw = request.query_params.get("limit")
    if raw in (None, ""):
        return DEFAULT_LIMIT
    try:
        limit = int(raw)
    except ValueError as exc:
        raise InvalidRequest("limit must be an integer.", details={"limit": ["not an integer"]}) from exc
    if limit < 1:
        raise InvalidRequest("limit must be at least 1.", details={"limit": ["must be ≥ 1"]})
    return min(limit, MAX_LIMIT)


def paginate(queryset: QuerySet, request: Request, *, order_field: str = "created_at") -> tuple[list[Model], str | None]:
    """One page for an API request's `?cursor=…&limit=…`."""
    return paginate_rows(queryset, cursor=request.query_params.get("cursor"), limit=page_limit(request),
                         order_field=order_field)


def paginate_rows(queryset: QuerySet, *, cursor: str | None, limit: int,
                  order_field: str = "created_at") -> tuple[list[Model], str | None]:
    """Newest first by `order_field`, ties broken by primary key."""
    qs = queryset.order_by(f"-{order_field}", "-pk")
    if cursor:
        value, pk = _decode(cursor)
        field = queryset.model._meta.get_field(order_field)
        try:
            value = field.to_python(value)
        except (ValidationError, TypeError, ValueError) as exc:
            raise InvalidRequest("The cursor is malformed.", details={"cursor": ["malformed"]}) from exc
        qs = qs.filter(Q(**{f"{order_field}__lt": value}) | Q(**{order_field: value, "pk__lt": pk}))
    rows = list(qs[: limit + 1])
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        last = rows[-1]
        next_cursor = _encode([getattr(last, order_field), last.pk])
    return rows, next_cursor

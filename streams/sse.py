"""The one SSE streamer: a job's events with seq > cursor from the database, then a wait for the
next wake-up (channel layer group `job.<id>`, with a short poll as the fallback), then the next read.
An async iterator served by daphne's event loop: no thread is held per follower."""

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import close_old_connections
from django.http import HttpRequest, StreamingHttpResponse
from rest_framework.renderers import BaseRenderer, JSONRenderer

from api.errors import InvalidRequest
from streams.models import Job
from streams.selectors import events_after
from streams.services import job_group


class EventStreamRenderer(BaseRenderer):
    """Lets DRF accept `Accept: text/event-stream`. Streams bypass it; errors come out as JSON."""

    media_type = "text/event-stream"
    format = "sse"
    charset = "utf-8"

    def render(self, data: Any, accepted_media_type: str | None = None, renderer_context: Any = None) -> bytes:
        return JSONRenderer().render(data)


SSE_RENDERERS = [JSONRenderer, EventStreamRenderer]


def sse_cursor(request: HttpRequest) -> int:
    """`Last-Event-ID` (a reconnecting EventSource) wins over `?cursor=`; both mean "after seq N"."""
    raw = request.headers.get("Last-Event-ID") or request.GET.get("cursor") or "0"
    try:
        cursor = int(raw)
    except ValueError as exc:
        raise InvalidRequest("cursor must be a whole number.", details={"cursor": ["not an integer"]}) from exc
    if cursor < 0:
        raise InvalidRequest("cursor must be ≥ 0.", details={"cursor": ["negative"]})
    return cursor


def sse_format(seq: int, type: str, data: dict[str, Any]) -> str:
    return f"id: {seq}\nevent: {type}\ndata: {json.dumps(data, separators=(',', ':'), default=str)}\n\n"


def _read(job_id: str, cursor: int) -> tuple[list[tuple[int, str, dict[str, Any]]], bool]:
    close_old_connections()
    rows = [(e.seq, e.type, e.data) for e in events_after(job_id=job_id, cursor=cursor)]
    finished = False
    if not rows:
        finished = Job.objects.filter(pk=job_id, status__in=Job.FINAL).exists()
        if finished:
            # The job may have ended between the two queries; its `end` committed with the status.
            rows = [(e.seq, e.type, e.data) for e in events_after(job_id=job_id, cursor=cursor)]
    return rows, finished


_read_async = sync_to_async(_read, thread_sensitive=False)


async def job_event_stream(job_id: str, cursor: int) -> AsyncIterator[str]:
    layer = get_channel_layer()
    channel = await layer.new_channel()
    group = job_group(job_id)
    await layer.group_add(group, channel)
    poll = settings.KF_SSE_POLL_SECONDS
    heartbeat = settings.KF_SSE_HEARTBEAT_SECONDS
    # One receive stays pending across polls: cancelling a channel layer's receive in the middle (as
    # wait_for does on every timeout) is where layers have lost wake-ups or hung; it is cancelled once,
    # when the stream ends.
    wake: asyncio.Task[Any] | None = None
    try:
        yield "retry: 2000\n\n"
        last_sent = time.monotonic()
        while True:
            rows, finished = await _read_async(job_id, cursor)
            for seq, type, data in rows:
                yield sse_format(seq, type, data)
                cursor = seq
                last_sent = time.monotonic()
                if type == "end":
                    return
            if rows:
                continue  # there may be more than one page
            if finished:
                return  # the caller was already past `end`
            if wake is None:
                wake = asyncio.ensure_future(layer.receive(channel))
            done, _ = await asyncio.wait({wake}, timeout=poll)
            if done:
                wake.exception()  # retrieved (a failed receive only means: read the log again)
                wake = None
            if time.monotonic() - last_sent >= heartbeat:
                yield ": heartbeat\n\n"
                last_sent = time.monotonic()
    finally:
        if wake is not None:
            wake.cancel()
            await asyncio.wait({wake}, timeout=1)
        await layer.group_discard(group, channel)


def sse_response(*, job_id: str, cursor: int, headers: dict[str, str] | None = None) -> StreamingHttpResponse:
    response = StreamingHttpResponse(job_event_stream(job_id, cursor), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # nginx: do not buffer the stream
    for name, value in (headers or {}).items():
        response[name] = value
    return response

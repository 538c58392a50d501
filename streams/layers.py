"""The embedded shape's channel layer: Channels' in-memory layer, made safe for sends from other
threads. The in-process task runner appends events from pool threads; a plain asyncio.Queue put
from there would not wake daphne's event loop until something else did."""

import asyncio
from typing import Any

from channels.layers import InMemoryChannelLayer


class LocalChannelLayer(InMemoryChannelLayer):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._receiving: dict[str, asyncio.AbstractEventLoop] = {}

    async def receive(self, channel: str) -> dict[str, Any]:
        self._receiving[channel] = asyncio.get_running_loop()
        try:
            return await super().receive(channel)
        finally:
            self._receiving.pop(channel, None)

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        loop = self._receiving.get(channel)
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if loop is not None and loop is not running and not loop.is_closed():
            # Hand the message to the receiver's own loop, which wakes it.
            send = super().send
            loop.call_soon_threadsafe(lambda: loop.create_task(send(channel, message)))
            return
        await super().send(channel, message)

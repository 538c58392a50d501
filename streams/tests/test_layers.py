import asyncio
import threading

from asgiref.sync import async_to_sync

from streams.layers import LocalChannelLayer


def test_send_from_another_thread_wakes_the_receiver():
    layer = LocalChannelLayer()

    async def main() -> dict:
        channel = await layer.new_channel()
        await layer.group_add("job.x", channel)
        threading.Timer(0.2, lambda: async_to_sync(layer.group_send)("job.x", {"type": "job.wake"})).start()
        # Nothing else runs on this loop: without the thread-safe hand-over this would wait forever.
        return await asyncio.wait_for(layer.receive(channel), timeout=10)

    assert asyncio.run(main()) == {"type": "job.wake"}

"""Channels consumers resolve the user like HTTP requests do: session cookie or API key."""

import pytest
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from channels.testing import WebsocketCommunicator
from django.conf import settings

from accounts.channels_auth import KfAuthMiddlewareStack

pytestmark = pytest.mark.django_db(transaction=True)


class WhoAmI(AsyncJsonWebsocketConsumer):
    async def connect(self) -> None:
        await self.accept()
        user = self.scope["user"]
        await self.send_json({"user": user.pk if user.is_authenticated else None,
                              "key": getattr(self.scope.get("api_key"), "pk", None)})


async def whoami(headers: list[tuple[bytes, bytes]]) -> dict:
    communicator = WebsocketCommunicator(KfAuthMiddlewareStack(WhoAmI.as_asgi()), "/ws/whoami", headers=headers)
    connected, _ = await communicator.connect()
    assert connected
    message = await communicator.receive_json_from()
    await communicator.disconnect()
    return message


@pytest.mark.asyncio
async def test_session_cookie_resolves_the_user(owner, client_for):
    from asgiref.sync import sync_to_async

    client = await sync_to_async(client_for)(owner)
    cookie = f"{settings.SESSION_COOKIE_NAME}={client.cookies['sessionid'].value}".encode()
    assert (await whoami([(b"cookie", cookie)]))["user"] == owner.pk


@pytest.mark.asyncio
async def test_api_key_resolves_the_user(owner, client_for):
    from asgiref.sync import sync_to_async

    client = await sync_to_async(client_for)(owner)
    body = (await sync_to_async(client.post)("/api/account/api-keys", {"name": "ws"}, format="json")).json()
    result = await whoami([(b"authorization", f"Bearer {body['key']}".encode())])
    assert result == {"user": owner.pk, "key": body["id"]}


@pytest.mark.asyncio
async def test_bad_key_or_no_credentials_is_anonymous(db):
    assert (await whoami([(b"authorization", b"Bearer kf_bogus")]))["user"] is None
    assert (await whoami([]))["user"] is None

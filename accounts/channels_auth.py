"""One user resolution for Channels consumers: the API key in `Authorization: Bearer`, else the
session cookie, exactly as for HTTP requests."""

from typing import Any

from channels.auth import AuthMiddleware
from channels.db import database_sync_to_async
from channels.middleware import BaseMiddleware
from channels.sessions import CookieMiddleware, SessionMiddleware
from django.contrib.auth.models import AnonymousUser

from accounts.authentication import bearer_token, user_for_api_key


class ApiKeyOrSessionMiddleware(BaseMiddleware):
    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        scope = dict(scope)
        headers = dict(scope.get("headers") or [])
        token = bearer_token(headers.get(b"authorization", b"").decode("latin-1"))
        if token is not None:
            found = await database_sync_to_async(user_for_api_key)(token)
            scope["user"], scope["api_key"] = found if found else (AnonymousUser(), None)
            return await self.inner(scope, receive, send)
        return await AuthMiddleware(self.inner)(scope, receive, send)


def KfAuthMiddlewareStack(inner: Any) -> Any:  # noqa: N802 — named like Channels' AuthMiddlewareStack
    return CookieMiddleware(SessionMiddleware(ApiKeyOrSessionMiddleware(inner)))

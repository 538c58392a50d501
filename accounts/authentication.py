"""Who is calling: an API key (`Authorization: Bearer kf_…`) or the session cookie (+CSRF)."""

from rest_framework import authentication
from rest_framework.request import Request

from accounts.models import ApiKey, User
from accounts.services import api_key_authenticate
from api.errors import Unauthenticated

INVALID_KEY = "Invalid, expired or revoked API key."


def bearer_token(header_value: str) -> str | None:
    scheme, _, token = header_value.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip()


def user_for_api_key(raw: str) -> tuple[User, ApiKey] | None:
    key = api_key_authenticate(raw=raw)
    return (key.user, key) if key else None


class ApiKeyAuthentication(authentication.BaseAuthentication):
    def authenticate(self, request: Request) -> tuple[User, ApiKey] | None:
        header = request.headers.get("Authorization", "")
        if not header:
            return None
        token = bearer_token(header)
        if token is None:
            return None
        found = user_for_api_key(token)
        if found is None:
            raise Unauthenticated(INVALID_KEY)
        return found

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="kf"'

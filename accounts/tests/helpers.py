import re
from base64 import b32decode

from django.core import mail
from django_otp.oath import totp
from rest_framework.test import APIClient


def link_token(index: int = -1, path: str = "/verify") -> str:
    body = mail.outbox[index].body
    match = re.search(rf"{re.escape(path)}\?token=(\S+)", body)
    assert match, body
    return match.group(1)


def totp_code(secret_b32: str, *, steps_ahead: int = 0) -> str:
    """The authenticator app's code; steps_ahead=1 gives the next 30 s step's code, which the
    server accepts (±1 step tolerance) even after it accepted the current step's."""
    return f"{totp(b32decode(secret_b32), drift=steps_ahead):06d}"


def enable_mfa(client: APIClient) -> tuple[str, list[str]]:
    """Sets up and confirms TOTP through the API; returns the secret and the recovery codes."""
    secret = client.post("/api/auth/mfa-setup").json()["secret"]
    response = client.post("/api/auth/mfa-verify", {"code": totp_code(secret)}, format="json")
    assert response.status_code == 200, response.content
    return secret, response.json()["recovery_codes"]

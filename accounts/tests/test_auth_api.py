"""The Auth group: register, verify, login (+MFA, rate limits), forgot/reset, logout."""

import pytest
from allauth.account.models import EmailAddress
from django.contrib.sessions.models import Session
from django.core import mail
from datetime import timedelta

from django.utils import timezone
from rest_framework.test import APIClient

from accounts.models import AuditRecord, EmailToken, Membership, Role, User, UserSession
from django_otp.plugins.otp_totp.models import TOTPDevice

from accounts.tests.helpers import enable_mfa, link_token, totp_code
from conftest import PASSWORD, make_user


# Emails leave after commit, as in production, so these tests commit for real.
pytestmark = pytest.mark.django_db(transaction=True)


def register(client: APIClient, email: str = "new@example.com", password: str = PASSWORD, **extra):
    return client.post("/auth/register", {"email": email, "password": password, **extra}, format="json")


# --- register / verify ---------------------------------------------------------------------------

def test_register_creates_user_personal_workspace_and_sends_verification(anon, db):
    response = register(anon, "New@Example.com", name="Nia")
    assert response.status_code == 201, response.content
    user = response.json()["user"]
    assert set(user) >= {"id", "email", "name", "email_verified", "mfa_enabled", "avatar_url", "created_at"}
    assert user["email"] == "new@example.com" and user["name"] == "Nia"
    assert user["email_verified"] is False and user["mfa_enabled"] is False
    membership = Membership.objects.get(user_id=user["id"])
    assert membership.role == Role.OWNER and membership.workspace.personal
    assert len(mail.outbox) == 1 and mail.outbox[0].to == ["new@example.com"]
    assert "/verify?token=" in mail.outbox[0].body


@pytest.mark.parametrize("password", ["short", "password1234", "P@ssw0rd2024!", "qwertyuiop", "1234567890123",
                                      "aaaaaaaaaaaa", "new@example.com"])
def test_register_refuses_weak_and_breached_pattern_passwords(anon, db, password):
    response = register(anon, password=password)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_request"
    assert "password" in response.json()["error"]["details"]
    assert not User.objects.exists()


@pytest.mark.parametrize("body", [{}, {"email": "a@example.com"}, {"password": PASSWORD},
                                  {"email": "x" * 300 + "@example.com", "password": PASSWORD}])
def test_register_missing_or_bad_fields(anon, db, body):
    response = anon.post("/auth/register", body, format="json")
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_request"


def test_register_twice_is_refused(anon, owner):
    response = register(anon, owner.email.upper())
    assert response.status_code == 400
    assert "email" in response.json()["error"]["details"]


def test_verify_token_is_single_use(anon, db):
    register(anon)
    token = link_token()
    first = anon.get(f"/auth/verify?token={token}")
    assert first.status_code == 200 and first.json()["verified"] is True
    assert EmailAddress.objects.get(email="new@example.com").verified
    replay = anon.get(f"/auth/verify?token={token}")
    assert replay.status_code == 400 and replay.json()["error"]["code"] == "invalid_request"


def test_verify_token_expires(anon, db):
    register(anon)
    token = link_token()
    EmailToken.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    assert anon.get(f"/auth/verify?token={token}").status_code == 400
    assert not EmailAddress.objects.get(email="new@example.com").verified


@pytest.mark.parametrize("token", ["", "bogus", "a" * 300])
def test_verify_bogus_token(anon, db, token):
    assert anon.get(f"/auth/verify?token={token}").status_code == 400


def test_resend_verification_is_limited_per_email(anon, db, settings):
    settings.KF_EMAIL_REQUESTS_PER_HOUR = 2
    register(anon)
    for _ in range(2):
        assert anon.post("/auth/resend-verification", {"email": "new@example.com"}, format="json").status_code == 202
    response = anon.post("/auth/resend-verification", {"email": "new@example.com"}, format="json")
    assert response.status_code == 429 and "Retry-After" in response
    assert len(mail.outbox) == 3  # the registration email and two resends


# --- login ---------------------------------------------------------------------------------------

def login(client: APIClient, email: str, password: str = PASSWORD, **extra):
    return client.post("/auth/login", {"email": email, "password": password, **extra}, format="json")


def test_login_returns_user_and_rotates_session_key(anon, owner):
    anon.get("/auth/verify?token=x")  # any request
    anon.cookies["sessionid"] = "attacker-fixed-session-id"
    response = login(anon, owner.email)
    assert response.status_code == 200
    assert response.json()["user"]["id"] == owner.pk
    key = anon.cookies["sessionid"].value
    assert key != "attacker-fixed-session-id"
    assert UserSession.objects.filter(user=owner, session_key=key).exists()
    assert AuditRecord.objects.filter(subject=owner, action="login").exists()


def test_login_wrong_password_and_unknown_email_answer_alike(anon, owner):
    wrong = login(anon, owner.email, "wrong-password-123")
    unknown = login(anon, "nobody@example.com", "wrong-password-123")
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json()
    assert wrong.json()["error"]["code"] == "unauthenticated"
    failed = AuditRecord.objects.filter(action="login_failed")
    assert failed.count() == 2 and all("wrong-password" not in str(r.meta) for r in failed)


def test_login_requires_verified_email(anon, db):
    make_user("unverified@example.com", verified=False)
    response = login(anon, "unverified@example.com")
    assert response.status_code == 403
    assert response.json()["error"]["details"]["reason"] == "email_unverified"


def test_login_is_case_insensitive_on_email(anon, owner):
    assert login(anon, owner.email.upper()).status_code == 200


def test_failed_logins_per_account_are_rate_limited_then_released(anon, owner, settings, monkeypatch):
    settings.KF_LOGIN_FAILURES_PER_ACCOUNT = 3
    for _ in range(3):
        assert login(anon, owner.email, "wrong-password-123").status_code == 401
    blocked = login(anon, owner.email)  # even the right password waits out the window
    assert blocked.status_code == 429
    assert blocked.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(blocked["Retry-After"]) <= settings.KF_LOGIN_FAILURE_WINDOW_SECONDS
    # No permanent lockout: once the window has passed the account can sign in again.
    import accounts.ratelimit as rl

    real_time = rl.time.time
    monkeypatch.setattr(rl.time, "time", lambda: real_time() + settings.KF_LOGIN_FAILURE_WINDOW_SECONDS + 1)
    assert login(anon, owner.email).status_code == 200


def test_failed_logins_per_ip_are_rate_limited(anon, db, settings):
    settings.KF_LOGIN_FAILURES_PER_IP = 4
    for i in range(4):
        login(anon, f"user{i}@example.com", "wrong-password-123")
    response = login(anon, "another@example.com", "wrong-password-123")
    assert response.status_code == 429 and int(response["Retry-After"]) >= 1


def test_logout_kills_the_session_server_side(owner, client_for):
    client = client_for(owner)
    key = client.cookies["sessionid"].value
    assert client.post("/auth/logout").status_code == 204
    assert not Session.objects.filter(session_key=key).exists()
    assert not UserSession.objects.filter(session_key=key).exists()
    replay = APIClient()
    replay.cookies["sessionid"] = key
    assert replay.get("/api/account/me").status_code == 401


# --- forgot / reset ------------------------------------------------------------------------------

def test_forgot_does_not_reveal_whether_the_account_exists(anon, owner):
    known = anon.post("/auth/forgot", {"email": owner.email}, format="json")
    unknown = anon.post("/auth/forgot", {"email": "nobody@example.com"}, format="json")
    assert known.status_code == unknown.status_code == 202
    assert known.json() == unknown.json()
    assert len(mail.outbox) == 1 and mail.outbox[0].to == [owner.email]


def test_forgot_is_limited_per_email(anon, owner, settings):
    settings.KF_EMAIL_REQUESTS_PER_HOUR = 2
    for _ in range(2):
        anon.post("/auth/forgot", {"email": owner.email}, format="json")
    assert anon.post("/auth/forgot", {"email": owner.email}, format="json").status_code == 429
    # …and unknown addresses are limited the same way, so the limit reveals nothing either.
    for _ in range(2):
        anon.post("/auth/forgot", {"email": "nobody@example.com"}, format="json")
    assert anon.post("/auth/forgot", {"email": "nobody@example.com"}, format="json").status_code == 429


def test_reset_changes_password_revokes_sessions_and_is_single_use(anon, owner, client_for):
    signed_in = client_for(owner)
    anon.post("/auth/forgot", {"email": owner.email}, format="json")
    token = link_token(path="/reset")
    new_password = "lantern-meadow-frost-77"
    response = anon.post("/auth/reset", {"token": token, "password": new_password}, format="json")
    assert response.status_code == 200
    assert signed_in.get("/api/account/me").status_code == 401
    assert not UserSession.objects.filter(user=owner).exists()
    assert login(APIClient(), owner.email, new_password).status_code == 200
    replay = anon.post("/auth/reset", {"token": token, "password": "another-pass-phrase-9"}, format="json")
    assert replay.status_code == 400 and replay.json()["error"]["code"] == "invalid_request"


def test_reset_token_is_void_after_any_password_change(anon, owner, client_for):
    anon.post("/auth/forgot", {"email": owner.email}, format="json")
    token = link_token(path="/reset")
    client = client_for(owner)
    client.post("/api/account/change-password",
                {"old_password": PASSWORD, "new_password": "lantern-meadow-frost-77"}, format="json")
    response = anon.post("/auth/reset", {"token": token, "password": "another-pass-phrase-9"}, format="json")
    assert response.status_code == 400


def test_reset_token_expires(anon, owner, settings):
    anon.post("/auth/forgot", {"email": owner.email}, format="json")
    token = link_token(path="/reset")
    settings.PASSWORD_RESET_TIMEOUT = -1
    assert anon.post("/auth/reset", {"token": token, "password": "lantern-meadow-frost-77"},
                     format="json").status_code == 400


@pytest.mark.parametrize("token", ["", "nodot", "!!!.abc", "dXNyX25vcGU.abc-def"])
def test_reset_bogus_tokens(anon, db, token):
    response = anon.post("/auth/reset", {"token": token, "password": "lantern-meadow-frost-77"}, format="json")
    assert response.status_code == 400


def test_reset_refuses_weak_password(anon, owner):
    anon.post("/auth/forgot", {"email": owner.email}, format="json")
    response = anon.post("/auth/reset", {"token": link_token(path="/reset"), "password": "password"}, format="json")
    assert response.status_code == 400 and "password" in response.json()["error"]["details"]
    assert login(anon, owner.email).status_code == 200


# --- MFA -----------------------------------------------------------------------------------------

def test_mfa_setup_returns_secret_uri_and_svg_qr(owner, client_for):
    body = client_for(owner).post("/api/auth/mfa-setup").json()
    assert body["otpauth_uri"].startswith("otpauth://totp/kf%3A") and "issuer=kf" in body["otpauth_uri"] and f"secret={body['secret']}" in body["otpauth_uri"]
    assert body["qr_svg"].lstrip().startswith("<?xml") and "<svg" in body["qr_svg"]


def test_mfa_verify_confirms_and_returns_recovery_codes(owner, client_for):
    client = client_for(owner)
    secret, codes = enable_mfa(client)
    assert len(codes) == 10 and len(set(codes)) == 10
    assert client.get("/api/account/me").json()["user"]["mfa_enabled"] is True
    from accounts.models import RecoveryCode

    stored = list(RecoveryCode.objects.filter(user=owner).values_list("code_hash", flat=True))
    assert all(code.replace("-", "") not in stored for code in codes)  # only hashes are kept


def test_mfa_verify_rejects_wrong_code_and_throttles(owner, client_for, settings):
    settings.OTP_TOTP_THROTTLE_FACTOR = 30
    client = client_for(owner)
    client.post("/api/auth/mfa-setup")
    assert client.post("/api/auth/mfa-verify", {"code": "000000"}, format="json").status_code == 400
    response = client.post("/api/auth/mfa-verify", {"code": "000000"}, format="json")
    assert response.status_code == 429  # django-otp's backoff: the second try comes too soon
    assert client.get("/api/account/me").json()["user"]["mfa_enabled"] is False


def test_login_with_mfa_requires_a_code_and_never_accepts_one_twice(owner, client_for):
    secret, _ = enable_mfa(client_for(owner))
    no_code = login(APIClient(), owner.email)
    assert no_code.status_code == 401 and no_code.json()["error"]["code"] == "mfa_required"
    # The code confirmed at setup belongs to a time step that is already spent.
    spent = login(APIClient(), owner.email, otp=totp_code(secret))
    assert spent.status_code == 401 and spent.json()["error"]["code"] == "mfa_required"
    TOTPDevice.objects.filter(user=owner).update(throttling_failure_count=0, throttling_failure_timestamp=None)
    code = totp_code(secret, steps_ahead=1)
    assert login(APIClient(), owner.email, otp=code).status_code == 200
    replay = login(APIClient(), owner.email, otp=code)
    assert replay.status_code == 401 and replay.json()["error"]["code"] == "mfa_required"


def test_failed_codes_are_throttled(owner, client_for, settings):
    settings.OTP_TOTP_THROTTLE_FACTOR = 30  # a 30 s wait after one wrong code: no race with the clock
    secret, _ = enable_mfa(client_for(owner))
    assert login(APIClient(), owner.email, otp="000000").status_code == 401
    throttled = login(APIClient(), owner.email, otp=totp_code(secret, steps_ahead=1))
    assert throttled.status_code == 429 and int(throttled["Retry-After"]) >= 1


def test_failed_codes_count_as_failed_logins(owner, client_for, settings):
    settings.KF_LOGIN_FAILURES_PER_ACCOUNT = 2
    _, codes = enable_mfa(client_for(owner))
    for _ in range(2):
        login(APIClient(), owner.email, otp="zzzz-zzzz-zzzz")
        TOTPDevice.objects.filter(user=owner).update(throttling_failure_count=0, throttling_failure_timestamp=None)
    assert login(APIClient(), owner.email, otp=codes[0]).status_code == 429


def test_login_with_recovery_code_is_single_use(owner, client_for):
    _, codes = enable_mfa(client_for(owner))
    assert login(APIClient(), owner.email, otp=codes[0]).status_code == 200
    assert login(APIClient(), owner.email, otp=codes[0]).status_code == 401
    assert AuditRecord.objects.filter(subject=owner, action="mfa_recovery_code_used").count() == 1


def test_wrong_password_with_mfa_is_plain_401_not_mfa_required(owner, client_for):
    enable_mfa(client_for(owner))
    response = login(APIClient(), owner.email, "wrong-password-123")
    assert response.json()["error"]["code"] == "unauthenticated"


def test_mfa_disable_needs_password_and_code(owner, client_for):
    client = client_for(owner)
    secret, codes = enable_mfa(client)
    wrong_pw = client.post("/api/auth/mfa-disable", {"password": "nope-nope-nope", "code": codes[0]}, format="json")
    assert wrong_pw.status_code == 400
    wrong_code = client.post("/api/auth/mfa-disable", {"password": PASSWORD, "code": "abcd-efab-cdef"}, format="json")
    assert wrong_code.status_code == 400
    TOTPDevice.objects.filter(user=owner).update(throttling_failure_count=0, throttling_failure_timestamp=None)
    ok = client.post("/api/auth/mfa-disable", {"password": PASSWORD, "code": codes[1]}, format="json")
    assert ok.status_code == 200
    assert client.get("/api/account/me").json()["user"]["mfa_enabled"] is False
    assert login(APIClient(), owner.email).status_code == 200


def test_mfa_endpoints_refuse_api_keys(owner, client_for):
    key = client_for(owner).post("/api/account/api-keys", {"name": "ci", "scopes": ["admin"]}, format="json").json()["key"]
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    for path in ("/api/auth/mfa-setup", "/api/auth/mfa-verify"):
        response = client.post(path, {"code": "123456"}, format="json")
        assert response.status_code == 403 and response.json()["error"]["details"]["reason"] == "session_required"


def test_mfa_setup_needs_a_recent_login(owner, client_for):
    client = client_for(owner)
    UserSession.objects.filter(user=owner).update(created_at=timezone.now() - timedelta(hours=2))
    response = client.post("/api/auth/mfa-setup")
    assert response.status_code == 403
    assert response.json()["error"]["details"]["reason"] == "recent_login_required"


def test_mfa_endpoints_need_auth(anon, db):
    assert anon.post("/api/auth/mfa-setup").status_code == 401
    assert anon.post("/api/auth/mfa-verify", {"code": "1"}, format="json").status_code == 401


@pytest.mark.parametrize("path,body", [
    ("/auth/login", {}), ("/auth/login", {"email": "a@example.com"}), ("/auth/login", {"password": PASSWORD}),
    ("/auth/login", {"email": ["a"], "password": PASSWORD}), ("/auth/forgot", {}), ("/auth/forgot", {"email": "nope"}),
    ("/auth/reset", {}), ("/auth/reset", {"token": "x"}), ("/auth/resend-verification", {"email": 5}),
])
def test_public_auth_endpoints_reject_bad_input(anon, path, body):
    response = anon.post(path, body, format="json")
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_request"
    assert response.json()["error"]["details"]

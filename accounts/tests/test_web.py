"""The server-rendered pages of the Auth and Account groups (their forms are driven in test_browser)."""

import re
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import pytest
from allauth.account.models import EmailAddress
from django.core import mail
from django.test import Client, RequestFactory
from django.utils import timezone
from django_otp.plugins.otp_totp.models import TOTPDevice

from accounts import services
from accounts.models import AuditRecord, User
from api import handlers
from conftest import PASSWORD, make_user


def page(client: Client, path: str, status: int = 200) -> str:
    response = client.get(path)
    assert response.status_code == status, (path, response.status_code)
    assert response["Content-Type"].startswith("text/html")
    return response.content.decode()


# --- public pages ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("path", "marker"), [
    ("/register", 'data-api="/auth/register"'),
    ("/login", 'data-api="/auth/login"'),
    ("/forgot", 'data-api="/auth/forgot"'),
    ("/reset?token=abc.def", 'data-api="/auth/reset"'),
])
def test_public_page_renders_its_form(anon: Client, db: None, path: str, marker: str) -> None:
    response = anon.get(path)
    assert response.status_code == 200
    html = response.content.decode()
    assert marker in html
    assert 'class="site-header"' in html and 'class="site-footer"' in html
    assert 'href="/static/kf.css"' in html and 'src="/static/kf.js"' in html
    assert response.cookies["csrftoken"].value  # kf.js sends it back as X-CSRFToken


def test_register_page_labels_every_input(anon: Client, db: None) -> None:
    html = page(anon, "/register")
    for name in ("name", "email", "password"):
        assert f'<label for="register-{name}">' in html
        assert f'id="register-{name}" name="{name}"' in html


def test_login_page_keeps_a_local_next(anon: Client, db: None) -> None:
    assert 'data-next="/account#api-keys"' in page(anon, "/login?next=/account%23api-keys")


@pytest.mark.parametrize("target", ["https://evil.example/", "//evil.example/x", "/\\evil.example", "javascript:alert(1)"])
def test_login_page_drops_a_foreign_next(anon: Client, db: None, target: str) -> None:
    html = page(anon, "/login?" + f"next={target}")
    assert 'data-next="/account"' in html
    assert "evil.example" not in html


def test_login_page_for_a_signed_in_user_offers_to_sign_in_again(owner: User, client_for: Any) -> None:
    html = page(client_for(owner), "/login?next=/account")
    assert 'data-test="login-again"' in html
    assert owner.email in html


def test_signing_in_again_from_the_login_page_starts_a_fresh_session(owner: User, client_for: Any) -> None:
    client = client_for(owner)
    assert 'data-test="login-again"' in page(client, "/login?next=/account")
    response = client.post("/auth/login", {"email": owner.email, "password": PASSWORD}, format="json")
    assert response.status_code == 200, response.content
    sessions = client.get("/api/account/sessions").json()["items"]
    assert [s["current"] for s in sessions] == [True]


def test_reset_page_carries_the_token(anon: Client, db: None) -> None:
    html = page(anon, "/reset?token=dXNy.abc-123")
    assert 'name="token" value="dXNy.abc-123"' in html


def test_reset_page_without_token_explains(anon: Client, db: None) -> None:
    html = page(anon, "/reset")
    assert 'data-test="reset-missing"' in html
    assert 'data-api="/auth/reset"' not in html


def test_home_redirects_anonymous_to_login(anon: Client, db: None) -> None:
    response = anon.get("/")
    assert response.status_code == 302
    assert response["Location"] == "/login"


def test_home_redirects_signed_in_to_account(owner: User, client_for: Any) -> None:
    response = client_for(owner).get("/")
    assert response.status_code == 302
    assert response["Location"] == "/account"


def test_pages_refuse_unsafe_methods(owner: User, client: Client) -> None:
    assert client.post("/login").status_code == 405
    assert client.post("/account").status_code == 405


# --- /verify --------------------------------------------------------------------------------------

def _emailed_path(to: str) -> str:
    message = next(m for m in reversed(mail.outbox) if to in m.to)
    url = re.search(r"https?://\S+", message.body).group(0)
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


def test_verify_with_a_valid_token_confirms_the_address(anon: Client, db: None,
                                                        django_capture_on_commit_callbacks: Any) -> None:
    user = make_user("newbie@example.com", verified=False)
    with django_capture_on_commit_callbacks(execute=True):
        services.email_verification_send(user=user, email=user.email)
    path = _emailed_path(user.email)
    assert path.startswith("/verify?token=")
    assert anon.head(path).status_code == 405  # a link checker's HEAD does not spend the token

    html = page(anon, path)
    assert 'data-test="verify-ok"' in html
    assert "newbie@example.com" in html
    assert EmailAddress.objects.get(user=user, email=user.email).verified

    again = page(anon, path, status=400)  # single use
    assert 'data-test="verify-error"' in again
    assert "invalid, used or expired" in again


def test_verify_with_a_bogus_token_shows_the_error(anon: Client, db: None) -> None:
    html = page(anon, "/verify?token=not-a-real-token", status=400)
    assert 'data-test="verify-error"' in html
    assert 'data-test="verify-ok"' not in html


def test_verify_without_a_token_shows_the_error(anon: Client, db: None) -> None:
    assert 'data-test="verify-error"' in page(anon, "/verify", status=400)


# --- /account -------------------------------------------------------------------------------------

def test_account_redirects_anonymous_to_login_with_next(anon: Client, db: None) -> None:
    response = anon.get("/account")
    assert response.status_code == 302
    assert response["Location"] == "/login?next=/account"


@pytest.mark.parametrize("who", ["owner", "member", "viewer", "outsider"])
def test_account_renders_for_each_user(request: pytest.FixtureRequest, client_for: Any, who: str) -> None:
    user = request.getfixturevalue(who)
    response = client_for(user).get("/account")
    assert response.status_code == 200
    assert response.cookies["csrftoken"].value
    html = response.content.decode()
    assert f"Signed in as {user.email}" in html
    assert f'data-whoami>{user.name}</span>' in html
    for section in ("profile", "password", "two-factor", "sessions", "api-keys", "export", "audit", "delete"):
        assert f'id="{section}"' in html
    assert html.count('data-test="this-session"') == 1


def test_account_lists_only_the_callers_keys_and_sessions(owner: User, outsider: User, client_for: Any) -> None:
    mine, _ = services.api_key_create(user=owner, name="laptop", scopes=["read", "write"], expires_in_days=30, ip=None)
    theirs, _ = services.api_key_create(user=outsider, name="oscar-ci", scopes=["read"], expires_in_days=None, ip=None)
    client_for(outsider)  # a session of Oscar's
    html = page(client_for(owner), "/account")
    assert f"{mine.prefix}…" in html and "laptop" in html and "read, write" in html
    assert theirs.prefix not in html and "oscar-ci" not in html
    assert html.count('data-test="session-row"') == 1
    assert f'data-key-id="{mine.id}"' in html


def test_account_shows_a_pending_new_email(owner: User, client_for: Any) -> None:
    services.profile_update(user=owner, email="alice.new@example.com", ip=None)
    html = page(client_for(owner), "/account")
    assert re.search(r'data-test="pending-email"\s*>', html)  # not hidden
    assert "alice.new@example.com" in html


def test_account_without_pending_email_hides_the_line(owner: User, client_for: Any) -> None:
    html = page(client_for(owner), "/account")
    assert re.search(r'data-test="pending-email"\s+hidden', html)


def test_account_shows_the_avatar(owner: User, client_for: Any) -> None:
    User.objects.filter(pk=owner.pk).update(avatar="usr_x-0011.png")
    html = page(client_for(owner), "/account")
    assert 'src="/api/account/avatar/usr_x-0011.png"' in html


def test_account_offers_mfa_setup_when_off(owner: User, client_for: Any) -> None:
    html = page(client_for(owner), "/account")
    assert 'data-action="mfa-setup"' in html
    assert 'data-api="/api/auth/mfa-disable"' not in html


def test_account_offers_mfa_disable_when_on(owner: User, client_for: Any) -> None:
    device = TOTPDevice.objects.create(user=owner, name="authenticator", confirmed=True)
    from django_otp.oath import TOTP
    code = TOTP(device.bin_key).token()
    html = page(client_for(owner, otp=f"{code:06d}"), "/account")
    assert 'data-api="/api/auth/mfa-disable"' in html
    assert 'data-action="mfa-setup"' not in html


def test_account_audit_shows_50_rows_and_a_cursor_for_more(owner: User, client_for: Any) -> None:
    now = timezone.now()
    AuditRecord.objects.bulk_create(
        AuditRecord(action="probe", actor=owner, subject=owner, target=f"t{i}", at=now - timedelta(minutes=i))
        for i in range(60)
    )
    client = client_for(owner)  # + 1 "login" record
    html = page(client, "/account")
    assert html.count('data-test="audit-row"') == 50
    cursor = re.search(r'data-action="audit-more" data-cursor="([^"]+)"', html).group(1)
    rest = client.get(f"/api/account/audit-list?cursor={cursor}")
    assert rest.status_code == 200
    assert len(rest.json()["items"]) == 11
    assert rest.json()["next_cursor"] is None


def test_account_audit_ignores_the_page_query_string(owner: User, client_for: Any) -> None:
    html = page(client_for(owner), "/account?cursor=garbage&limit=1")
    assert html.count('data-test="audit-row"') == 1  # the login, and no 500 from the bad cursor
    assert re.search(r'data-test="audit-more"\s+hidden', html)


def test_account_escapes_user_content(owner: User, client_for: Any) -> None:
    User.objects.filter(pk=owner.pk).update(name="<script>alert(1)</script>")
    html = page(client_for(owner), "/account")
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_account_pending_deletion_shows_only_the_cancel_banner(owner: User, client_for: Any) -> None:
    client = client_for(owner)
    services.delete_request(user=owner, password=PASSWORD, ip=None)
    owner.refresh_from_db()
    html = page(client, "/account")
    assert 'data-test="pending-delete"' in html
    assert 'data-action="cancel-delete"' in html
    assert owner.delete_after.strftime("%-d %B %Y") in html
    assert 'data-test="pending-logout"' in html
    assert 'id="api-keys"' not in html and 'id="sessions"' not in html

    assert client.post("/api/account/cancel-delete").status_code == 200
    assert 'id="api-keys"' in page(client, "/account")


# --- error pages ----------------------------------------------------------------------------------

def test_unknown_path_renders_the_html_404_in_the_layout(anon: Client, db: None) -> None:
    html = page(anon, "/no/such/page", status=404)
    assert 'data-test="error-404"' in html
    assert "/no/such/page" in html
    assert 'class="site-header"' in html and 'href="/login"' in html


def test_unknown_path_404_shows_the_signed_in_user(owner: User, client_for: Any) -> None:
    html = page(client_for(owner), "/nothing-here", status=404)
    assert 'data-test="error-404"' in html
    assert 'data-test="logout"' in html


def test_unknown_api_path_stays_json(anon: Client, db: None) -> None:
    response = anon.get("/api/nothing-here")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_csrf_failure_on_a_page_renders_the_html_403(db: None) -> None:
    response = Client(enforce_csrf_checks=True).post("/login")
    assert response.status_code == 403
    html = response.content.decode()
    assert 'data-test="error-403"' in html
    assert "reload the page" in html


def test_500_page_shows_the_request_id(db: None, rf: RequestFactory) -> None:
    request = rf.get("/account")
    request.request_id = "req_abc123def456"
    response = handlers.handler500(request)
    assert response.status_code == 500
    html = response.content.decode()
    assert 'data-test="error-500"' in html
    assert "req_abc123def456" in html
    assert 'data-test="logout"' not in html  # the layout without the user menu


def test_400_page_renders_in_the_layout(db: None, rf: RequestFactory) -> None:
    from django.contrib.auth.models import AnonymousUser

    request = rf.get("/whatever")
    request.user = AnonymousUser()
    response = handlers.handler400(request)
    assert response.status_code == 400
    html = response.content.decode()
    assert 'data-test="error-400"' in html and 'class="site-header"' in html

"""The Account group: sessions, password, profile, deletion, export, audit, API keys."""

import io
import json
import zipfile
from datetime import timedelta

import pytest
from django.contrib.sessions.models import Session
from django.core import mail
from django.test.utils import CaptureQueriesContext
from django.db import connection
from django.utils import timezone
from PIL import Image
from rest_framework.test import APIClient

from accounts import apikeys, services
from accounts.models import ApiKey, AuditRecord, User, UserSession, Workspace
from accounts.tests.helpers import link_token
from conftest import PASSWORD

pytestmark = pytest.mark.django_db(transaction=True)

NEW_PASSWORD = "lantern-meadow-frost-77"


def key_client(raw: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return client


def make_key(client: APIClient, scopes=("read",), **extra) -> dict:
    response = client.post("/api/account/api-keys", {"name": "k", "scopes": list(scopes), **extra}, format="json")
    assert response.status_code == 201, response.content
    return response.json()


# --- sessions ------------------------------------------------------------------------------------

def test_sessions_list_marks_the_current_one(owner, client_for):
    laptop = client_for(owner)
    client_for(owner)
    items = laptop.get("/api/account/sessions").json()["items"]
    assert len(items) == 2
    assert set(items[0]) >= {"id", "created_at", "last_seen_at", "ip", "user_agent", "current"}
    assert [i["current"] for i in items].count(True) == 1


def test_session_revoke_signs_that_session_out_at_once(owner, client_for):
    laptop, phone = client_for(owner), client_for(owner)
    phone_id = next(i["id"] for i in phone.get("/api/account/sessions").json()["items"] if i["current"])
    assert laptop.post(f"/api/account/sessions/{phone_id}/revoke").status_code == 204
    assert phone.get("/api/account/me").status_code == 401
    assert laptop.get("/api/account/me").status_code == 200
    assert AuditRecord.objects.filter(subject=owner, action="session_revoke", target=phone_id).exists()


def test_session_revoke_of_another_users_session_is_not_found(owner, outsider, client_for):
    victim = client_for(owner)
    victim_id = victim.get("/api/account/sessions").json()["items"][0]["id"]
    attacker = client_for(outsider)
    response = attacker.post(f"/api/account/sessions/{victim_id}/revoke")
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    assert victim.get("/api/account/me").status_code == 200
    assert attacker.post("/api/account/sessions/ses_doesnotexist/revoke").status_code == 404


def test_sessions_need_auth(anon, db):
    assert anon.get("/api/account/sessions").status_code == 401


# --- password ------------------------------------------------------------------------------------

def test_change_password_revokes_other_sessions_only(owner, client_for):
    current, other = client_for(owner), client_for(owner)
    response = current.post("/api/account/change-password",
                            {"old_password": PASSWORD, "new_password": NEW_PASSWORD}, format="json")
    assert response.status_code == 200
    assert current.get("/api/account/me").status_code == 200
    assert other.get("/api/account/me").status_code == 401
    assert UserSession.objects.filter(user=owner).count() == 1
    assert APIClient().post("/auth/login", {"email": owner.email, "password": NEW_PASSWORD},
                            format="json").status_code == 200


def test_change_password_wrong_old_or_weak_new(owner, client_for):
    client = client_for(owner)
    wrong = client.post("/api/account/change-password", {"old_password": "nope", "new_password": NEW_PASSWORD},
                        format="json")
    assert wrong.status_code == 400 and "old_password" in wrong.json()["error"]["details"]
    weak = client.post("/api/account/change-password", {"old_password": PASSWORD, "new_password": "password"},
                       format="json")
    assert weak.status_code == 400 and "new_password" in weak.json()["error"]["details"]
    missing = client.post("/api/account/change-password", {}, format="json")
    assert missing.status_code == 400


def test_password_is_stored_with_argon2(db, settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.Argon2PasswordHasher"]
    response = APIClient().post("/auth/register", {"email": "argon@example.com", "password": PASSWORD}, format="json")
    assert response.status_code == 201
    assert User.objects.get(email="argon@example.com").password.startswith("argon2$")


# --- profile -------------------------------------------------------------------------------------

def png_bytes(size=(64, 48), fmt="PNG", **save) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(out, format=fmt, **save)
    return out.getvalue()


def upload(client: APIClient, data: bytes, name="a.png"):
    from django.core.files.uploadedfile import SimpleUploadedFile

    return client.post("/api/account/update-profile", {"avatar": SimpleUploadedFile(name, data)}, format="multipart")


def test_update_profile_name(owner, client_for):
    response = client_for(owner).post("/api/account/update-profile", {"name": "Alice L."}, format="json")
    assert response.status_code == 200 and response.json()["user"]["name"] == "Alice L."


def test_avatar_is_reencoded_png_and_served(owner, client_for, settings):
    client = client_for(owner)
    exif = Image.Exif()
    exif[0x010E] = "gps and secrets"
    response = upload(client, png_bytes((800, 600), "JPEG", exif=exif), "me.jpg")
    assert response.status_code == 200, response.content
    url = response.json()["user"]["avatar_url"]
    served = client.get(url)
    assert served.status_code == 200 and served["Content-Type"] == "image/png"
    image = Image.open(io.BytesIO(b"".join(served.streaming_content)))
    assert image.format == "PNG" and max(image.size) <= 256
    assert "exif" not in image.info


def test_avatar_must_be_an_image(owner, client_for):
    response = upload(client_for(owner), b"<?php system($_GET['c']); ?>", "evil.png")
    assert response.status_code == 400 and "avatar" in response.json()["error"]["details"]
    polyglot = upload(client_for(owner), b"GIF89a" + b"\x00" * 20, "x.gif")
    assert polyglot.status_code == 400


def test_avatar_size_is_limited(owner, client_for, settings):
    settings.KF_AVATAR_MAX_BYTES = 1000
    response = upload(client_for(owner), png_bytes((300, 300)) + b"\x00" * 2000)
    assert response.status_code == 413 and response.json()["error"]["code"] == "payload_too_large"


def test_email_change_needs_verification_before_it_is_used(owner, client_for):
    client = client_for(owner)
    response = client.post("/api/account/update-profile", {"email": "alice@new.example"}, format="json")
    assert response.status_code == 200
    user = response.json()["user"]
    assert user["email"] == owner.email and user["pending_email"] == "alice@new.example"
    assert mail.outbox[-1].to == ["alice@new.example"]
    login_new = APIClient().post("/auth/login", {"email": "alice@new.example", "password": PASSWORD}, format="json")
    assert login_new.status_code == 401
    assert APIClient().get(f"/auth/verify?token={link_token()}").status_code == 200
    assert APIClient().post("/auth/login", {"email": "alice@new.example", "password": PASSWORD},
                            format="json").status_code == 200
    assert APIClient().post("/auth/login", {"email": owner.email, "password": PASSWORD},
                            format="json").status_code == 401


def test_email_change_to_a_taken_address_is_refused(owner, outsider, client_for):
    response = client_for(owner).post("/api/account/update-profile", {"email": outsider.email}, format="json")
    assert response.status_code == 400


def test_email_change_by_api_key_is_refused(owner, client_for):
    raw = make_key(client_for(owner), ["admin"])["key"]
    response = key_client(raw).post("/api/account/update-profile", {"email": "x@new.example"}, format="json")
    assert response.status_code == 403
    assert key_client(raw).post("/api/account/update-profile", {"name": "ok"}, format="json").status_code == 200


# --- deletion ------------------------------------------------------------------------------------

def test_request_delete_needs_password_and_sets_date(owner, client_for):
    client = client_for(owner)
    assert client.post("/api/account/request-delete", {"password": "nope"}, format="json").status_code == 400
    response = client.post("/api/account/request-delete", {"password": PASSWORD}, format="json")
    assert response.status_code == 200
    delete_after = response.json()["delete_after"]
    assert delete_after.endswith("Z")
    owner.refresh_from_db()
    assert timedelta(days=29, hours=23) < owner.delete_after - timezone.now() <= timedelta(days=30)


def test_pending_deletion_can_only_cancel(owner, client_for):
    client = client_for(owner)
    client.post("/api/account/request-delete", {"password": PASSWORD}, format="json")
    fresh = client_for(owner)  # can still sign in…
    blocked = fresh.get("/api/account/sessions")
    assert blocked.status_code == 403
    assert blocked.json()["error"]["details"]["reason"] == "account_pending_deletion"
    assert fresh.post("/api/account/api-keys", {"name": "x"}, format="json").status_code == 403
    cancel = fresh.post("/api/account/cancel-delete")  # …only to cancel
    assert cancel.status_code == 200 and cancel.json() == {"delete_after": None}
    assert fresh.get("/api/account/sessions").status_code == 200


def test_purge_removes_accounts_past_their_date_and_all_their_data(owner, member, team, client_for):
    client = client_for(owner)
    make_key(client)
    client.post("/api/account/request-delete", {"password": PASSWORD}, format="json")
    personal = Workspace.objects.get(memberships__user=owner, personal=True)
    assert services.accounts_purge_due() == 0  # not yet due
    User.objects.filter(pk=owner.pk).update(delete_after=timezone.now() - timedelta(seconds=1))
    assert services.accounts_purge_due() == 1
    assert not User.objects.filter(pk=owner.pk).exists()
    assert not ApiKey.objects.filter(user_id=owner.pk).exists()
    assert not UserSession.objects.filter(user_id=owner.pk).exists()
    assert not Workspace.objects.filter(pk__in=[personal.pk, team.pk]).exists()
    assert client.get("/api/account/me").status_code == 401
    assert User.objects.filter(pk=member.pk).exists()


# --- export --------------------------------------------------------------------------------------

def test_export_builds_a_zip_that_only_the_owner_can_download(owner, outsider, client_for, task_runner):
    from conftest import wait_for

    client = client_for(owner)
    make_key(client)
    first = client.get("/api/account/export-data").json()
    assert first["status"] in ("pending", "ready")
    body = wait_for(lambda: (b := client.get("/api/account/export-data").json())["status"] == "ready" and b)
    assert body["expires_at"].endswith("Z")
    download = client.get(body["url"])
    assert download.status_code == 200
    archive = zipfile.ZipFile(io.BytesIO(b"".join(download.streaming_content)))
    names = set(archive.namelist())
    assert {"user.json", "workspaces.json", "memberships.json", "sessions.json", "api_keys.json",
            "audit.json"} <= names
    user = json.loads(archive.read("user.json"))[0]
    assert user["email"] == owner.email
    keys = archive.read("api_keys.json").decode()
    assert "secret" not in keys and ApiKey.objects.get(user=owner).secret_hash not in keys
    other = client_for(outsider).get(body["url"])
    assert other.status_code == 404
    assert AuditRecord.objects.filter(subject=owner, action="export").exists()


def test_export_link_expires(owner, client_for, settings, task_runner):
    from conftest import wait_for

    client = client_for(owner)
    client.get("/api/account/export-data")
    body = wait_for(lambda: (b := client.get("/api/account/export-data").json())["status"] == "ready" and b)
    settings.KF_EXPORT_LINK_SECONDS = -1
    assert client.get(body["url"]).status_code == 404
    assert client.get("/api/account/export-data/download?token=forged").status_code == 404


# --- audit ---------------------------------------------------------------------------------------

def test_audit_list_records_security_actions_without_secrets(owner, client_for):
    client = client_for(owner)
    raw = make_key(client)["key"]
    client.post("/api/account/change-password", {"old_password": PASSWORD, "new_password": NEW_PASSWORD},
                format="json")
    items = client.get("/api/account/audit-list").json()["items"]
    actions = [i["action"] for i in items]
    assert {"login", "api_key_create", "password_change"} <= set(actions)
    assert set(items[0]) >= {"id", "at", "action", "actor", "target", "ip", "meta"}
    dump = json.dumps(list(AuditRecord.objects.values()), default=str)
    for secret in (raw, apikeys.parse(raw).secret, PASSWORD, NEW_PASSWORD):
        assert secret not in dump


def test_audit_list_shows_only_the_callers_records(owner, outsider, client_for):
    client_for(owner)
    items = client_for(outsider).get("/api/account/audit-list").json()["items"]
    assert items and all(i["actor"] in (outsider.pk, None) for i in items)


# --- API keys ------------------------------------------------------------------------------------

def test_api_key_create_shows_key_once_in_the_documented_format(owner, client_for):
    client = client_for(owner)
    body = make_key(client, ["read", "write"], expires_in_days=7)
    raw = body["key"]
    assert raw.startswith("kf_") and apikeys.parse(raw) is not None and len(raw) >= 3 + 12 + 32 + 6
    assert body["prefix"] == raw[:15] and body["scopes"] == ["read", "write"]
    listed = client.get("/api/account/api-keys").json()["items"]
    assert [k["id"] for k in listed] == [body["id"]]
    assert "key" not in listed[0] and raw not in json.dumps(listed)
    stored = ApiKey.objects.get(pk=body["id"])
    assert raw not in stored.secret_hash and stored.secret_hash == apikeys.secret_hash(apikeys.parse(raw).secret)


def test_api_key_authenticates_and_updates_last_used_throttled(owner, client_for):
    raw = make_key(client_for(owner))["key"]
    assert key_client(raw).get("/api/account/me").json()["user"]["id"] == owner.pk
    first = ApiKey.objects.get().last_used_at
    assert first is not None
    key_client(raw).get("/api/account/me")
    assert ApiKey.objects.get().last_used_at == first  # within the throttle window: no write


def test_read_key_cannot_write_and_write_key_can(owner, client_for):
    client = client_for(owner)
    read = make_key(client, ["read"])["key"]
    write = make_key(client, ["write"])["key"]
    denied = key_client(read).post("/api/account/update-profile", {"name": "x"}, format="json")
    assert denied.status_code == 403 and denied.json()["error"]["details"]["required_scope"] == "write"
    assert key_client(write).post("/api/account/update-profile", {"name": "x"}, format="json").status_code == 200
    assert key_client(write).get("/api/account/me").status_code == 200


def test_api_key_cannot_change_password_delete_account_or_create_keys(owner, client_for):
    raw = make_key(client_for(owner), ["admin"])["key"]
    client = key_client(raw)
    assert client.post("/api/account/change-password", {"old_password": PASSWORD, "new_password": NEW_PASSWORD},
                       format="json").status_code == 403
    assert client.post("/api/account/api-keys", {"name": "more"}, format="json").status_code == 403
    assert client.post("/api/account/request-delete", {"password": PASSWORD}, format="json").status_code == 403


def test_api_key_post_needs_no_csrf(owner, client_for):
    raw = make_key(client_for(owner), ["write"])["key"]
    client = APIClient(enforce_csrf_checks=True)
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert client.post("/api/account/update-profile", {"name": "x"}, format="json").status_code == 200


def test_revoked_key_stops_at_once(owner, client_for):
    client = client_for(owner)
    body = make_key(client)
    assert client.delete(f"/api/account/api-keys/{body['id']}").status_code == 204
    response = key_client(body["key"]).get("/api/account/me")
    assert response.status_code == 401 and response.json()["error"]["code"] == "unauthenticated"


def test_expired_key_is_refused(owner, client_for):
    body = make_key(client_for(owner), expires_in_days=1)
    ApiKey.objects.filter(pk=body["id"]).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert key_client(body["key"]).get("/api/account/me").status_code == 401


def test_malformed_keys_get_the_same_401_without_touching_the_database(owner, client_for):
    raw = make_key(client_for(owner))["key"]
    unknown = key_client(apikeys.generate()[0]).get("/api/account/me")
    bad_checksum = raw[:-1] + ("A" if raw[-1] != "A" else "B")
    for bad in (bad_checksum, "kf_short", "ghp_" + raw[3:], raw + "x", ""):
        response = key_client(bad).get("/api/account/me")
        assert response.status_code == 401
        assert response.json() == unknown.json()
    with CaptureQueriesContext(connection) as queries:
        assert services.api_key_authenticate(raw=bad_checksum) is None
    assert len(queries) == 0


def test_api_keys_of_others_are_not_found(owner, outsider, client_for):
    body = make_key(client_for(owner))
    response = client_for(outsider).delete(f"/api/account/api-keys/{body['id']}")
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    assert key_client(body["key"]).get("/api/account/me").status_code == 200
    assert client_for(outsider).get("/api/account/api-keys").json()["items"] == []


@pytest.mark.parametrize("body", [{}, {"name": "x", "scopes": ["root"]}, {"name": "x", "scopes": []},
                                  {"name": "x", "expires_in_days": 0}, {"name": "x" * 200}])
def test_api_key_create_bad_input(owner, client_for, body):
    response = client_for(owner).post("/api/account/api-keys", body, format="json")
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_request"


def test_disabled_user_keys_and_sessions_stop(owner, client_for):
    client = client_for(owner)
    raw = make_key(client)["key"]
    services.user_disable(user=owner, by=None, ip=None)
    assert client.get("/api/account/me").status_code == 401
    assert key_client(raw).get("/api/account/me").status_code == 401
    assert not Session.objects.exists()


@pytest.mark.parametrize("method,path", [
    ("get", "/api/account/me"), ("get", "/api/account/sessions"), ("post", "/api/account/sessions/ses_x/revoke"),
    ("post", "/api/account/change-password"), ("post", "/api/account/update-profile"),
    ("post", "/api/account/request-delete"), ("post", "/api/account/cancel-delete"),
    ("get", "/api/account/export-data"), ("get", "/api/account/export-data/download?token=x"),
    ("get", "/api/account/audit-list"), ("get", "/api/account/api-keys"), ("post", "/api/account/api-keys"),
    ("delete", "/api/account/api-keys/key_x"), ("get", "/api/workspaces"), ("post", "/api/auth/mfa-disable"),
])
def test_every_account_endpoint_needs_credentials(anon, db, method, path):
    response = getattr(anon, method)(path, {}, format="json") if method != "get" else anon.get(path)
    assert response.status_code == 401 and response.json()["error"]["code"] == "unauthenticated"

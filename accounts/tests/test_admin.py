import pytest
from django.contrib.sessions.models import Session

from accounts.models import ApiKey, AuditRecord, User
from conftest import make_user

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def operator():
    return User.objects.create_superuser(email="ops@example.com", password="ops-pass-phrase-42")


@pytest.fixture
def admin_client(client, operator):
    client.force_login(operator)
    return client


@pytest.mark.parametrize("model", ["user", "workspace", "membership", "apikey", "usersession", "auditrecord",
                                   "dataexport"])
def test_changelists_load_with_search(admin_client, owner, model):
    response = admin_client.get(f"/admin/accounts/{model}/?q=alice")
    assert response.status_code == 200


def test_api_key_admin_never_shows_the_secret(admin_client, owner, client_for):
    body = client_for(owner).post("/api/account/api-keys", {"name": "ci"}, format="json").json()
    page = admin_client.get(f"/admin/accounts/apikey/{body['id']}/change/").content.decode()
    key = ApiKey.objects.get(pk=body["id"])
    assert body["prefix"] in page
    assert key.secret_hash not in page and body["key"] not in page


def test_audit_log_is_read_only(admin_client, owner):
    record = AuditRecord.objects.create(action="login", actor=owner, subject=owner)
    assert admin_client.get("/admin/accounts/auditrecord/add/").status_code == 403
    response = admin_client.post(f"/admin/accounts/auditrecord/{record.pk}/change/", {"action": "edited"})
    assert response.status_code == 403
    assert AuditRecord.objects.get(pk=record.pk).action == "login"


def test_disable_action_kills_sessions_and_keys(admin_client, client_for):
    victim = make_user("victim@example.com")
    session = client_for(victim)
    key = session.post("/api/account/api-keys", {"name": "ci"}, format="json").json()["key"]
    response = admin_client.post("/admin/accounts/user/", {"action": "disable_users", "_selected_action": [victim.pk]})
    assert response.status_code == 302
    victim.refresh_from_db()
    assert not victim.is_active
    assert session.get("/api/account/me").status_code == 401
    from rest_framework.test import APIClient

    by_key = APIClient()
    by_key.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    assert by_key.get("/api/account/me").status_code == 401
    assert AuditRecord.objects.filter(subject=victim, action="user_disable").exists()
    assert Session.objects.count() == 1  # only the operator's


def test_admin_needs_staff(client, owner):
    client.force_login(owner)
    assert client.get("/admin/accounts/user/").status_code == 302

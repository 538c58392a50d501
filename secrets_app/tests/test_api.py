"""The Secrets group of API.md: list, set, reveal, delete, rotate-master — roles, API keys, bad input,
and values that must never leak (responses, errors, logs, audit, exports, admin)."""

import io
import json
import logging
import zipfile

import pytest
from django.conf import settings as django_settings
from rest_framework.test import APIClient

from accounts.models import AuditRecord, DataExport
from accounts.services import api_key_create, export_path, export_start
from conftest import wait_for
from secrets_app.models import MasterKey, Rotation, Secret

pytestmark = pytest.mark.django_db(transaction=True)

VALUE = "sk-live-4242-very-secret"


def put(client, name, value=VALUE, **extra):
    return client.post(f"/api/secrets/{name}", {"value": value, **extra}, format="json")


def key_client(user, scopes):
    _, raw = api_key_create(user=user, name="t", scopes=scopes, expires_in_days=None, ip=None)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return client


def assert_error(response, status, code):
    assert response.status_code == status, response.content
    assert response.json()["error"]["code"] == code
    assert VALUE not in response.content.decode()


# --- set, list, reveal, delete -------------------------------------------------------------------

def test_set_creates_then_updates_with_a_new_version(owner, client_for):
    client = client_for(owner)
    response = put(client, "API_KEY")
    assert response.status_code == 201
    body = response.json()
    assert body["name"] == "API_KEY" and body["version"] == 1 and "value" not in body
    assert body["created_at"].endswith("Z") and body["updated_at"].endswith("Z")
    again = put(client, "API_KEY", "second-value")
    assert again.status_code == 200 and again.json()["version"] == 2
    assert again.json()["created_at"] == body["created_at"]
    reveal = client.get("/api/secrets/API_KEY")
    assert reveal.status_code == 200
    assert reveal.json() == {"name": "API_KEY", "value": "second-value", "version": 2,
                                  "ws_id": owner.workspaces.get(personal=True).pk,
                                  "updated_at": reveal.json()["updated_at"]}
    assert reveal["Cache-Control"] == "no-store"
    row = Secret.objects.get(name="API_KEY")
    assert b"second-value" not in bytes(row.ciphertext) and VALUE.encode() not in bytes(row.ciphertext)


def test_list_shows_names_never_values(owner, client_for):
    client = client_for(owner)
    for name in ("ZETA", "ALPHA", "_PRIVATE"):
        assert put(client, name).status_code == 201
    response = client.get("/api/secrets")
    assert response.status_code == 200
    body = response.json()
    assert [item["name"] for item in body["items"]] == ["ALPHA", "ZETA", "_PRIVATE"]
    assert set(body["items"][0]) == {"name", "version", "created_at", "updated_at"}
    assert body["next_cursor"] is None and body["ws_id"] == owner.workspaces.get(personal=True).pk
    assert VALUE not in response.content.decode()


def test_list_paginates_by_name(owner, client_for):
    client = client_for(owner)
    for i in range(5):
        put(client, f"S_{i}")
    first = client.get("/api/secrets?limit=2").json()
    assert [i["name"] for i in first["items"]] == ["S_0", "S_1"] and first["next_cursor"]
    second = client.get(f"/api/secrets?limit=2&cursor={first['next_cursor']}").json()
    third = client.get(f"/api/secrets?limit=2&cursor={second['next_cursor']}").json()
    assert [i["name"] for i in second["items"] + third["items"]] == ["S_2", "S_3", "S_4"]
    assert third["next_cursor"] is None
    assert_error(client.get("/api/secrets?cursor=%%%"), 400, "invalid_request")
    assert_error(client.get("/api/secrets?limit=abc"), 400, "invalid_request")


def test_delete_removes_it(owner, client_for):
    client = client_for(owner)
    put(client, "GONE")
    assert client.delete("/api/secrets/GONE").status_code == 204
    assert_error(client.get("/api/secrets/GONE"), 404, "not_found")
    assert_error(client.delete("/api/secrets/GONE"), 404, "not_found")
    assert client.get("/api/secrets").json()["items"] == []
    assert put(client, "GONE").status_code == 201  # a new secret again, version 1


def test_set_reveal_delete_are_audited_by_name_only(owner, client_for):
    client = client_for(owner)
    put(client, "AUDITED")
    client.get("/api/secrets/AUDITED")
    client.delete("/api/secrets/AUDITED")
    records = list(AuditRecord.objects.filter(action__startswith="secret.").order_by("at"))
    assert [r.action for r in records] == ["secret.set", "secret.reveal", "secret.delete"]
    for record in records:
        assert record.actor == owner and record.target == "AUDITED" and record.meta["name"] == "AUDITED"
        assert record.ip == "127.0.0.1"
        assert VALUE not in json.dumps(record.meta) + record.target
    listed = client.get("/api/account/audit-list").json()["items"]
    assert {"secret.set", "secret.reveal", "secret.delete"} <= {i["action"] for i in listed}


# --- workspaces and roles ------------------------------------------------------------------------

def test_team_roles(team, owner, team_admin, member, viewer, outsider, client_for):
    ws = f"?ws_id={team.pk}"
    assert put(client_for(owner), "TEAM_KEY", ws_id=team.pk).status_code == 201
    admin = client_for(team_admin)
    assert put(admin, "TEAM_KEY", "by-admin", ws_id=team.pk).status_code == 200
    assert admin.get(f"/api/secrets/TEAM_KEY{ws}").json()["value"] == "by-admin"
    for user in (member, viewer):
        client = client_for(user)
        listed = client.get(f"/api/secrets{ws}")
        assert listed.status_code == 200 and [i["name"] for i in listed.json()["items"]] == ["TEAM_KEY"]
        assert_error(client.get(f"/api/secrets/TEAM_KEY{ws}"), 403, "forbidden")
        assert_error(put(client, "TEAM_KEY", ws_id=team.pk), 403, "forbidden")
        assert_error(client.delete(f"/api/secrets/TEAM_KEY{ws}"), 403, "forbidden")
    stranger = client_for(outsider)
    assert_error(stranger.get(f"/api/secrets{ws}"), 404, "not_found")
    assert_error(stranger.get(f"/api/secrets/TEAM_KEY{ws}"), 404, "not_found")
    assert_error(stranger.get(f"/api/secrets/NO_SUCH{ws}"), 404, "not_found")  # same answer: nothing leaks
    assert_error(put(stranger, "TEAM_KEY", ws_id=team.pk), 404, "not_found")
    assert_error(stranger.delete(f"/api/secrets/TEAM_KEY{ws}"), 404, "not_found")
    assert Secret.objects.get(workspace=team, name="TEAM_KEY").version == 2


def test_personal_secrets_are_separate(owner, outsider, client_for):
    put(client_for(owner), "SAME_NAME", "alice-value")
    put(client_for(outsider), "SAME_NAME", "oscar-value")
    assert client_for(outsider).get("/api/secrets/SAME_NAME").json()["value"] == "oscar-value"
    alice_ws = owner.workspaces.get(personal=True).pk
    assert_error(client_for(outsider).get(f"/api/secrets/SAME_NAME?ws_id={alice_ws}"), 404, "not_found")
    assert_error(client_for(outsider).get("/api/secrets?ws_id=ws_doesnotexist"), 404, "not_found")


def test_ws_id_in_the_query_works_for_set(team, owner, client_for):
    response = client_for(owner).post(f"/api/secrets/Q_KEY?ws_id={team.pk}", {"value": "v"}, format="json")
    assert response.status_code == 201 and Secret.objects.get(name="Q_KEY").workspace == team


# --- auth ----------------------------------------------------------------------------------------

def test_unauthenticated_and_csrf(owner, client_for, anon):
    assert_error(anon.get("/api/secrets"), 401, "unauthenticated")
    assert_error(anon.get("/api/secrets/X"), 401, "unauthenticated")
    assert_error(put(anon, "X"), 401, "unauthenticated")
    assert_error(anon.post("/api/secrets/rotate-master"), 401, "unauthenticated")
    client = client_for(owner)
    client.defaults.pop("HTTP_X_CSRFTOKEN")
    assert_error(put(client, "NO_CSRF"), 403, "forbidden")
    assert not Secret.objects.exists()


def test_api_keys_by_scope(owner):
    writer = key_client(owner, ["write"])
    assert put(writer, "BY_KEY").status_code == 201  # no CSRF for keys
    assert writer.get("/api/secrets/BY_KEY").json()["value"] == VALUE
    reader = key_client(owner, ["read"])
    assert [i["name"] for i in reader.get("/api/secrets").json()["items"]] == ["BY_KEY"]
    assert_error(reader.get("/api/secrets/BY_KEY"), 403, "forbidden")  # reading values needs write
    assert_error(put(reader, "BY_KEY"), 403, "forbidden")
    assert_error(reader.delete("/api/secrets/BY_KEY"), 403, "forbidden")
    assert writer.delete("/api/secrets/BY_KEY").status_code == 204


# --- bad input -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["lower", "1STARTS_WITH_DIGIT", "HAS-HYPHEN", "HAS.DOT", "A" * 129, "SPACE%20X",
                                  "%C3%84", "rotate-master-x", "..", "A%00B"])
def test_invalid_names(owner, client_for, name):
    client = client_for(owner)
    for response in (put(client, name), client.get(f"/api/secrets/{name}"), client.delete(f"/api/secrets/{name}")):
        assert_error(response, 400, "invalid_request")
        assert "name" in response.json()["error"]["details"]


def test_longest_name_is_fine(owner, client_for):
    assert put(client_for(owner), "A" * 128).status_code == 201


@pytest.mark.parametrize("body", [{}, {"value": None}, {"value": 42}, {"value": True}, {"value": ["x"]},
                                  {"value": {"a": 1}}, {"value": ""}, {"value": "a\x00b"},
                                  {"value": "x", "ws_id": 7}, {"value": "x", "ws_id": ["ws"]}])
def test_bad_bodies(owner, client_for, body):
    response = client_for(owner).post("/api/secrets/BAD", body, format="json")
    assert_error(response, 400, "invalid_request")
    assert not Secret.objects.exists()


def test_body_that_is_not_an_object(owner, client_for):
    client = client_for(owner)
    assert_error(client.post("/api/secrets/BAD", ["value"], format="json"), 400, "invalid_request")
    assert_error(client.post("/api/secrets/BAD", "{not json", content_type="application/json"), 400, "invalid_request")


def test_oversized_value(owner, client_for, settings):
    settings.KF_SECRET_MAX_BYTES = 64
    client = client_for(owner)
    assert put(client, "FITS", "é" * 32).status_code == 201  # 64 bytes
    response = put(client, "TOO_BIG", VALUE + "é" * 32)
    assert_error(response, 413, "payload_too_large")
    assert response.json()["error"]["details"]["max_bytes"] == 64
    assert not Secret.objects.filter(name="TOO_BIG").exists()


def test_default_cap_and_request_body_cap(owner, client_for):
    client = client_for(owner)
    limit = django_settings.KF_SECRET_MAX_BYTES
    assert put(client, "AT_LIMIT", "x" * limit).status_code == 201
    assert_error(put(client, "OVER", "x" * (limit + 1)), 413, "payload_too_large")
    huge = "x" * (django_settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 10)
    assert_error(put(client, "HUGE", huge), 413, "payload_too_large")


def test_other_workspace_ids(owner, outsider, client_for):
    client = client_for(owner)
    other = outsider.workspaces.get(personal=True).pk
    assert_error(put(client, "X", ws_id=other), 404, "not_found")
    assert_error(put(client, "X", ws_id="ws_nope"), 404, "not_found")
    assert_error(put(client, "X", ws_id="x" * 41), 400, "invalid_request")
    assert_error(client.get(f"/api/secrets?ws_id={other}"), 404, "not_found")
    assert_error(client.delete(f"/api/secrets/X?ws_id={other}"), 404, "not_found")


def test_unknown_methods(owner, client_for):
    client = client_for(owner)
    assert_error(client.put("/api/secrets/X", {"value": "v"}, format="json"), 405, "method_not_allowed")
    assert_error(client.get("/api/secrets/rotate-master"), 405, "method_not_allowed")
    assert_error(client.delete("/api/secrets"), 405, "method_not_allowed")


# --- tampering and leaks -------------------------------------------------------------------------

def test_tampered_rows_give_a_clear_error_not_the_value(owner, client_for):
    client = client_for(owner)
    put(client, "TAMPERED")
    row = Secret.objects.get(name="TAMPERED")
    data = bytearray(row.ciphertext)
    data[-3] ^= 0xFF
    Secret.objects.filter(pk=row.pk).update(ciphertext=bytes(data))
    response = client.get("/api/secrets/TAMPERED")
    assert_error(response, 409, "conflict")
    assert "TAMPERED" in response.json()["error"]["message"]
    assert AuditRecord.objects.filter(action="secret.reveal_failed", target="TAMPERED").exists()
    # A row moved to another name (binding) fails the same way.
    put(client, "VICTIM", "victim-value")
    victim = Secret.objects.get(name="VICTIM")
    put(client, "DONOR")
    Secret.objects.filter(name="DONOR").update(ciphertext=victim.ciphertext, wrapped_key=victim.wrapped_key)
    assert_error(client.get("/api/secrets/DONOR"), 409, "conflict")


def test_values_never_reach_the_logs(owner, client_for, settings, caplog):
    settings.KF_SECRET_MAX_BYTES = 40
    settings.DEBUG = True  # every SQL statement is logged with its parameters
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="django")
    client = client_for(owner)
    put(client, "LOGGED")
    client.get("/api/secrets/LOGGED")
    put(client, "LOGGED", VALUE * 3)  # too big: an error answer
    Secret.objects.filter(name="LOGGED").update(wrapped_key=b"x" * 60)
    client.get("/api/secrets/LOGGED")
    client.delete("/api/secrets/LOGGED")
    assert "secrets_app_secret" in caplog.text  # the capture works: the queries are in it
    assert VALUE not in caplog.text


def test_exports_hold_secret_names_at_most(owner, client_for, task_runner):
    client = client_for(owner)
    put(client, "EXPORTED")
    client.get("/api/secrets/EXPORTED")
    started = export_start(user=owner, ip=None)  # built by the real runner
    export = wait_for(lambda: DataExport.objects.filter(pk=started.pk, status="ready").first(), timeout=60)
    with zipfile.ZipFile(io.BytesIO(export_path(export).read_bytes())) as archive:
        everything = b"".join(archive.read(n) for n in archive.namelist()).decode()
    assert "EXPORTED" in everything  # the audit trail names it…
    assert VALUE not in everything  # …but no value, ciphertext or key is exported
    row = Secret.objects.get(name="EXPORTED")
    assert bytes(row.ciphertext).hex() not in everything


def test_admin_shows_metadata_only(admin_client, owner, client_for):
    put(client_for(owner), "IN_ADMIN")
    row = Secret.objects.get(name="IN_ADMIN")
    listing = admin_client.get("/admin/secrets_app/secret/")
    assert listing.status_code == 200 and "IN_ADMIN" in listing.content.decode()
    page = admin_client.get(f"/admin/secrets_app/secret/{row.pk}/change/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "IN_ADMIN" in html and VALUE not in html
    assert "ciphertext" not in html.lower() and "wrapped" not in html.lower()
    assert 'name="_save"' not in html  # nothing to save
    assert admin_client.get("/admin/secrets_app/secret/add/").status_code == 403
    assert admin_client.post(f"/admin/secrets_app/secret/{row.pk}/change/", {"name": "X"}).status_code == 403
    assert admin_client.post(f"/admin/secrets_app/secret/{row.pk}/delete/", {"post": "yes"}).status_code == 403
    for model in ("masterkey", "rotation", "keystate"):
        assert admin_client.get(f"/admin/secrets_app/{model}/").status_code == 200
    assert Secret.objects.filter(pk=row.pk, name="IN_ADMIN").exists()


def test_openapi_documents_the_group(client):
    schema = client.get("/api/schema/?format=json").json()
    paths = schema["paths"]
    assert {"/api/secrets", "/api/secrets/{name}", "/api/secrets/rotate-master"} <= set(paths)
    assert "staff" in paths["/api/secrets/rotate-master"]["post"]["description"]
    assert set(paths["/api/secrets/{name}"]) >= {"get", "post", "delete"}


# --- rotate-master -------------------------------------------------------------------------------

def test_rotate_needs_an_operator(owner, member, client_for):
    put(client_for(owner), "KEEP")
    for user in (owner, member):
        assert_error(client_for(user).post("/api/secrets/rotate-master"), 403, "forbidden")
    assert not Rotation.objects.exists()


def test_rotate_with_an_api_key_needs_the_admin_scope(operator):
    assert_error(key_client(operator, ["write"]).post("/api/secrets/rotate-master"), 403, "forbidden")
    assert not Rotation.objects.exists()


def test_rotate_master_through_the_task_runner(operator, owner, team, client_for, task_runner):
    """The API call starts it (202 with the target version) and the real runner (a Celery worker on
    the Postgres+Redis run, the in-process pool otherwise) re-wraps everything."""
    alice = client_for(owner)
    values = {f"R_{i}": f"value-{i}" for i in range(30)}
    for name, value in values.items():
        assert put(alice, name, value, ws_id=team.pk if name.endswith("7") else None).status_code == 201
    before = Secret.objects.values_list("key_version", flat=True).distinct()
    assert len(before) == 1
    old = before[0]
    response = client_for(operator).post("/api/secrets/rotate-master")
    assert response.status_code == 202, response.content
    body = response.json()
    # Newer than before (tests in parallel may share the key file, so not necessarily old + 1).
    assert body["started"] is True and body["key_version"] > old and body["total"] == 30
    new = body["key_version"]
    assert body["rewrapped"] >= 0 and body["rotation_id"].startswith("rot_") and body["job_id"].startswith("job_")
    rotation = wait_for(lambda: Rotation.objects.filter(pk=body["rotation_id"], status="succeeded").first(), timeout=60)
    assert rotation.rewrapped == 30 and old in rotation.retired
    assert set(Secret.objects.values_list("key_version", flat=True)) == {new}
    assert MasterKey.objects.get(version=old).retired_at is not None
    for name, value in values.items():
        ws = f"?ws_id={team.pk}" if name.endswith("7") else ""
        assert alice.get(f"/api/secrets/{name}{ws}").json()["value"] == value
    job = client_for(operator).get(f"/api/jobs/{body['job_id']}").json()
    assert job["status"] == "succeeded" and job["result"]["rewrapped"] == 30
    actions = list(AuditRecord.objects.filter(action__startswith="master_key.").values_list("action", flat=True))
    assert sorted(actions) == ["master_key.rotate", "master_key.rotated"]
    # New secrets use the new version; a second rotation moves on again.
    put(alice, "AFTER")
    assert Secret.objects.get(name="AFTER").key_version == new
    again = client_for(operator).post("/api/secrets/rotate-master").json()
    assert again["key_version"] > new and again["started"] is True
    wait_for(lambda: Rotation.objects.filter(pk=again["rotation_id"], status="succeeded").exists(), timeout=60)
    assert alice.get("/api/secrets/AFTER").json()["value"] == VALUE

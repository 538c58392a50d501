"""The Receipts endpoints: shapes, roles (viewer+ read, verify and reground; outsiders not_found), API keys."""

import base64
import hashlib
from typing import Any

import pytest
from rest_framework.test import APIClient

from accounts.services import api_key_create
from projects.models import Project
from receipts.services import receipt_append
from receipts.tests.conftest import make_project, run_facts
from receipts.verify_bundle import head_message, key_id_of, signature_valid, verify

pytestmark = pytest.mark.django_db


@pytest.fixture
def team_log(team, owner, tmp_path, signing_key_b64) -> tuple[Project, list[Any]]:
    project = make_project(tmp_path / "team-app", team, owner)
    return project, [receipt_append(facts=run_facts(project, user=owner)) for _ in range(5)]


def key_client(user, scopes: list[str]) -> APIClient:
    _, raw = api_key_create(user=user, name="t", scopes=scopes, expires_in_days=None, ip=None)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return client


def assert_signed(head: dict[str, Any]) -> None:
    public = base64.b64decode(head["public_key"])
    assert len(public) == 32 and head["key_id"] == key_id_of(public)
    message = head_message(ws_id=head["ws_id"], tree_size=head["tree_size"], root_hash=head["root_hash"], at=head["at"])
    assert signature_valid(public, base64.b64decode(head["signature"]), message)


@pytest.mark.parametrize("role", ["owner", "member", "viewer"])
def test_members_read_the_log_and_head(request, team, team_log, client_for, role):
    client = client_for(request.getfixturevalue(role))
    _, receipts = team_log
    page = client.get(f"/api/receipts?ws_id={team.pk}&limit=2").json()
    assert page["ws_id"] == team.pk
    assert [item["seq"] for item in page["items"]] == [5, 4]
    first = page["items"][0]
    assert first["run_id"] == receipts[4].run_id and first["hash"] == receipts[4].hash
    assert first["status"] == "succeeded" and first["model"] == "gpt-4o-mini" and first["usd"] == "0.003509"
    assert first["at"].endswith("Z")
    rest = client.get(f"/api/receipts?ws_id={team.pk}&limit=50&cursor={page['next_cursor']}").json()
    assert [item["seq"] for item in rest["items"]] == [3, 2, 1] and rest["next_cursor"] is None

    head = client.get(f"/api/receipts/chain-head?ws_id={team.pk}").json()
    assert head["ws_id"] == team.pk and head["seq"] == head["tree_size"] == 5
    assert head["hash"] == head["root_hash"] == receipts[4].root_hash
    assert head["last_hash"] == receipts[4].hash and head["algorithm"] == "Ed25519"
    assert_signed(head)


@pytest.mark.parametrize("role", ["owner", "member", "viewer"])
def test_members_verify_reground_and_download_bundles(request, team_log, client_for, role):
    client = client_for(request.getfixturevalue(role))
    _, receipts = team_log
    run_id = receipts[2].run_id
    result = client.post(f"/api/receipts/{run_id}/verify")
    assert result.status_code == 200, result.content
    body = result.json()
    assert body["ok"] is True and body["checked"] == 3 and body["first_bad_seq"] is None and body["reason"] is None
    assert body["inclusion_proof"]["leaf_index"] == 2 and body["inclusion_proof"]["tree_size"] == 5

    reground = client.post(f"/api/receipts/{run_id}/reground")
    assert reground.status_code == 200
    assert [(i["status"], i["path"], i["line"]) for i in reground.json()["items"]] == [
        ("present", "app.py", 5), ("present", "app.py", 11)]

    bundle = client.get(f"/api/receipts/{run_id}/bundle", HTTP_ACCEPT="text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8")
    assert bundle.status_code == 200 and bundle["Content-Type"] == "application/json"
    assert bundle["Content-Disposition"] == f'attachment; filename="receipt-{run_id}.json"'
    assert verify(bundle.json()).startswith("receipt seq 3")


def test_outsiders_and_strangers_get_not_found(team, team_log, outsider, client_for, anon):
    _, receipts = team_log
    run_id = receipts[0].run_id
    client = client_for(outsider)
    for response in (client.get(f"/api/receipts?ws_id={team.pk}"),
                     client.get(f"/api/receipts/chain-head?ws_id={team.pk}"),
                     client.post(f"/api/receipts/{run_id}/verify"),
                     client.post(f"/api/receipts/{run_id}/reground"),
                     client.get(f"/api/receipts/{run_id}/bundle"),
                     client.post("/api/receipts/run_nosuchrun/verify")):
        assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    assert anon.get(f"/api/receipts/chain-head?ws_id={team.pk}").json()["error"]["code"] == "unauthenticated"
    assert anon.post(f"/api/receipts/{run_id}/verify").status_code == 401


def test_session_posts_need_the_csrf_token(team_log, owner, client_for):
    client = client_for(owner)
    client.defaults.pop("HTTP_X_CSRFTOKEN")
    response = client.post(f"/api/receipts/{team_log[1][0].run_id}/verify")
    assert response.status_code == 403 and response.json()["error"]["code"] == "forbidden"


def test_a_read_only_api_key_may_verify_and_reground(team_log, viewer):
    client = key_client(viewer, ["read"])
    run_id = team_log[1][1].run_id
    assert client.post(f"/api/receipts/{run_id}/verify").json()["ok"] is True
    assert client.post(f"/api/receipts/{run_id}/reground").status_code == 200
    assert client.get(f"/api/receipts/{run_id}/bundle").status_code == 200


def test_an_empty_log_has_a_signed_head(owner, client_for, signing_key_b64):
    head = client_for(owner).get("/api/receipts/chain-head").json()
    assert head["ws_id"] == owner.workspaces.get(personal=True).pk
    assert head["seq"] == 0 and head["hash"] == hashlib.sha256(b"").hexdigest() and head["last_hash"] is None
    assert_signed(head)
    assert client_for(owner).get("/api/receipts").json() == {"ws_id": head["ws_id"], "items": [], "next_cursor": None}


def test_reground_of_a_deleted_project_is_not_found(team_log, owner, client_for):
    project, receipts = team_log
    Project.objects.filter(pk=project.pk).delete()
    response = client_for(owner).post(f"/api/receipts/{receipts[0].run_id}/reground")
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    # The receipts outlive the project, and the log still verifies.
    assert client_for(owner).post(f"/api/receipts/{receipts[4].run_id}/verify").json()["ok"] is True


def test_wrong_methods_and_bad_cursors(team, team_log, owner, client_for):
    client = client_for(owner)
    run_id = team_log[1][0].run_id
    assert client.get(f"/api/receipts/{run_id}/verify").json()["error"]["code"] == "method_not_allowed"
    assert client.post(f"/api/receipts/{run_id}/bundle").status_code == 405
    response = client.get(f"/api/receipts?ws_id={team.pk}&cursor=%%%")
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_request"


def test_the_schema_documents_the_group(client):
    paths = client.get("/api/schema/?format=json").json()["paths"]
    for path in ("/api/receipts", "/api/receipts/chain-head", "/api/receipts/{run_id}/verify",
                 "/api/receipts/{run_id}/reground", "/api/receipts/{run_id}/bundle"):
        assert path in paths
    assert "post" in paths["/api/receipts/{run_id}/verify"]

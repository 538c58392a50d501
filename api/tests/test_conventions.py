import re

import pytest

from accounts.services import audit_record

ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


def test_ids_are_prefixed_and_opaque(owner, client_for):
    body = client_for(owner).get("/api/account/me").json()["user"]
    assert re.match(r"^usr_[0-9A-Za-z]{22}$", body["id"])
    workspaces = client_for(owner).get("/api/workspaces").json()["items"]
    assert all(re.match(r"^ws_[0-9A-Za-z]{22}$", w["id"]) for w in workspaces)


def test_timestamps_are_iso_utc_with_z(owner, client_for):
    body = client_for(owner).get("/api/account/me").json()["user"]
    assert ISO_Z.match(body["created_at"])


def test_cursor_pagination_walks_every_item_once(owner, client_for):
    for i in range(7):
        audit_record(action="test_event", actor=owner, target=str(i))
    client = client_for(owner)
    seen, cursor, pages = [], None, 0
    while True:
        url = "/api/account/audit-list?limit=3" + (f"&cursor={cursor}" if cursor else "")
        body = client.get(url).json()
        assert set(body) == {"items", "next_cursor"}
        assert len(body["items"]) <= 3
        seen += [item["id"] for item in body["items"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen))
    total = client.get("/api/account/audit-list?limit=200").json()["items"]
    assert seen == [item["id"] for item in total]
    assert pages == -(-len(total) // 3)


@pytest.mark.parametrize("query", ["cursor=!!!", "cursor=WzEsMiwzXQ", "limit=abc", "limit=0"])
def test_bad_pagination_params_are_400(owner, client_for, query):
    response = client_for(owner).get(f"/api/account/audit-list?{query}")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_request"


def test_limit_is_capped_at_200(owner, client_for):
    for i in range(205):
        audit_record(action="test_event", actor=owner, target=str(i))
    body = client_for(owner).get("/api/account/audit-list?limit=1000").json()
    assert len(body["items"]) == 200 and body["next_cursor"]

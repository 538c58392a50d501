import pytest

from accounts import selectors
from accounts.models import Role
from api.errors import Forbidden, NotFound


def test_personal_workspace_is_the_default(owner):
    workspace = selectors.workspace_get(user=owner, ws_id=None)
    assert workspace.personal and workspace.id.startswith("ws_")


@pytest.mark.parametrize("who,min_role,outcome", [
    ("owner", Role.OWNER, "ok"),
    ("member", Role.MEMBER, "ok"),
    ("member", Role.ADMIN, Forbidden),
    ("viewer", Role.VIEWER, "ok"),
    ("viewer", Role.MEMBER, Forbidden),
    ("outsider", Role.VIEWER, NotFound),
    ("outsider", Role.OWNER, NotFound),
])
def test_workspace_access_check(request, team, member, viewer, outsider, who, min_role, outcome):
    user = request.getfixturevalue(who)
    if outcome == "ok":
        assert selectors.workspace_get(user=user, ws_id=team.id, min_role=min_role) == team
    else:
        with pytest.raises(outcome):
            selectors.workspace_get(user=user, ws_id=team.id, min_role=min_role)


def test_unknown_workspace_is_not_found(owner):
    with pytest.raises(NotFound):
        selectors.workspace_get(user=owner, ws_id="ws_nope")


def test_workspaces_api_lists_roles(member, team, client_for, outsider):
    items = client_for(member).get("/api/workspaces").json()["items"]
    assert {(w["name"], w["role"], w["personal"]) for w in items} == {
        ("Acme", "member", False), ("Bob's workspace", "owner", True)}
    assert team.id not in [w["id"] for w in client_for(outsider).get("/api/workspaces").json()["items"]]

"""The /secrets page (Django test client): who sees what, and never a value in the HTML."""

import re

import pytest

from secrets_app import services

pytestmark = pytest.mark.django_db(transaction=True)

VALUE = "page-must-not-show-this-value"


def test_owner_sees_names_the_form_and_reveal_buttons_but_no_value(owner, client_for):
    personal = owner.workspaces.get(personal=True)
    services.secret_set(user=owner, workspace=personal, name="SHOWN_NAME", value=VALUE)
    response = client_for(owner).get("/secrets")
    assert response.status_code == 200
    html = response.content.decode()
    assert re.search(r'<a href="/secrets"\s+aria-current="page">Secrets</a>', html)
    assert 'data-secret-name="SHOWN_NAME"' in html and f'data-ws="{personal.pk}"' in html
    assert 'data-secret-form' in html and 'data-action="secret-reveal"' in html and 'data-action="secret-delete"' in html
    assert VALUE not in html
    assert "/static/secrets.js" in html
    assert 'data-rotation' not in html  # not an operator
    assert 'data-test="ws-picker"' not in html  # one workspace only


def test_workspace_picker_and_team_secrets(owner, team, client_for):
    services.secret_set(user=owner, workspace=team, name="TEAM_ONLY", value=VALUE)
    client = client_for(owner)
    html = client.get("/secrets").content.decode()
    assert 'data-test="ws-picker"' in html and f'value="{team.pk}"' in html
    assert "TEAM_ONLY" not in html  # the personal workspace is shown first
    html = client.get(f"/secrets?ws_id={team.pk}").content.decode()
    assert 'data-secret-name="TEAM_ONLY"' in html and VALUE not in html


@pytest.mark.parametrize("role", ["member", "viewer"])
def test_members_and_viewers_see_names_only(request, owner, team, client_for, role):
    user = request.getfixturevalue(role)
    services.secret_set(user=owner, workspace=team, name="TEAM_ONLY", value=VALUE)
    html = client_for(user).get(f"/secrets?ws_id={team.pk}").content.decode()
    assert 'data-secret-name="TEAM_ONLY"' in html and VALUE not in html
    assert "data-secret-form" not in html and "secret-reveal" not in html and "secret-delete" not in html
    assert 'data-test="role-note"' in html


def test_outsiders_get_not_found(team, outsider, client_for):
    assert client_for(outsider).get(f"/secrets?ws_id={team.pk}").status_code == 404
    assert client_for(outsider).get("/secrets?ws_id=ws_nope").status_code == 404


def test_operators_see_the_rotation_card(operator, client_for):
    services.secret_set(user=operator, workspace=operator.workspaces.get(personal=True), name="X", value=VALUE)
    html = client_for(operator).get("/secrets").content.decode()
    assert "data-rotation" in html and 'data-action="secret-rotate"' in html
    assert re.search(r'data-test="key-version">v\d+<', html)


def test_anonymous_is_sent_to_sign_in(client):
    response = client.get("/secrets")
    assert response.status_code == 302 and response["Location"].startswith("/login")

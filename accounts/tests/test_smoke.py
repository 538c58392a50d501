def test_login_sets_session(owner, client_for):
    client = client_for(owner)
    r = client.get("/api/account/me")
    assert r.status_code == 200, r.content
    assert r.json()["user"]["email"] == owner.email

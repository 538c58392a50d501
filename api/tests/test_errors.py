"""Every failure answers {"error": {code, message, details?}}."""

import re

import pytest
from django.test import override_settings
from django.urls import get_resolver

from accounts import selectors


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]


@pytest.mark.parametrize("path", ["/api/nope", "/api/account/nope/deeper", "/auth/nope", "/api", "/auth"])
def test_unknown_paths_under_api_and_auth_are_json_404(anon, db, path):
    assert_error(anon.get(path), 404, "not_found")
    assert_error(anon.post(path, {}, format="json"), 404, "not_found")


def test_unknown_path_with_session_and_no_csrf_is_still_404(owner, client_for):
    client = client_for(owner)
    client.defaults.pop("HTTP_X_CSRFTOKEN")
    assert_error(client.post("/api/nope", {}, format="json"), 404, "not_found")


def test_unauthenticated_is_401_with_bearer_challenge(anon, db):
    response = anon.get("/api/account/sessions")
    assert_error(response, 401, "unauthenticated")
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_wrong_method_is_405(owner, client_for):
    client = client_for(owner)
    assert_error(client.delete("/api/account/sessions"), 405, "method_not_allowed")
    assert_error(client.get("/auth/login"), 405, "method_not_allowed")


def test_validation_error_maps_fields_to_messages(anon, db):
    error = assert_error(anon.post("/auth/register", {"email": "not-an-email"}, format="json"), 400,
                         "invalid_request")
    assert set(error["details"]) == {"email", "password"}
    assert all(isinstance(m, list) and m for m in error["details"].values())


def test_malformed_json_is_400(anon, db):
    response = anon.generic("POST", "/auth/login", "{nope", content_type="application/json")
    assert_error(response, 400, "invalid_request")


def test_form_post_to_login_is_refused_as_unsupported(anon, db):
    # Login takes JSON only: a cross-site HTML form cannot log a victim into another account.
    response = anon.post("/auth/login", {"email": "a@example.com", "password": "x"})
    assert_error(response, 415, "unsupported_media_type")


def test_csrf_failure_for_session_requests(owner, client_for):
    client = client_for(owner)
    client.defaults.pop("HTTP_X_CSRFTOKEN")
    error = assert_error(client.post("/api/account/cancel-delete"), 403, "forbidden")
    assert "CSRF" in error["message"]


def test_throttling_is_429_with_retry_after(anon, db, monkeypatch):
    from rest_framework.throttling import ScopedRateThrottle

    monkeypatch.setattr(ScopedRateThrottle, "THROTTLE_RATES", {"auth": "2/min"})
    for _ in range(2):
        assert anon.post("/auth/forgot", {"email": "x@example.com"}, format="json").status_code == 202
    response = anon.post("/auth/forgot", {"email": "x@example.com"}, format="json")
    error = assert_error(response, 429, "rate_limited")
    assert int(response["Retry-After"]) >= 1
    assert error["details"]["retry_after"] == int(response["Retry-After"])


def test_unexpected_exception_is_500_with_request_id_and_no_traceback(owner, client_for, monkeypatch):
    def explode(**kwargs):
        raise RuntimeError("secret-internal-detail")

    get_resolver().url_patterns  # import every view module first, so none binds the patched function
    monkeypatch.setattr(selectors, "workspace_list", explode)
    client = client_for(owner)
    client.raise_request_exception = False
    response = client.get("/api/workspaces")
    error = assert_error(response, 500, "internal")
    assert re.match(r"^req_[0-9a-f]{32}$", error["details"]["request_id"])
    assert response["X-Request-ID"] == error["details"]["request_id"]
    assert b"secret-internal-detail" not in response.content
    assert b"Traceback" not in response.content


@override_settings(DATA_UPLOAD_MAX_MEMORY_SIZE=1024)
def test_oversized_body_is_413(anon, db):
    response = anon.post("/auth/login", {"email": "a@example.com", "password": "x" * 5000}, format="json")
    assert_error(response, 413, "payload_too_large")


def test_html_404_outside_the_api(client, db):
    response = client.get("/definitely-not-a-page")
    assert response.status_code == 404
    assert response["Content-Type"].startswith("text/html")


def test_django_level_500_outside_drf_is_json_under_api(rf):
    from api.handlers import handler500

    request = rf.get("/api/anything")
    request.request_id = "req_" + "a" * 32
    response = handler500(request)
    assert response.status_code == 500
    import json

    body = json.loads(response.content)
    assert body["error"]["code"] == "internal" and body["error"]["details"]["request_id"] == request.request_id

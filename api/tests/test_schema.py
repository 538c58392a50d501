from django.urls import URLPattern, URLResolver, get_resolver

API_MD_PATHS = {
    "/auth/register", "/auth/login", "/auth/verify", "/auth/forgot", "/auth/reset", "/auth/logout",
    "/api/auth/mfa-setup", "/api/auth/mfa-verify",
    "/api/account/sessions", "/api/account/sessions/{sid}/revoke", "/api/account/change-password",
    "/api/account/update-profile", "/api/account/request-delete", "/api/account/cancel-delete",
    "/api/account/export-data", "/api/account/audit-list", "/api/account/api-keys",
    "/api/account/api-keys/{key_id}",
}


def test_openapi_schema_describes_every_endpoint(anon, db):
    response = anon.get("/api/schema/?format=json")
    assert response.status_code == 200
    schema = response.json()
    assert schema["openapi"].startswith("3.")
    assert API_MD_PATHS <= set(schema["paths"])
    login = schema["paths"]["/auth/login"]["post"]
    assert "requestBody" in login and "200" in login["responses"]
    assert login["responses"]["default"]["content"]["application/json"]["schema"]["$ref"].endswith("/Error")
    assert "bearerAuth" in schema["components"]["securitySchemes"]


def _api_routes(resolver: URLResolver, prefix: str = "") -> list[str]:
    routes = []
    for entry in resolver.url_patterns:
        route = prefix + str(entry.pattern)
        if isinstance(entry, URLResolver):
            routes += _api_routes(entry, route)
        elif isinstance(entry, URLPattern) and getattr(entry.callback, "cls", None) is not None:
            routes.append(route)
    return routes


def test_every_api_view_is_in_the_schema(anon, db):
    schema_paths = set(anon.get("/api/schema/?format=json").json()["paths"])
    routes = [r for r in _api_routes(get_resolver()) if r.startswith(("api/", "auth/")) and "schema" not in r
              and "docs" not in r]
    for route in routes:
        path = "/" + route.replace("<str:", "{").replace(">", "}")
        assert path in schema_paths, path


def test_swagger_ui_is_served(anon, db):
    response = anon.get("/api/docs/")
    assert response.status_code == 200
    assert b"swagger" in response.content.lower()


def test_browsable_api_works_for_a_signed_in_browser(owner, client_for):
    client = client_for(owner)
    response = client.get("/api/account/sessions", HTTP_ACCEPT="text/html")
    assert response.status_code == 200
    assert b"Sessions" in response.content and owner.email.encode() in response.content

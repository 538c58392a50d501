"""The /secrets page. It renders names and metadata only; values are fetched from the API when the user
clicks Reveal (so they are never in the page's HTML, its cache or its history), and every write goes
through the same API endpoints and checks as any other client (secrets.js)."""

from typing import Any

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import URLPattern, path
from django.views.decorators.csrf import ensure_csrf_cookie
from django.views.decorators.http import require_safe

from accounts.models import ROLE_RANK, Role
from accounts.web import page_workspace
from secrets_app import selectors, services
from secrets_app.models import KeyState

NAMES_ON_PAGE = 500


@require_safe
@ensure_csrf_cookie
@login_required
def secrets_page(request: HttpRequest) -> HttpResponse:
    memberships, membership = page_workspace(request)
    context: dict[str, Any] = {"memberships": memberships, "membership": membership, "secrets": [],
                     "name_pattern": selectors.NAME_PATTERN, "name_rule": selectors.NAME_RULE,
                     "max_bytes": settings.KF_SECRET_MAX_BYTES}
    if membership is not None:
        rank = ROLE_RANK[Role(membership.role)]
        _, rows = selectors.secret_list(user=request.user, ws_id=membership.workspace_id)
        context.update(workspace=membership.workspace, secrets=list(rows[: NAMES_ON_PAGE + 1]),
                       can_manage=rank >= ROLE_RANK[Role.ADMIN], can_use=rank >= ROLE_RANK[Role.MEMBER])
        context["more"] = len(context["secrets"]) > NAMES_ON_PAGE
        context["secrets"] = context["secrets"][:NAMES_ON_PAGE]
    if services.rotation_allowed(request.user):
        state = KeyState.objects.filter(pk=1).first()
        context.update(operator=True, key_version=state.current_version if state else None,
                       rotation=selectors.rotation_latest())
    return render(request, "secrets_app/secrets.html", context)


urlpatterns: list[URLPattern] = [
    path("secrets", secrets_page, name="secrets-page"),
]

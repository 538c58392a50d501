"""The /receipts page: a workspace's receipt log, its signed head, and per receipt a Verify button and a
bundle to download. The view renders what a first look needs through the same selectors and cursor as
the API; static/receipts.js verifies through POST /api/receipts/<run_id>/verify."""

from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import URLPattern, path
from django.views.decorators.csrf import ensure_csrf_cookie
from django.views.decorators.http import require_safe

from accounts.web import page_workspace
from api.errors import InvalidRequest
from api.pagination import paginate_rows
from receipts import selectors

PAGE = 50


@require_safe
@ensure_csrf_cookie
@login_required
def receipts_page(request: HttpRequest) -> HttpResponse:
    memberships, membership = page_workspace(request)
    cursor = request.GET.get("cursor") or ""
    context: dict[str, Any] = {"memberships": memberships, "membership": membership, "rows": [],
                               "next_cursor": None, "cursor": cursor}
    if membership is not None:
        workspace, qs = selectors.receipt_list(user=request.user, ws_id=membership.workspace_id)
        try:
            rows, next_cursor = paginate_rows(qs, cursor=cursor or None, limit=PAGE, order_field="seq")
        except InvalidRequest as exc:
            context["error"] = exc.message
        else:
            context.update(rows=[selectors.receipt_summary(row) for row in rows], next_cursor=next_cursor)
        context.update(workspace=workspace, head=selectors.chain_head(user=request.user, ws_id=workspace.pk))
    return render(request, "receipts/receipts.html", context)


urlpatterns: list[URLPattern] = [
    path("receipts", receipts_page, name="receipts-page"),
]

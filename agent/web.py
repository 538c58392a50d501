"""The agent pages: a project's run page (start a run, watch it live), one run's page (its transcript,
live or replayed, with Cancel and Rollback) and the run history. The views only check access and render
what a first look needs; static/agent.js starts, follows, cancels and rolls back runs through the JSON
API (/api/agent/…), so the pages pass the same checks as any other client. The history is read here,
through the same selector and cursor as GET /api/agent/history."""

from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import URLPattern, path
from django.views.decorators.csrf import ensure_csrf_cookie
from django.views.decorators.http import require_safe

from accounts.models import ROLE_RANK, Role, User
from accounts.selectors import membership_get
from accounts.web import page_workspace
from agent import selectors
from agent.models import MAX_COST_USD_LIMIT, MAX_STEPS_LIMIT, Run
from api.errors import InvalidRequest, NotFound
from api.pagination import paginate_rows
from projects.models import Project
from projects.selectors import project_get

RECENT_ON_PAGE = 10
HISTORY_PAGE = 50
IN_FLIGHT = [Run.Status.QUEUED, Run.Status.RUNNING]


def _can_run(user: User, ws_id: str) -> bool:
    """Members and up start, cancel and roll back runs; viewers only read them."""
    membership = membership_get(user=user, ws_id=ws_id)
    return ROLE_RANK[Role(membership.role)] >= ROLE_RANK[Role.MEMBER]


def _project_or_404(user: User, project_id: str) -> Project:
    try:
        return project_get(user=user, project_id=project_id)
    except NotFound as exc:
        raise Http404("No such project.") from exc


@require_safe
@ensure_csrf_cookie
@login_required
def project_agent_page(request: HttpRequest, project_id: str) -> HttpResponse:
    project = _project_or_404(request.user, project_id)
    runs = selectors.run_history(user=request.user, project_id=project.pk).select_related("user")
    # A run in flight is shown and followed at once: the page opens where the work is.
    in_flight = runs.filter(status__in=IN_FLIGHT).order_by("-created_at").first()
    prefs = selectors.prefs_get(user=request.user)
    context = {
        "project": project,
        "can_run": _can_run(request.user, project.workspace_id),
        "in_flight": in_flight,
        "recent": runs.order_by("-created_at")[:RECENT_ON_PAGE],
        "effective_model": selectors.effective_model(prefs=prefs),
        "prefs": prefs,
        "max_steps_limit": MAX_STEPS_LIMIT,
        "max_cost_limit": MAX_COST_USD_LIMIT,
    }
    return render(request, "agent/project.html", context)


@require_safe
@ensure_csrf_cookie
@login_required
def run_page(request: HttpRequest, run_id: str) -> HttpResponse:
    try:
        run = selectors.run_get(user=request.user, run_id=run_id)
    except NotFound as exc:
        raise Http404("No such run.") from exc
    context = {
        "run": run,
        "project": run.project,
        "can_run": _can_run(request.user, run.workspace_id),
    }
    return render(request, "agent/run.html", context)


@require_safe
@ensure_csrf_cookie
@login_required
def history_page(request: HttpRequest) -> HttpResponse:
    user = request.user
    params = request.GET
    memberships, membership = page_workspace(request)
    project = _project_or_404(user, params["project_id"]) if params.get("project_id") else None
    if project is not None:  # a project's history is its workspace's
        membership = next(m for m in memberships if m.workspace_id == project.workspace_id)
    status = params.get("status") or ""
    context: dict[str, Any] = {
        "memberships": memberships, "membership": membership, "project": project, "status": status,
        "statuses": Run.Status.values, "runs": [], "next_cursor": None, "cursor": params.get("cursor") or "",
    }
    if membership is not None:
        try:
            qs = selectors.run_history(user=user, ws_id=None if project else membership.workspace_id,
                                       project_id=project.pk if project else None,
                                       statuses=[status] if status else None)
            runs, next_cursor = paginate_rows(qs.select_related("project", "user"), cursor=params.get("cursor"),
                                              limit=HISTORY_PAGE)
        except InvalidRequest as exc:
            # A hand-edited status or cursor: say what is wrong rather than showing an empty list.
            context["error"] = exc.message
        else:
            context.update(runs=runs, next_cursor=next_cursor)
    return render(request, "agent/history.html", context)


urlpatterns: list[URLPattern] = [
    path("projects/<str:project_id>/agent", project_agent_page, name="project-agent"),
    path("agent/runs/<str:run_id>", run_page, name="agent-run-page"),
    path("agent/history", history_page, name="agent-history-page"),
]

"""The project pages. They render what a first look needs; project.js does the rest through the
JSON API (tree, search, symbols, findings, rescan), so every read and write goes through the same
checks as any other client. The one HTML fragment is the file viewer: highlighting is Pygments'
job, on the server."""

from typing import Any

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import path
from django.views.decorators.csrf import ensure_csrf_cookie
from django.views.decorators.http import require_safe
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexer import Lexer
from pygments.lexers import TextLexer, get_lexer_for_filename
from pygments.util import ClassNotFound

from accounts.models import ROLE_RANK, Role, User
from accounts.selectors import membership_get, workspace_list
from api.errors import ApiError, NotFound
from projects import selectors, services
from projects.models import Finding, Project

RECENT_ON_PAGE = 20


def _project_or_404(user: User, project_id: str) -> Project:
    try:
        return selectors.project_get(user=user, project_id=project_id)
    except NotFound as exc:
        raise Http404("No such project.") from exc


def _role_at_least(user: User, project: Project, role: Role) -> bool:
    membership = membership_get(user=user, ws_id=project.workspace_id)
    return ROLE_RANK[Role(membership.role)] >= ROLE_RANK[role]


@require_safe
@ensure_csrf_cookie
@login_required
def project_list_page(request: HttpRequest) -> HttpResponse:
    user = request.user
    loadable = [m.workspace for m in workspace_list(user=user) if ROLE_RANK[Role(m.role)] >= ROLE_RANK[Role.MEMBER]]
    context = {
        "recent": selectors.recent_list(user=user).select_related("project__workspace")[:RECENT_ON_PAGE],
        "workspaces": loadable,
        "projects_root": settings.KF_PROJECTS_ROOT,
    }
    return render(request, "projects/list.html", context)


@require_safe
@ensure_csrf_cookie
@login_required
def project_page(request: HttpRequest, project_id: str) -> HttpResponse:
    project = _project_or_404(request.user, project_id)
    services.project_touch(user=request.user, project=project)
    context = {
        "project": project,
        "can_rescan": _role_at_least(request.user, project, Role.MEMBER),
        "severities": Finding.Severity.values,
    }
    return render(request, "projects/project.html", context)


def _lexer_for(path: str, content: str) -> Lexer:
    # stripnl=False: leading blank lines must stay, or every line number after them is off.
    options: dict[str, Any] = {"stripnl": False, "ensurenl": True}
    try:
        return get_lexer_for_filename(path, content, **options)
    except ClassNotFound:
        return TextLexer(**options)


def highlight_file(path: str, content: str) -> str:
    formatter = HtmlFormatter(linenos="inline", anchorlinenos=True, lineanchors="L", linespans="line",
                              wrapcode=True)
    return highlight(content, _lexer_for(path, content), formatter)


@require_safe
@login_required
def file_view_fragment(request: HttpRequest, project_id: str) -> HttpResponse:
    """The file viewer's content, fetched by project.js: highlighted code, or a short message."""
    project = _project_or_404(request.user, project_id)
    raw_path = request.GET.get("path", "")
    try:
        file = services.file_read(project=project, path=raw_path)
    except ApiError as exc:
        context = {"path": raw_path, "message": exc.message, "code": exc.default_code}
        return render(request, "projects/_file_error.html", context, status=exc.status_code)
    context: dict[str, Any] = {"file": file}
    if not file["binary"]:
        context["code_html"] = highlight_file(file["path"], file["content"])
        content = file["content"]
        context["lines"] = content.count("\n") + (1 if content and not content.endswith("\n") else 0)
    return render(request, "projects/_file.html", context)


urlpatterns = [
    path("projects", project_list_page, name="projects"),
    path("projects/<str:project_id>", project_page, name="project"),
    path("projects/<str:project_id>/view", file_view_fragment, name="project-file-view"),
]

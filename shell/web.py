"""The shell page of a project: run a command or the tests and watch them live, run a command on or
pull a file from a host of the server's ssh config, and ask the model to suggest a command
(static/shell.js does the work through the JSON API and the job's event stream, so every action passes
the same checks as any other client)."""

from pathlib import Path

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import URLPattern, path
from django.views.decorators.csrf import ensure_csrf_cookie
from django.views.decorators.http import require_safe

from accounts.models import ROLE_RANK, Role
from accounts.selectors import membership_get
from api.errors import NotFound
from projects.selectors import project_get
from secrets_app.selectors import secret_list
from shell import selectors, ssh, suggest
from shell.testrunners import RUNNERS, detect_runner

RECENT_ON_PAGE = 20


@require_safe
@ensure_csrf_cookie
@login_required
def shell_page(request: HttpRequest, project_id: str) -> HttpResponse:
    try:
        project = project_get(user=request.user, project_id=project_id)
    except NotFound as exc:
        raise Http404("No such project.") from exc
    membership = membership_get(user=request.user, ws_id=project.workspace_id)
    can_run = ROLE_RANK[Role(membership.role)] >= ROLE_RANK[Role.MEMBER]
    secret_names: list[str] = []
    if can_run:
        _, rows = secret_list(user=request.user, ws_id=project.workspace_id)
        secret_names = list(rows.values_list("name", flat=True)[:200])
    detected = detect_runner(Path(project.root))
    context = {
        "project": project,
        "can_run": can_run,
        "secret_names": secret_names,
        "runners": RUNNERS,
        "default_timeout": min(settings.KF_SHELL_TIMEOUT_SECONDS, settings.KF_SHELL_MAX_TIMEOUT_SECONDS),
        "max_timeout": settings.KF_SHELL_MAX_TIMEOUT_SECONDS,
        "detected": detected,
        "recent": selectors.commands_recent(user=request.user, project=project).order_by("-created_at")[:RECENT_ON_PAGE],
        "in_flight": selectors.jobs_in_flight(user=request.user, project=project).order_by("-created_at")[:20],
        # The operator's hosts, as GET /api/shell/ssh-hosts lists them. That endpoint is member+ of a
        # workspace defaulting to the caller's personal one (every user owns theirs), so a viewer here can
        # read the same list through the API: the page shows it to them too, without the forms that
        # ssh-run and ssh-pull (member+ of this project's workspace) would refuse.
        "ssh_hosts": ssh.ssh_hosts_list(),
        "ssh_config": settings.KF_SSH_CONFIG,
        "ssh_command_max": ssh.COMMAND_MAX_CHARS,
        "ssh_path_max": ssh.REMOTE_PATH_MAX_CHARS,
        "suggest_max": suggest.PROMPT_MAX_CHARS,
    }
    return render(request, "shell/shell.html", context)


urlpatterns: list[URLPattern] = [
    path("projects/<str:project_id>/shell", shell_page, name="project-shell"),
]

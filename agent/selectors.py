"""Reads for the agent endpoints, each with its access check."""

from django.conf import settings
from django.db.models import QuerySet

from accounts.models import Role, User
from accounts.selectors import workspace_get
from agent.models import AgentPrefs, Run
from api.errors import InvalidRequest
from projects.selectors import project_get


def run_history(*, user: User, ws_id: str | None = None, project_id: str | None = None,
                statuses: list[str] | None = None) -> QuerySet[Run]:
    """Runs the caller may see (viewer+): of `ws_id`'s workspace, else of `project_id`'s project, else
    of the caller's personal workspace (API.md: an omitted ws_id means the personal one).
    A foreign `ws_id` or `project_id` is not_found; an unknown status is invalid_request."""
    unknown = sorted(set(statuses or []) - set(Run.Status.values))
    if unknown:
        raise InvalidRequest(f"Unknown status {unknown[0]!r}.",
                             details={"status": [f"must be one of {', '.join(Run.Status.values)}"]})
    if ws_id is not None or project_id is None:
        qs = Run.objects.filter(workspace=workspace_get(user=user, ws_id=ws_id, min_role=Role.VIEWER))
    else:
        qs = Run.objects.all()
    if project_id is not None:
        qs = qs.filter(project=project_get(user=user, project_id=project_id, min_role=Role.VIEWER))
    if statuses:
        qs = qs.filter(status__in=statuses)
    return qs


def prefs_get(*, user: User) -> AgentPrefs:
    """The caller's prefs; an unsaved instance with the defaults when they never saved any."""
    return AgentPrefs.objects.filter(user=user).first() or AgentPrefs(user=user)


def effective_model(*, prefs: AgentPrefs) -> str:
    return prefs.model or settings.KF_LLM_MODEL

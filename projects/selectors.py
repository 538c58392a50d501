from django.db import connection
from django.db.models import BooleanField, QuerySet
from django.db.models.expressions import RawSQL

from accounts.models import Role, User
from accounts.selectors import workspace_object_check
from api.errors import InvalidRequest, NotFound
from projects.models import Finding, Project, ProjectOpen, Symbol

SYMBOL_LIMIT = 200


def _glob_escape(text: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


def project_get(*, user: User, project_id: str | None, min_role: Role = Role.VIEWER) -> Project:
    """The project if the caller may see it (else not_found); without an id, the one they opened last."""
    if not project_id:
        opened = (ProjectOpen.objects.select_related("project")
                  .filter(user=user, project__workspace__memberships__user=user).order_by("-opened_at").first())
        if opened is None:
            raise NotFound("No project loaded yet: load one with POST /api/project/load.")
        project = opened.project
    else:
        project = Project.objects.filter(pk=project_id).first()
    return workspace_object_check(user=user, obj=project, kind="project", min_role=min_role)


def recent_list(*, user: User) -> QuerySet[ProjectOpen]:
    return (ProjectOpen.objects.select_related("project")
            .filter(user=user, project__workspace__memberships__user=user).order_by("-opened_at"))


def symbol_search(*, project: Project, q: str, mode: str, kind: str | None = None,
                  limit: int = SYMBOL_LIMIT) -> tuple[list[Symbol], bool]:
    if not q:
        raise InvalidRequest("q is required.", details={"q": ["required"]})
    if mode not in ("exact", "prefix", "substring"):
        raise InvalidRequest("mode must be exact, prefix or substring.", details={"mode": ["unknown mode"]})
    qs = Symbol.objects.filter(project=project)
    if mode == "exact":
        qs = qs.filter(name=q)
    elif connection.vendor == "sqlite":
        # SQLite's LIKE ignores case; GLOB is case-sensitive like Postgres' LIKE.
        pattern = _glob_escape(q) + "*" if mode == "prefix" else "*" + _glob_escape(q) + "*"
        qs = qs.alias(hit=RawSQL("name GLOB %s", [pattern], output_field=BooleanField())).filter(hit=True)
    else:
        qs = qs.filter(**{"name__startswith" if mode == "prefix" else "name__contains": q})
    if kind:
        qs = qs.filter(kind=kind)
    rows = list(qs.order_by("name", "path", "line")[: limit + 1])
    return rows[:limit], len(rows) > limit


def finding_list(*, project: Project, severity: str | None = None, rule: str | None = None,
                 path: str | None = None) -> QuerySet[Finding]:
    qs = Finding.objects.filter(project=project)
    if severity:
        qs = qs.filter(severity=severity)
    if rule:
        qs = qs.filter(rule=rule)
    if path:
        qs = qs.filter(path__startswith=path)
    return qs

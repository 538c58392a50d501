"""Reads for the agent endpoints, each with its access check."""

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db.models import Q, QuerySet

from accounts.models import Role, User
from accounts.selectors import workspace_get, workspace_object_check
from agent.models import AgentPrefs, Run
from agent.snapshots import SnapshotError, after_ref_name, snapshot_file_hashes
from api.errors import InvalidRequest, NotFound
from projects.selectors import project_get
from streams.models import Event

SNAPSHOT_ID_RE = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")


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


def run_get(*, user: User, run_id: str, min_role: Role = Role.VIEWER) -> Run:
    """The run if the caller has `min_role` in its workspace; anything else is not_found."""
    run = Run.objects.select_related("project", "workspace").filter(pk=run_id).first() if isinstance(
        run_id, str) else None
    return workspace_object_check(user=user, obj=run, kind="run", min_role=min_role)


def run_by_snapshot(*, user: User, snapshot_id: str, min_role: Role = Role.VIEWER) -> Run:
    """The run whose before- or after-snapshot is `snapshot_id` (a commit id), checked like run_get."""
    if not isinstance(snapshot_id, str) or not SNAPSHOT_ID_RE.fullmatch(snapshot_id):
        raise InvalidRequest("snapshot_id must be a snapshot's commit id (40 or 64 hex digits).",
                             details={"snapshot_id": ["not a commit id"]})
    run = (Run.objects.select_related("project", "workspace")
           .filter(Q(snapshot_before=snapshot_id) | Q(snapshot_after=snapshot_id)).order_by("-created_at").first())
    return workspace_object_check(user=user, obj=run, kind="snapshot", min_role=min_role)


def run_in_flight_latest(*, user: User) -> Run:
    """The caller's own most recent queued or running run (follow's default)."""
    run = Run.objects.filter(user=user, status__in=[Run.Status.QUEUED, Run.Status.RUNNING]).order_by(
        "-created_at").first()
    if run is None:
        raise NotFound("You have no agent run in flight: give run_id to follow a finished one.")
    return run


def run_in_flight_for_project(*, project_id: str) -> Run | None:
    return Run.objects.filter(project_id=project_id, status__in=[Run.Status.QUEUED, Run.Status.RUNNING]).first()


def run_receipt_facts(*, run: Run) -> dict[str, Any]:
    """What the run's receipt records, as plain data for receipts.services.receipt_append: read back
    from its event log (so every hash in the receipt can be checked against the transcript) and its
    snapshots (files changed by any means, commands included, with content hashes on both sides)."""
    calls: dict[str, dict[str, Any]] = {}
    tool_calls: list[dict[str, Any]] = []
    findings: list[dict[str, Any]] = []
    for type, data in Event.objects.filter(job_id=run.job_id, type__in=("tool_call", "tool_result", "finding")).order_by(
            "seq").values_list("type", "data").iterator():
        if type == "tool_call":
            calls[data.get("id", "")] = data
        elif type == "tool_result":
            call = calls.pop(data.get("id", ""), {})
            tool_calls.append({"name": data.get("name", ""),
                               "arguments": json.dumps(call.get("arguments"), sort_keys=True, ensure_ascii=False),
                               "result": data.get("content", "")})
        else:
            findings.append({key: data.get(key) for key in ("path", "line", "rule", "severity", "message")})
    # A call the run stopped before answering (stuck loop, cancel): recorded with an empty result.
    tool_calls += [{"name": c.get("name", ""), "arguments": json.dumps(c.get("arguments"), sort_keys=True,
                                                                       ensure_ascii=False), "result": ""}
                   for c in calls.values()]
    files: list[dict[str, Any]] = []
    if run.snapshot_before and run.snapshot_after:
        try:
            files = snapshot_file_hashes(root=Path(run.project.root), project_id=run.project_id, from_ref=run.pk,
                                         to_ref=after_ref_name(run.pk))
        except (SnapshotError, NotFound):
            files = []  # the repository is gone or broken: the receipt says no files rather than failing
    return {
        "run_id": run.pk, "ws_id": run.workspace_id, "project_id": run.project_id, "user_id": run.user_id,
        "task": run.task, "model": run.model, "status": run.status, "input_tokens": run.input_tokens,
        "output_tokens": run.output_tokens, "usd": str(run.usd), "tool_calls": tool_calls, "files": files,
        "snapshot_before": run.snapshot_before, "snapshot_after": run.snapshot_after, "findings": findings,
        "started_at": _iso(run.started_at or run.created_at), "ended_at": _iso(run.ended_at or run.created_at),
    }


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

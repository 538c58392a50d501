"""Writes of the agent app: prefs, and starting, cancelling and rolling back runs (the run itself is
agent/loop.py, executed by a worker)."""

from decimal import Decimal
from pathlib import Path
from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from accounts.models import User
from accounts.services import audit_record
from agent import selectors
from agent.loop import context_tokens, run_close
from agent.models import AGENT_JOB_KIND, AgentPrefs, Run
from agent.snapshots import (
    SnapshotError,
    after_ref_name,
    snapshot_ref_tree,
    snapshot_restore,
    snapshot_tree_id,
)
from agent.tasks import agent_run_task
from api.errors import Conflict, InvalidRequest, PayloadTooLarge
from api.tasking import enqueue
from budget.estimate import run_estimate
from budget.services import run_release, run_reserve
from llm.client import llm_config
from projects.models import Project
from streams.services import event_append, job_cancel, job_create

_UNSET = object()


@transaction.atomic
def agent_prefs_update(*, user: User, model: str | object = _UNSET,
                       max_cost_usd_per_run: Decimal | None | object = _UNSET,
                       max_steps: int | object = _UNSET,
                       auto_rollback_on_failure: bool | object = _UNSET) -> AgentPrefs:
    """A partial update: only the arguments given change; the row is created on first save.
    The values are already validated (the API's input serializer, the admin's model validators)."""
    # The row lock keeps two concurrent partial updates from overwriting each other's fields.
    prefs, _ = AgentPrefs.objects.select_for_update().get_or_create(user=user)
    changes = {"model": model, "max_cost_usd_per_run": max_cost_usd_per_run, "max_steps": max_steps,
               "auto_rollback_on_failure": auto_rollback_on_failure}
    for field, value in changes.items():
        if value is not _UNSET:
            setattr(prefs, field, value)
    try:
        prefs.full_clean(exclude=["user"])
    except ValidationError as exc:
        raise InvalidRequest("The prefs are invalid.", details=exc.message_dict) from exc
    prefs.save()
    return prefs


# --- runs ----------------------------------------------------------------------------------------

TASK_MAX_CHARS = 100_000


def _task_check(task: object) -> str:
    if not isinstance(task, str) or not task.strip():
        raise InvalidRequest("task must be a non-empty string.", details={"task": ["required"]})
    if len(task) > TASK_MAX_CHARS:
        raise PayloadTooLarge(f"task is longer than {TASK_MAX_CHARS} characters.")
    if "\x00" in task:
        raise InvalidRequest("task contains a NUL character.", details={"task": ["NUL character"]})
    return task


def run_start(*, user: User, project: Project, task: object, model: str | None = None,
              max_cost_usd: Decimal | None = None, max_steps: int | None = None, queue: bool = True) -> Run:
    """Creates the run and its event log (first event `run`) and queues it for a worker (queue=False:
    the caller runs it itself with loop.run_execute).
    The caller checked member+ on the project. Values left out come from the user's prefs.
    A project with a run in flight → conflict (runs of one project are serialized)."""
    task = _task_check(task)
    llm_config()  # 503 model_not_configured now, not as a failed run
    prefs = selectors.prefs_get(user=user)
    model = model or selectors.effective_model(prefs=prefs)
    max_steps = max_steps or prefs.max_steps
    if max_cost_usd is None:
        max_cost_usd = prefs.max_cost_usd_per_run
    # The run's highest likely cost, held against the workspace's caps before it may start (402
    # budget_exceeded, nothing created, when it does not fit); never more than its own cap.
    estimate = run_estimate(workspace=project.workspace, user=user, task=task, model=model, project=project,
                            max_steps=max_steps, context_tokens=context_tokens(model=model))
    hold = estimate.high.usd if max_cost_usd is None else min(estimate.high.usd, max_cost_usd)
    try:
        with transaction.atomic():
            job = job_create(kind=AGENT_JOB_KIND, owner=user, workspace=project.workspace, project_id=project.pk)
            run = Run.objects.create(workspace=project.workspace, project=project, user=user, job=job, task=task,
                                     model=model, max_steps=max_steps, max_cost_usd=max_cost_usd)
            run_reserve(workspace=project.workspace, user=user, run_id=run.pk, model=model, usd=hold)
            event_append(job_id=job.pk, type="run", data={
                "run_id": run.pk, "job_id": job.pk, "project_id": project.pk, "task": task, "model": model,
                "max_steps": max_steps, "max_cost_usd": None if max_cost_usd is None else str(max_cost_usd)})
            if queue:
                enqueue(agent_run_task, run.pk)
    except IntegrityError:
        other = selectors.run_in_flight_for_project(project_id=project.pk)
        raise Conflict("This project already has an agent run in flight: wait for it to end or cancel it.",
                       details={"run_id": other.pk if other else None}) from None
    return run


def run_cancel(*, run: Run) -> Run:
    """Raises the cancel flag the loop polls (it stops within a fraction of a second, killing its
    commands); a run still queued ends here and now. A finished run → conflict."""
    if run.finished:
        raise Conflict(f"This run already ended ({run.status}).", details={"status": run.status})
    job_cancel(job=run.job)
    run.job.refresh_from_db()
    if run.job.finished and run.status == Run.Status.QUEUED:
        # job_cancel ended it while still queued (the loop will never start it): the run's budget hold
        # is freed, its receipt appended and its row closed here, as the loop would have.
        run_release(run_id=run.pk)
        run_close(run, status=Run.Status.CANCELLED, error="Cancelled before it started.")
    run.refresh_from_db()
    return run


def run_rollback(*, user: User, run: Run, snapshot_id: str | None = None, force: bool = False) -> dict[str, Any]:
    """Puts the project's files back as they were in one of the run's snapshots: by default the one
    taken before its first write; `snapshot_id` may name the after-snapshot instead (undo a rollback).
    Files changed since the other snapshot → conflict, unless `force`."""
    if not run.finished:
        raise Conflict("This run is still in flight: cancel it first.", details={"status": run.status})
    if not run.snapshot_before:
        raise Conflict("This run wrote no file, so there is no snapshot to roll back to.",
                       details={"snapshot_id": None})
    to_after = snapshot_id is not None and snapshot_id == run.snapshot_after and snapshot_id != run.snapshot_before
    target_ref = after_ref_name(run.pk) if to_after else run.pk
    other_ref = run.pk if to_after else after_ref_name(run.pk)
    root, project_id = Path(run.project.root), run.project.pk
    snapshot = run.snapshot_after if to_after else run.snapshot_before
    try:
        if snapshot_tree_id(root=root, project_id=project_id) == snapshot_ref_tree(
                root=root, project_id=project_id, ref_name=target_ref):
            return {"run_id": run.pk, "snapshot_id": snapshot, "paths": []}  # already there
        expected = snapshot_ref_tree(root=root, project_id=project_id, ref_name=other_ref) if run.snapshot_after else None
        paths = snapshot_restore(root=root, project_id=project_id, ref_name=target_ref, expected_tree=expected,
                                 force=force)
    except SnapshotError as exc:
        raise Conflict(f"The snapshot could not be restored: {exc}") from None
    audit_record(action="agent.rollback", actor=user, workspace=run.workspace, target=run.pk,
                 meta={"snapshot_id": snapshot, "paths": len(paths), "force": force})
    return {"run_id": run.pk, "snapshot_id": snapshot, "paths": paths}

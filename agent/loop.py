"""The agent loop (DESIGN decision 5): one run drives the chat model through tool calls until the model
answers without one, the step limit is hit, the run's cost cap stops it, it is cancelled, or the model
gets stuck. Every step is an event on the run's job log (streams), which is what every follower reads.

Events, in order (`run` was appended by run_start):
  status {status: running}
  message {step, delta}            pieces of the assistant's text as the model streams them (batched
                                   every DELTA_FLUSH_SECONDS), then
  message {step, text, done: true} the whole text of that turn
  retry {step, attempt, wait_seconds, message}   the model server failed; kf retries after a wait
  cost {step, input_tokens, output_tokens, usd, pricing_source}   cumulative, after each model call
  tool_call {step, id, name, arguments}          arguments parsed, or {"_raw": text} when not JSON
  file_changed {path, change, diff, …}           from the write tools (agent/tools.py)
  finding {…}                                    from report_finding
  tool_result {step, id, name, ok, content, data}   content cut to EVENT_CONTENT_MAX_CHARS with a note
  snapshot {snapshot_id, kind: before|after}     before the first write; after the run, if it wrote
  rollback {snapshot_id, paths}                  auto_rollback_on_failure did it
  end {status, error?, steps, usd, files_changed, input_tokens, output_tokens}   always last

Cancel. The model call runs in a helper thread, so this thread keeps polling the job's cancel flag
(every CANCEL_POLL_SECONDS) while the model streams or hangs; on cancel it tells the client to stop
(`should_stop`: the stream is closed at its next chunk or retry wait) and ends the run without waiting
for it. Commands get the same flag through the tool context: their process groups are killed.

Liveness. The run writes its job's heartbeat every KF_JOB_HEARTBEAT_SECONDS; if the worker dies, the
reaper (services.runs_reap, a periodic task) ends the run `failed` once the heartbeat is stale. The
log is never rewritten: what was appended stays, and `end` is appended exactly once (job_finish).

All database writes happen on this thread (and the tool's cancel watcher, which only reads).
"""

import json
import logging
import queue
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import DatabaseError, connections
from django.db.models import F
from django.utils import timezone

from agent import selectors
from agent.models import Run
from agent.snapshots import (
    SnapshotError,
    after_ref_name,
    snapshot_diff,
    snapshot_restore,
    snapshot_take,
)
from agent.tools import ToolContext, openai_tools, tool_call
from api.errors import ApiError
from budget.estimate import CALL_OUTPUT_ALLOWANCE, call_estimate_usd
from budget.services import call_reserve, call_settle, run_release
from budget.tokens import count_message_tokens
from llm.client import ChatResult, ModelError, chat
from receipts.services import receipt_append
from secrets_app.masking import SecretMasker, mask_json, mask_text
from secrets_app.services import secret_values_for_masking
from streams.models import Job
from streams.services import event_append, job_finish, job_heartbeat, job_start

logger = logging.getLogger("kf.agent")

DELTA_FLUSH_SECONDS = 0.05
CANCEL_POLL_SECONDS = 0.1
EVENT_CONTENT_MAX_CHARS = 16_000  # of a tool_result event's content (the model gets up to 30,000)

SYSTEM_PROMPT = """You are kf's coding agent. You work on one software project through the tools you \
are given; paths are relative to the project root. Read before you edit; change only what the task \
needs; prefer edit_file (exact search/replace blocks) over rewriting whole files; run the tests when \
you changed code and they exist. Report real problems you notice with report_finding. When the task \
is done (or cannot be done), answer without a tool call: say briefly what you changed and why."""


class _Stop(Exception):
    """Ends the loop with a final status and a reason."""

    def __init__(self, status: str, error: str = "") -> None:
        super().__init__(error or status)
        self.status = status
        self.error = error


class RunLoop:
    def __init__(self, run: Run) -> None:
        self.run = run
        self.job_id = run.job_id
        self.cancelled = threading.Event()
        self._last_beat = time.monotonic()
        self._last_cancel_check = 0.0
        self._calls: list[str] = []  # "name\0canonical arguments" of every tool call, for the stuck check
        self.mask: list[str] = []
        self.ended_elsewhere = False  # the reaper ended the job: append nothing more

    # --- events and liveness ------------------------------------------------------------------

    def emit(self, type: str, data: dict[str, Any]) -> None:
        if not self.ended_elsewhere:
            event_append(job_id=self.job_id, type=type, data=data)

    def cancel_requested(self) -> bool:
        """Safe from any thread (the tools' command watcher calls it too). Beats the heartbeat."""
        if self.cancelled.is_set():
            return True
        now = time.monotonic()
        if now - self._last_beat >= settings.KF_JOB_HEARTBEAT_SECONDS:
            self._last_beat = now
            job_heartbeat(self.job_id)
        cancel, status = Job.objects.filter(pk=self.job_id).values_list("cancel_requested", "status").get()
        if status in Job.FINAL:
            self.ended_elsewhere = True  # reaped while this worker was still alive (e.g. it stalled)
        if cancel or status in Job.FINAL:
            self.cancelled.set()
        return self.cancelled.is_set()

    def _cancel_check_throttled(self) -> None:
        now = time.monotonic()
        if now - self._last_cancel_check >= CANCEL_POLL_SECONDS:
            self._last_cancel_check = now
            if self.cancel_requested():
                raise _Stop(Run.Status.CANCELLED, "Cancelled.")

    # --- snapshots ----------------------------------------------------------------------------

    def before_write(self) -> None:
        """Called by every mutating tool: the first one records the tree as it was before the run."""
        if self.run.snapshot_before:
            return
        try:
            commit = snapshot_take(root=Path(self.run.project.root), project_id=self.run.project_id,
                                   ref_name=self.run.pk)
        except SnapshotError as exc:
            # Nothing may be written without a snapshot to come back to.
            raise _Stop(Run.Status.FAILED, f"Could not snapshot the project before writing: {exc}") from None
        self.run.snapshot_before = commit
        Run.objects.filter(pk=self.run.pk).update(snapshot_before=commit)
        self.emit("snapshot", {"snapshot_id": commit, "kind": "before"})

    def _snapshot_after(self) -> None:
        if not self.run.snapshot_before:
            return
        root, project_id = Path(self.run.project.root), self.run.project_id
        commit = snapshot_take(root=root, project_id=project_id, ref_name=after_ref_name(self.run.pk))
        changed = snapshot_diff(root=root, project_id=project_id, from_ref=self.run.pk,
                                to_ref=after_ref_name(self.run.pk))
        self.run.snapshot_after, self.run.files_changed = commit, len(changed)
        Run.objects.filter(pk=self.run.pk).update(snapshot_after=commit, files_changed=len(changed))
        self.emit("snapshot", {"snapshot_id": commit, "kind": "after", "files_changed": len(changed)})

    def _auto_rollback(self) -> None:
        paths = snapshot_restore(root=Path(self.run.project.root), project_id=self.run.project_id,
                                 ref_name=self.run.pk, expected_tree=None, force=True)
        self.emit("rollback", {"snapshot_id": self.run.snapshot_before, "paths": paths, "automatic": True})

    # --- the model ----------------------------------------------------------------------------

    def _model_call(self, messages: list[dict[str, Any]], step: int) -> ChatResult:
        """One chat completion, streamed into `message` delta events, cancellable at any moment."""
        pieces: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        done = threading.Event()
        stop = threading.Event()
        outcome: dict[str, Any] = {}

        def call() -> None:
            try:
                outcome["result"] = chat(
                    messages=messages, tools=openai_tools(), model=self.run.model,
                    max_tokens=settings.KF_AGENT_MAX_OUTPUT_TOKENS or None,
                    on_delta=lambda text: pieces.put(("delta", text)), should_stop=stop.is_set,
                    on_retry=lambda attempt, wait, error: pieces.put(("retry", (attempt, wait, error.message))))
            except BaseException as exc:  # noqa: BLE001 — handed to the loop's thread, which decides
                outcome["error"] = exc
            finally:
                done.set()

        # Masks across delta boundaries: a secret split over two pieces is held back until it is whole.
        masker = SecretMasker(self.mask)
        threading.Thread(target=call, name=f"kf-model-{self.run.pk}", daemon=True).start()
        try:
            while True:
                finished = done.wait(DELTA_FLUSH_SECONDS)
                self._drain(pieces, step, masker)
                if finished:
                    break
                self._cancel_check_throttled()
            rest = masker.flush()
            if rest:
                self.emit("message", {"step": step, "delta": rest})
        except _Stop:
            stop.set()  # the client closes the stream at its next chunk; we do not wait for it
            raise
        if "error" in outcome:
            raise outcome["error"]
        return outcome["result"]

    def _drain(self, pieces: queue.SimpleQueue[tuple[str, Any]], step: int, masker: SecretMasker) -> None:
        """Emits what the model sent since the last call: its text as one `message` delta."""
        text: list[str] = []

        def flush() -> None:
            delta = masker.feed("".join(text))
            text.clear()
            if delta:
                self.emit("message", {"step": step, "delta": delta})

        while True:
            try:
                kind, value = pieces.get_nowait()
            except queue.Empty:
                break
            if kind == "delta":
                text.append(value)
                continue
            flush()
            attempt, wait, message = value
            self.emit("retry", {"step": step, "attempt": attempt, "wait_seconds": round(wait, 3),
                                "message": self._masked(message)})
        flush()

    def _masked(self, text: str) -> str:
        return mask_text(text, self.mask) if self.mask else text

    def _account(self, result: ChatResult, step: int) -> None:
        """Settles the call's reported usage in the budget (ledger, caps) and adds it to the run."""
        usage = result.usage
        price = call_settle(run_id=self.run.pk, model=self.run.model, input_tokens=usage["prompt_tokens"],
                            output_tokens=usage["completion_tokens"])
        Run.objects.filter(pk=self.run.pk).update(
            input_tokens=F("input_tokens") + usage["prompt_tokens"],
            output_tokens=F("output_tokens") + usage["completion_tokens"], usd=F("usd") + price.usd, steps=step)
        self.run.refresh_from_db(fields=["input_tokens", "output_tokens", "usd", "steps"])
        self.emit("cost", {"step": step, "input_tokens": self.run.input_tokens,
                           "output_tokens": self.run.output_tokens, "usd": str(self.run.usd),
                           "pricing_source": price.source})

    def _budget_check(self, messages: list[dict[str, Any]]) -> None:
        """Before a model call: its highest possible cost (the prompt counted, the answer at its token
        limit) must fit the run's own cap and the workspace's caps (the run's reservation grows
        atomically, or the run stops), so no cap is ever overshot by a call."""
        next_call = call_estimate_usd(workspace=self.run.workspace, model=self.run.model, messages=messages,
                                      tools=openai_tools(),
                                      output_tokens=settings.KF_AGENT_MAX_OUTPUT_TOKENS or CALL_OUTPUT_ALLOWANCE)
        cap = self.run.max_cost_usd
        if cap is not None and self.run.usd + next_call > cap:
            raise _Stop(Run.Status.BUDGET_EXCEEDED,
                        f"The next model call could cost up to ${next_call}; with ${self.run.usd} spent that would "
                        f"pass the run's ${cap} cap, so the run stopped before it.")
        if not call_reserve(run_id=self.run.pk, usd=next_call):
            raise _Stop(Run.Status.BUDGET_EXCEEDED,
                        f"The next model call could cost up to ${next_call}, more than the workspace's budget has "
                        "left (daily or monthly cap): the run stopped before it.")

    # --- tool calls ---------------------------------------------------------------------------

    def _stuck_check(self, name: str, arguments_json: str) -> None:
        try:
            canonical = json.dumps(json.loads(arguments_json or "{}"), sort_keys=True)
        except ValueError:
            canonical = arguments_json
        self._calls.append(f"{name}\0{canonical}")
        n = settings.KF_AGENT_STUCK_REPEATS
        recent = self._calls[-n:]
        if len(recent) == n and len(set(recent)) == 1:
            raise _Stop(Run.Status.FAILED, f"Stopped: the model called {name} with the same arguments {n} times "
                                           "in a row (a stuck loop).")
        pairs = self._calls[-2 * n:]
        if (len(pairs) == 2 * n and pairs[0] != pairs[1]
                and all(call == pairs[i % 2] for i, call in enumerate(pairs))):
            first, second = (c.split("\0", 1)[0] for c in pairs[:2])
            raise _Stop(Run.Status.FAILED, f"Stopped: the model alternated the same two calls ({first}, {second}) "
                                           f"{n} times (a stuck loop).")

    def _tool_round(self, result: ChatResult, step: int, ctx: ToolContext,
                    messages: list[dict[str, Any]]) -> None:
        calls = [(call.id or f"call_{step}_{i}", call) for i, call in enumerate(result.tool_calls)]
        messages.append({"role": "assistant", "content": result.text,
                         "tool_calls": [{"id": cid, "type": "function",
                                         "function": {"name": c.name, "arguments": c.arguments_json}}
                                        for cid, c in calls]})
        for cid, call in calls:
            arguments = call.arguments
            shown = arguments if arguments is not None else {"_raw": call.arguments_json[:EVENT_CONTENT_MAX_CHARS]}
            self.emit("tool_call", {"step": step, "id": cid, "name": call.name,
                                    "arguments": mask_json(shown, self.mask) if self.mask else shown})
            self._stuck_check(call.name, call.arguments_json)
            outcome = tool_call(ctx, call.name, call.arguments_json)
            content = outcome.content
            if len(content) > EVENT_CONTENT_MAX_CHARS:
                content = (content[:EVENT_CONTENT_MAX_CHARS]
                           + f"\n[… {len(content) - EVENT_CONTENT_MAX_CHARS} more characters not shown here …]")
            self.emit("tool_result", {"step": step, "id": cid, "name": call.name, "ok": outcome.ok,
                                      "content": content, "data": outcome.data})
            messages.append({"role": "tool", "tool_call_id": cid, "content": outcome.content})
            if self.cancel_requested():
                raise _Stop(Run.Status.CANCELLED, "Cancelled.")

    # --- the run ------------------------------------------------------------------------------

    def execute(self) -> None:
        status, error = Run.Status.FAILED, ""
        try:
            status, error = self._steps()
        except _Stop as stop:
            status, error = stop.status, stop.error
        except ModelError as exc:
            status, error = Run.Status.FAILED, exc.message
        except Exception:
            logger.exception("agent run %s failed", self.run.pk)
            status, error = Run.Status.FAILED, "Internal error in the agent loop (the server log has the details)."
        self._finish(status, error)

    def _steps(self) -> tuple[str, str]:
        self.mask = secret_values_for_masking(workspace=self.run.workspace)
        ctx = ToolContext(user=self.run.user, project=self.run.project, job_id=self.job_id, emit=self.emit,
                          before_write=self.before_write, secrets_mask=self.mask,
                          should_cancel=self.cancel_requested)
        messages: list[dict[str, Any]] = [{"role": "system", "content": SYSTEM_PROMPT},
                                          {"role": "user", "content": self.run.task}]
        for step in range(1, self.run.max_steps + 1):
            if self.cancel_requested():
                raise _Stop(Run.Status.CANCELLED, "Cancelled.")
            self._budget_check(messages)
            result = self._model_call(messages, step)
            self._account(result, step)
            cap = self.run.max_cost_usd
            if result.tool_calls and cap is not None and self.run.usd >= cap:
                # The model reported more usage than its call could cost (a server miscounting): with
                # the cap reached, no follow-up can happen, so its tool calls are not started either.
                raise _Stop(Run.Status.BUDGET_EXCEEDED, f"The run has cost ${self.run.usd} of its ${cap} cap: "
                                                        "stopped before running the model's tool calls.")
            if result.text:
                self.emit("message", {"step": step, "text": self._masked(result.text), "done": True})
            if not result.tool_calls:
                if result.finish_reason == "length":
                    return Run.Status.FAILED, "The model's answer was cut off at its output token limit."
                return Run.Status.SUCCEEDED, ""
            self._tool_round(result, step, ctx, messages)
        return Run.Status.FAILED, f"Stopped at the step limit ({self.run.max_steps} model calls)."

    def _finish(self, status: str, error: str) -> None:
        if self.ended_elsewhere:
            return
        try:
            self._snapshot_after()
        except SnapshotError as exc:
            logger.warning("agent run %s: after-snapshot failed: %s", self.run.pk, exc)
            error = error or f"The after-run snapshot failed: {exc}"
        if status in (Run.Status.FAILED, Run.Status.BUDGET_EXCEEDED) and self.run.snapshot_before:
            prefs = selectors.prefs_get(user=self.run.user) if self.run.user else None
            if prefs is not None and prefs.auto_rollback_on_failure:
                try:
                    self._auto_rollback()
                except SnapshotError as exc:
                    logger.warning("agent run %s: automatic rollback failed: %s", self.run.pk, exc)
                    error = f"{error} The automatic rollback failed: {exc}".strip()
        run_finish(run_id=self.run.pk, status=status, error=error)


def run_finish(*, run_id: str, status: str, error: str = "") -> bool:
    """Ends the run and its log once (`end` last), frees what is left of its budget reservation,
    appends its receipt, and only then marks the run row ended (what the API and the pages read), so a
    run seen as ended has nothing left to write. False if it had already ended."""
    run_release(run_id=run_id)
    run = Run.objects.select_related("project").get(pk=run_id)
    ended = job_finish(job_id=run.job_id, status=status, result={
        **({"error": error} if error else {}), "steps": run.steps, "usd": str(run.usd),
        "files_changed": run.files_changed, "input_tokens": run.input_tokens, "output_tokens": run.output_tokens})
    if ended:
        run_close(run, status=status, error=error)
    return ended


def run_close(run: Run, *, status: str, error: str) -> None:
    """The ended run's receipt, then its row. A receipt that cannot be appended is logged, not raised:
    the run has ended either way, and the receipts log simply has no entry for it."""
    run.status, run.error, run.ended_at = status, error, timezone.now()
    try:
        receipt_append(facts=selectors.run_receipt_facts(run=run))
    except (ApiError, DatabaseError):
        logger.exception("agent run %s: its receipt could not be appended", run.pk)
    Run.objects.filter(pk=run.pk).update(status=status, error=error, ended_at=run.ended_at)


def run_execute(*, run_id: str) -> None:
    """The task body: claims the queued run and drives it to its end. A run that is not queued any
    more (cancelled while queued, or delivered twice) is left alone."""
    run = Run.objects.select_related("project", "workspace", "user").filter(pk=run_id).first()
    if run is None or not job_start(job_id=run.job_id):
        return
    Run.objects.filter(pk=run_id, status=Run.Status.QUEUED).update(status=Run.Status.RUNNING,
                                                                   started_at=timezone.now())
    run.refresh_from_db(fields=["status", "started_at"])
    try:
        RunLoop(run).execute()
    finally:
        connections.close_all()


def runs_reap(*, stale_seconds: float | None = None) -> list[str]:
    """Ends `failed` every running run whose worker stopped writing its heartbeat (killed, crashed):
    the log keeps what was appended; `end` says why. The run's ids."""
    stale = stale_seconds if stale_seconds is not None else settings.KF_JOB_STALE_SECONDS
    cutoff = timezone.now() - timedelta(seconds=stale)
    reaped = []
    for run in Run.objects.filter(status=Run.Status.RUNNING, job__status=Job.Status.RUNNING,
                                  job__heartbeat_at__lt=cutoff).only("pk"):
        if run_finish(run_id=run.pk, status=Run.Status.FAILED,
                      error="The worker running this run stopped (killed or crashed); the run was ended."):
            reaped.append(run.pk)
    # A worker that died between ending a run's log and closing its row (receipt, status).
    for run in Run.objects.filter(status__in=[Run.Status.QUEUED, Run.Status.RUNNING], job__status__in=Job.FINAL,
                                  job__ended_at__lt=cutoff).select_related("project", "job"):
        run_release(run_id=run.pk)
        run_close(run, status=run.job.status, error=str((run.job.result or {}).get("error", "")))
        reaped.append(run.pk)
    return reaped


def context_tokens(*, model: str) -> int:
    """What every model call of a run sends besides the conversation: the system prompt and the tool
    schemas (for the run's estimate)."""
    return count_message_tokens(model=model, messages=[{"role": "system", "content": SYSTEM_PROMPT}],
                                tools=openai_tools())

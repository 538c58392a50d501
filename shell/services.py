"""Shell commands and test runs as jobs (streams.Job of kind "shell" / "test").

A request checks its input, creates the job with its first event (`job {job_id, …}`) and enqueues
the task after commit; the task (shell_execute) runs the command through shell.runner and turns its
output into `stdout` / `stderr` events, batched (every BATCH_SECONDS or BATCH_CHARS), and ends the job
with `end {status, exit_code, duration_ms, …}`. Cancel raises the job's flag (streams.job_cancel); the
running task polls it and kills the process group.

The command's environment is built from ALLOWED_ENV, never copied from kf's own: kf's settings, keys
and database URL stay out. Secrets asked for by name are added as environment variables at run time,
fetched by the worker through secrets_app.services.secrets_for_use; their values never go into the job
row or an event (output is masked by secrets_app.masking).
"""

import logging
import os
import pwd
import shlex
import shutil
import time
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction

from accounts.models import User
from api.errors import ApiError, InvalidRequest
from api.tasking import enqueue
from projects import paths
from projects.models import Project
from secrets_app.masking import mask_text
from secrets_app.selectors import name_check, secret_list
from secrets_app.services import secrets_for_use
from shell import testrunners
from shell.runner import CommandOutcome, CommandSpec, run_command
from streams.models import Job
from streams.services import (
    event_append,
    job_cancel,
    job_cancel_requested,
    job_create,
    job_finish,
    job_start,
)

logger = logging.getLogger("kf.shell")

SHELL = "shell"
TEST = "test"
COMMAND_KINDS = (SHELL, TEST)
# Jobs the shell page lists and may cancel: ssh jobs (shell/ssh.py) are commands too.
LISTED_KINDS = (SHELL, TEST, "ssh")

COMMAND_MAX_CHARS = 16 * 1024
SECRETS_MAX = 50
BATCH_SECONDS = 0.05
BATCH_CHARS = 16 * 1024
EVENT_MAX_CHARS = 16 * 1024
OUTPUT_KEEP_FOR_PARSING = 4 * 1024 * 1024  # go/cargo results come from their output

DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
# Where toolchains live (rustup, cargo, go, a JDK, pyenv, nvm): passed on from kf's environment when
# set, because HOME is the job's own and tools would otherwise look for them there.
TOOL_VARS = ("RUSTUP_HOME", "CARGO_HOME", "GOROOT", "GOPATH", "JAVA_HOME", "PYENV_ROOT", "NVM_DIR")


# --- input checks --------------------------------------------------------------------------------

def command_check(command: object) -> str:
    if not isinstance(command, str) or not command.strip():
        raise InvalidRequest("command is required.", details={"command": ["required"]})
    if len(command) > COMMAND_MAX_CHARS:
        raise InvalidRequest(f"command is longer than {COMMAND_MAX_CHARS} characters.",
                             details={"command": ["too long"]})
    if "\x00" in command:
        raise InvalidRequest("command contains a NUL byte.", details={"command": ["NUL byte"]})
    return command


def timeout_check(timeout_s: object) -> int:
    maximum = settings.KF_SHELL_MAX_TIMEOUT_SECONDS
    if timeout_s is None:
        return min(settings.KF_SHELL_TIMEOUT_SECONDS, maximum)
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, int) or not 1 <= timeout_s <= maximum:
        raise InvalidRequest(f"timeout_s must be a whole number of seconds from 1 to {maximum}.",
                             details={"timeout_s": [f"between 1 and {maximum}"]})
    return timeout_s


def cwd_resolve(project: Project, cwd: object) -> tuple[str, Path]:
    """(the cwd relative to the project root, its real path). Refuses `..`, absolute paths, NUL, and
    symlinks that lead out of the root."""
    if cwd is None:
        cwd = ""
    if not isinstance(cwd, str):
        raise InvalidRequest("cwd must be a string.", details={"cwd": ["not a string"]})
    try:
        rel = paths.clean_relative(cwd, allow_root=True)
        real = paths.resolve_under(Path(project.root), rel or ".")
    except InvalidRequest as exc:
        reason = next(iter((exc.details or {}).get("path", [])), "invalid")
        if reason == "outside the projects root":
            reason = "outside the project"
        raise InvalidRequest(f"cwd must be a folder inside the project: {reason}.", details={"cwd": [reason]}) from exc
    return rel, real


def secret_names_check(*, user: User, project: Project, names: object) -> list[str]:
    """Names only: the values are fetched by the worker when the command starts (audited there)."""
    if names is None:
        return []
    if not isinstance(names, list) or len(names) > SECRETS_MAX:
        raise InvalidRequest(f"secrets must be a list of at most {SECRETS_MAX} names.",
                             details={"secrets": ["a list of names"]})
    clean: list[str] = []
    for name in names:
        name_check(name, field="secrets")
        if name not in clean:
            clean.append(name)
    if clean:
        _, rows = secret_list(user=user, ws_id=project.workspace_id)
        known = set(rows.filter(name__in=clean).values_list("name", flat=True))
        unknown = [n for n in clean if n not in known]
        if unknown:
            raise InvalidRequest(f"No such secret in this workspace: {', '.join(unknown)}.",
                                 details={"secrets": [f"{n}: no such secret" for n in unknown]})
    return clean


# --- starting jobs -------------------------------------------------------------------------------

def _job_start_new(*, user: User, project: Project, kind: str, params: dict[str, Any], queue: bool,
                   extra_params: dict[str, Any] | None) -> Job:
    from shell.tasks.commands import shell_execute_task

    with transaction.atomic():
        job = job_create(kind=kind, owner=user, workspace=project.workspace, project_id=project.pk,
                         params={**params, **(extra_params or {})})
        # The first event of the log, so a follower knows what it follows.
        event_append(job_id=job.pk, type="job", data={"job_id": job.pk, "kind": kind, "project_id": project.pk,
                                                      "command": params["command"], "cwd": params["cwd"]})
        if queue:
            enqueue(shell_execute_task, job.pk)
    return job


def shell_run_start(*, user: User, project: Project, command: object, cwd: object = None,
                    secrets: object = None, timeout_s: object = None, queue: bool = True,
                    extra_params: dict[str, Any] | None = None) -> Job:
    """A shell job, queued for a worker; queue=False when the caller runs it itself (shell_execute),
    as the agent's tools do inside the run's worker."""
    command = command_check(command)
    rel, _ = cwd_resolve(project, cwd)
    params = {"command": command, "cwd": rel, "timeout_s": timeout_check(timeout_s),
              "secrets": secret_names_check(user=user, project=project, names=secrets)}
    return _job_start_new(user=user, project=project, kind=SHELL, params=params, queue=queue,
                          extra_params=extra_params)


def test_args_check(args: object) -> list[str]:
    if args is None:
        return []
    if isinstance(args, str):
        try:
            args = shlex.split(args)
        except ValueError as exc:
            raise InvalidRequest(f"args could not be split: {exc}.", details={"args": ["unbalanced quotes"]}) from exc
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args) or len(args) > 100:
        raise InvalidRequest("args must be a list of at most 100 strings (or one string).",
                             details={"args": ["a list of strings"]})
    if any("\x00" in a for a in args) or sum(len(a) for a in args) > COMMAND_MAX_CHARS:
        raise InvalidRequest("args are too long or contain a NUL byte.", details={"args": ["invalid"]})
    return args


def shell_test_start(*, user: User, project: Project, runner: object = None, args: object = None,
                     cwd: object = None, secrets: object = None, timeout_s: object = None, queue: bool = True,
                     extra_params: dict[str, Any] | None = None) -> Job:
    if runner is not None and not isinstance(runner, str):
        raise InvalidRequest("runner must be a string.", details={"runner": ["not a string"]})
    args = test_args_check(args)
    rel, real = cwd_resolve(project, cwd)
    command, detected = testrunners.runner_command(root=real, runner=runner or None, args=args,
                                                 junit_path="<per job>", path=_job_path())
    params = {"command": command.command, "cwd": rel, "timeout_s": timeout_check(timeout_s),
              "secrets": secret_names_check(user=user, project=project, names=secrets),
              "runner": command.runner, "runner_reason": detected.reason, "args": args}
    return _job_start_new(user=user, project=project, kind=TEST, params=params, queue=queue,
                          extra_params=extra_params)


def shell_cancel(*, job: Job) -> Job:
    job_cancel(job=job)
    job.refresh_from_db()
    return job


# --- running -------------------------------------------------------------------------------------

def _job_path() -> str:
    return os.environ.get("PATH") or DEFAULT_PATH


def job_environment(*, home: Path, tmp: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """A small environment, built from scratch (never a copy of kf's own)."""
    try:
        account = pwd.getpwuid(os.getuid())
        user, real_home = account.pw_name, Path(account.pw_dir)
    except KeyError:
        user, real_home = "kf", Path("/nonexistent")
    env = {
        "PATH": _job_path(),
        "HOME": str(home),
        "TMPDIR": str(tmp),
        "USER": user,
        "LOGNAME": user,
        "SHELL": "/bin/bash" if os.path.exists("/bin/bash") else "/bin/sh",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "TERM": "dumb",
        "CI": "true",  # tools stay non-interactive and plain
        "PYTHONUNBUFFERED": "1",  # output shows as it happens, not at exit
    }
    for name in TOOL_VARS:
        if os.environ.get(name):
            env[name] = os.environ[name]
    # rustup and cargo look under $HOME when these are unset: point them at the real ones.
    for name, folder in (("RUSTUP_HOME", ".rustup"), ("CARGO_HOME", ".cargo")):
        if name not in env and (real_home / folder).is_dir():
            env[name] = str(real_home / folder)
    env.update(extra or {})
    return env


class _EventBatcher:
    """Output → `stdout` / `stderr` events: consecutive text of one stream is merged, and written when
    BATCH_SECONDS have passed since the oldest unwritten text or BATCH_CHARS are waiting."""

    def __init__(self, job_id: str, keep_stdout: bool) -> None:
        self.job_id = job_id
        self.pending: list[list[str]] = []
        self.size = 0
        self.since = 0.0
        self.events = 0
        self.keep_stdout = keep_stdout
        self.kept: list[str] = []
        self.kept_chars = 0

    def add(self, stream: str, text: str) -> None:
        if self.keep_stdout and stream == "stdout" and self.kept_chars < OUTPUT_KEEP_FOR_PARSING:
            self.kept.append(text)
            self.kept_chars += len(text)
        if not self.pending:
            self.since = time.monotonic()
        if self.pending and self.pending[-1][0] == stream:
            self.pending[-1][1] += text
        else:
            self.pending.append([stream, text])
        self.size += len(text)
        if self.size >= BATCH_CHARS:
            self.flush()

    def tick(self) -> None:
        if self.pending and time.monotonic() - self.since >= BATCH_SECONDS:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        with transaction.atomic():
            for stream, text in self.pending:
                for start in range(0, len(text), EVENT_MAX_CHARS):
                    event_append(job_id=self.job_id, type=stream, data={"text": text[start:start + EVENT_MAX_CHARS]})
                    self.events += 1
        self.pending = []
        self.size = 0


def _job_dir(job_id: str) -> Path:
    return Path(settings.KF_DATA_DIR) / "shell" / "jobs" / job_id


def _secret_values(job: Job, project: Project) -> dict[str, str]:
    names = job.params.get("secrets") or []
    if not names:
        return {}
    if job.owner is None:
        raise InvalidRequest("The user who started this command no longer exists.")
    return secrets_for_use(user=job.owner, workspace=project.workspace, names=names)


def shell_execute(*, job_id: str, mask: list[str] | None = None) -> None:
    """The task: runs a shell or test job to its end. Always ends the job (`end` is the last event).
    `mask`: more values to mask in its output than its own secrets (an agent run's)."""
    job = Job.objects.select_related("owner").filter(pk=job_id).first()
    if job is None or not job_start(job_id=job_id):
        return  # cancelled while queued (already ended), or run twice
    folder = _job_dir(job_id)
    started = time.monotonic()

    def failed(error: str) -> dict[str, Any]:
        result: dict[str, Any] = {"error": error, "exit_code": None,
                                  "duration_ms": int((time.monotonic() - started) * 1000)}
        if job.kind == TEST:
            result["runner"] = job.params.get("runner")
        return result

    try:
        result = _execute(job, folder, mask or [])
    except ApiError as exc:
        job_finish(job_id=job_id, status=Job.Status.FAILED, result=failed(exc.message))
    except OSError as exc:
        # Could not start the process (the folder vanished, no shell): say which, without a traceback.
        logger.warning("shell job %s could not start: %s", job_id, exc.strerror or exc)
        job_finish(job_id=job_id, status=Job.Status.FAILED,
                   result=failed(f"could not start the command: {exc.strerror or exc}"))
    except BaseException:
        job_finish(job_id=job_id, status=Job.Status.FAILED, result=failed("internal error"))
        raise
    else:
        job_finish(job_id=job_id, status=result.pop("status"), result=result)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _execute(job: Job, folder: Path, mask: list[str]) -> dict[str, Any]:
    project = Project.objects.select_related("workspace").filter(pk=job.project_id).first()
    if project is None:
        raise InvalidRequest("The project no longer exists.")
    # Again here: the folder may have been replaced (by a symlink out of the project) since the request.
    _, cwd = cwd_resolve(project, job.params.get("cwd", ""))
    secrets = _secret_values(job, project)
    home, tmp = folder / "home", folder / "tmp"
    home.mkdir(parents=True, exist_ok=True)
    tmp.mkdir(exist_ok=True)
    junit = folder / "junit.xml"
    extra: dict[str, str] = {}
    runner = job.params.get("runner")
    if job.kind == TEST:
        test_cmd, _ = testrunners.runner_command(root=cwd, runner=runner, args=job.params.get("args") or [],
                                               junit_path=str(junit), path=_job_path())
        extra.update(test_cmd.env)
        command = test_cmd.command
    else:
        command = job.params["command"]
    extra.update(secrets)
    env = job_environment(home=home, tmp=tmp, extra=extra)
    shell = "/bin/bash" if os.path.exists("/bin/bash") else "/bin/sh"
    masked = [*secrets.values(), *(value for value in mask if value)]
    spec = CommandSpec(argv=[shell, "-c", command], cwd=str(cwd), env=env, timeout_s=job.params["timeout_s"],
                       output_max_bytes=settings.KF_SHELL_OUTPUT_MAX_BYTES,
                       mask=masked)
    batcher = _EventBatcher(job.pk, keep_stdout=job.kind == TEST)

    def truncated(limit: int) -> None:
        batcher.flush()
        event_append(job_id=job.pk, type="truncated", data={
            "limit_bytes": limit,
            "message": f"Output passed {limit} bytes: the rest is not shown or kept; the command runs on."})

    outcome = run_command(spec, on_output=batcher.add, on_truncated=truncated,
                          should_cancel=lambda: job_cancel_requested(job.pk), on_tick=batcher.tick)
    batcher.flush()
    result = _result(outcome, job.params["timeout_s"])
    if job.kind == TEST:
        result.update(_test_result(runner, junit, cwd, job.params.get("cwd", ""), "".join(batcher.kept), masked))
    return result


def _result(outcome: CommandOutcome, timeout_s: int) -> dict[str, Any]:
    if outcome.cancelled:
        status = Job.Status.CANCELLED
    elif outcome.exit_code == 0 and not outcome.timed_out:
        status = Job.Status.SUCCEEDED
    else:
        status = Job.Status.FAILED
    result: dict[str, Any] = {"status": status, "exit_code": outcome.exit_code, "duration_ms": outcome.duration_ms,
                              "signal": outcome.signal, "output_bytes": outcome.output_bytes,
                              "truncated": outcome.truncated, "timed_out": outcome.timed_out}
    if outcome.timed_out:
        result["error"] = f"timed out after {timeout_s} s"
    return result


def _test_result(runner: str, junit: Path, root: Path, rel: str, stdout: str, mask: list[str]) -> dict[str, Any]:
    """Counts and failures; paths relative to the project root (the runner ran in `rel` inside it)."""
    parsed = testrunners.parse_junit(junit, root=root, runner=runner) or testrunners.parse_output(
        stdout, root=root, runner=runner)
    if parsed is None:
        return {"runner": runner, "results_from": None, "passed": None, "failed": None, "skipped": None,
                "errors": None, "failures": []}
    # The JUnit file never went through the stream's masker.
    failures = [{"name": mask_text(f.name, mask), "message": mask_text(f.message, mask),
                 "path": f"{rel}/{f.path}" if rel and f.path else f.path, "line": f.line} for f in parsed.failures]
    return {"runner": runner, "results_from": parsed.source, "passed": parsed.passed, "failed": parsed.failed,
            "skipped": parsed.skipped, "errors": parsed.errors, "failures": failures,
            "failures_truncated": parsed.failures_truncated}

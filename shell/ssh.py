"""SSH to the hosts of the server's ssh config: list them, run a command on one as a streamed job,
pull a file from one into a project. asyncssh does the protocol; each connection lives in an event
loop of its own thread, so callers (request threads, Celery task threads) stay synchronous and the
database is only ever touched from the caller's thread.

Hosts come from the file at KF_SSH_CONFIG, in OpenSSH's format and with its rules (see
`parse_ssh_config`): a request names a host by its alias there, never by an address, so kf only
ever connects where the operator said it may. Host keys are checked against KF_SSH_KNOWN_HOSTS and
nothing else: an unknown or changed key fails the connection with a clear reason; kf never adds a key.

Authentication is by key only: the host's IdentityFile(s), or asyncssh's defaults (~/.ssh/id_*)
when it names none. No ssh-agent, no password or keyboard-interactive prompt, and neither
~/.ssh/config nor the system ssh_config is read a second time by asyncssh: what `ssh-hosts` shows
is exactly what is used. Of the config's options kf applies Host, HostName, User, Port and
IdentityFile; others (ProxyJump, ProxyCommand, …) are not applied.
"""

import asyncio
import codecs
import errno
import fnmatch
import getpass
import glob
import hashlib
import logging
import os
import queue
import secrets
import shlex
import stat
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import asyncssh
from django.conf import settings
from django.db import transaction
from rest_framework import status

from accounts.models import User, Workspace
from accounts.services import audit_record
from api.errors import ApiError, Conflict, InvalidRequest, NotFound, PayloadTooLarge
from api.tasking import enqueue
from projects.models import Project
from projects.paths import clean_relative, path_inside
from streams.models import Job
from streams.services import event_append, job_cancel_requested, job_create, job_finish, job_start

logger = logging.getLogger("kf.ssh")

T = TypeVar("T")

DEFAULT_PORT = 22
INCLUDE_MAX_DEPTH = 16  # OpenSSH's READCONF_MAX_DEPTH
REMOTE_PATH_MAX_CHARS = 4096
COMMAND_MAX_CHARS = 16 * 1024

# Output batching: one event per stream switch, per FLUSH_BYTES, or FLUSH_SECONDS after its first byte.
FLUSH_BYTES = 16 * 1024
FLUSH_SECONDS = 0.05
CANCEL_POLL_SECONDS = 0.2
# After cancel/timeout, how long the remote group gets to die before kf closes the channel anyway.
STOP_GRACE_SECONDS = 4.0
PULL_CHUNK_BYTES = 256 * 1024


class SshError(ApiError):
    """An SSH connection or session failed: `details.reason` says how (host_key_unknown,
    host_key_changed, auth_failed, connect_failed, timeout, key_unusable, disconnected, …)."""

    status_code = status.HTTP_502_BAD_GATEWAY
    default_code = "ssh_failed"
    default_detail = "The SSH connection failed."

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message, details={"reason": reason})
        self.reason = reason


# --- hosts: the server's ssh config ----------------------------------------------------------------

@dataclass(frozen=True)
class SshHost:
    alias: str
    hostname: str
    user: str
    port: int
    identity_files: tuple[str, ...] = ()

    @property
    def address(self) -> str:
        return f"{self.hostname}:{self.port}"


@dataclass
class _Option:
    patterns: tuple[str, ...] | None  # the enclosing Host line (("*",) before any); None: under Match
    key: str  # lower-case keyword
    args: list[str]


@dataclass
class _ParsedConfig:
    aliases: list[str] = field(default_factory=list)
    options: list[_Option] = field(default_factory=list)


def _tokens(line: str) -> tuple[str, list[str]] | None:
    """`Keyword args…` or `Keyword=args…`, with OpenSSH's double quotes; None for blanks/comments."""
    line = line.strip()
    if not line or line.startswith("#"):
        return None
    head, sep, rest = line.partition("=")
    if sep and head.strip() and " " not in head.strip() and "\t" not in head.strip():
        keyword, value = head.strip(), rest
    else:
        parts = line.split(None, 1)
        keyword, value = parts[0], parts[1] if len(parts) > 1 else ""
    try:
        args = shlex.split(value, comments=True, posix=True)
    except ValueError:  # an unbalanced quote: OpenSSH refuses the line, so do we
        return None
    return keyword.lower(), args


def _local_user() -> str:
    """The user kf runs as: OpenSSH's default User."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no USER/LOGNAME and no passwd entry (an arbitrary container uid)
        return str(os.getuid())


def _is_alias(name: str) -> bool:
    return bool(name) and not name.startswith("!") and not any(c in name for c in "*?")


def _host_matches(patterns: tuple[str, ...], alias: str) -> bool:
    """OpenSSH's Host matching: any positive pattern matches and no negated one does (case-insensitive)."""
    name = alias.lower()
    matched = False
    for pattern in patterns:
        for part in pattern.split(","):
            negated = part.startswith("!")
            if fnmatch.fnmatchcase(name, part.lstrip("!").lower()):
                if negated:
                    return False
                matched = True
    return matched


def _parse_file(path: Path, parsed: _ParsedConfig, patterns: tuple[str, ...] | None, depth: int) -> None:
    try:
        text = path.read_text(errors="replace")
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return
    except OSError as exc:
        logger.warning("cannot read ssh config %s: %s", path, exc.strerror)
        return
    current = patterns
    for line in text.splitlines():
        tokens = _tokens(line)
        if tokens is None:
            continue
        key, args = tokens
        if key == "host":
            current = tuple(args)
            parsed.aliases.extend(a for a in args if _is_alias(a))
        elif key == "match":
            current = None  # Match criteria (exec, user, …) are not evaluated: its options never apply
        elif key == "include":
            if depth >= INCLUDE_MAX_DEPTH:
                logger.warning("ssh config %s: Include nested too deeply, ignored", path)
                continue
            for pattern in args:
                expanded = os.path.expanduser(pattern)
                if not os.path.isabs(expanded):
                    expanded = str(path.parent / expanded)
                for included in sorted(glob.glob(expanded)):
                    _parse_file(Path(included), parsed, current, depth + 1)
        elif args:
            parsed.options.append(_Option(current, key, args))


def _expand(value: str, *, alias: str, user: str, hostname: str = "", port: int = DEFAULT_PORT) -> str:
    """The TOKENS of ssh_config(5) that make sense here: %h %n %p %r %u %d %%."""
    tokens = {"h": hostname or alias, "n": alias, "p": str(port), "r": user, "u": _local_user(),
              "d": str(Path.home()), "%": "%"}
    out, i = [], 0
    while i < len(value):
        if value[i] == "%" and i + 1 < len(value) and value[i + 1] in tokens:
            out.append(tokens[value[i + 1]])
            i += 2
        else:
            out.append(value[i])
            i += 1
    return "".join(out)


def _resolve(parsed: _ParsedConfig, alias: str) -> SshHost:
    """OpenSSH's rule: for each option, the first value from a block that matches the alias wins
    (IdentityFile accumulates)."""
    first: dict[str, str] = {}
    identity: list[str] = []
    for option in parsed.options:
        if option.patterns is None or not _host_matches(option.patterns, alias):
            continue  # another host's block, or a Match block (never evaluated)
        if option.key == "identityfile":
            identity.append(option.args[0])
        else:
            first.setdefault(option.key, option.args[0])
    try:
        port = int(first.get("port", DEFAULT_PORT))
    except ValueError:
        port = DEFAULT_PORT
    if not 0 < port < 65536:
        port = DEFAULT_PORT
    user = _expand(first["user"], alias=alias, user="") if "user" in first else _local_user()
    hostname = _expand(first.get("hostname", alias), alias=alias, user=user, port=port)
    files = tuple(os.path.expanduser(_expand(f, alias=alias, user=user, hostname=hostname, port=port))
                  for f in identity if f.lower() != "none")
    return SshHost(alias=alias, hostname=hostname, user=user, port=port, identity_files=files)


def parse_ssh_config(path: str | Path) -> list[SshHost]:
    """The hosts of an OpenSSH client config, in file order: one per name on each `Host` line that is
    not a pattern (`*`, `?`) or a negation (`!`). Include is followed (globs; relative to the including
    file's folder; at most 16 deep). `Match` blocks are not evaluated: their options are ignored.
    A missing file is no hosts."""
    parsed = _ParsedConfig()
    _parse_file(Path(path), parsed, ("*",), 0)
    hosts: list[SshHost] = []
    seen: set[str] = set()
    for alias in parsed.aliases:
        if alias.lower() in seen:
            continue
        seen.add(alias.lower())
        hosts.append(_resolve(parsed, alias))
    return hosts


def ssh_hosts_list() -> list[SshHost]:
    return parse_ssh_config(settings.KF_SSH_CONFIG)


def ssh_host_get(*, alias: str) -> SshHost:
    """The host of that alias in the server's ssh config; anything else is refused (never an address)."""
    for host in ssh_hosts_list():
        if host.alias == alias:
            return host
    raise InvalidRequest(f"'{alias[:100]}' is not a host of the server's ssh config: see GET /api/shell/ssh-hosts.",
                         details={"host": ["not a host alias from the server's ssh config"]})


# --- connecting ------------------------------------------------------------------------------------

def _known_hosts_path(host: SshHost) -> str:
    path = settings.KF_SSH_KNOWN_HOSTS
    if not path or not os.path.isfile(path):
        # Never fall back to asyncssh's defaults (or to no checking at all).
        raise SshError(f"kf's known_hosts file ({path or 'KF_SSH_KNOWN_HOSTS unset'}) does not exist, so the key "
                       f"of {host.alias} ({host.address}) cannot be verified. Add the host's key to it "
                       f"(check its fingerprint first).", reason="host_key_unknown")
    return path


def _connect_options(host: SshHost) -> dict[str, Any]:
    for key_file in host.identity_files:
        if not os.access(key_file, os.R_OK):
            raise SshError(f"The IdentityFile {key_file} of host {host.alias} does not exist or cannot be read.",
                           reason="key_unusable")
    options: dict[str, Any] = {
        "host": host.hostname, "port": host.port, "username": host.user,
        "known_hosts": _known_hosts_path(host), "config": [], "agent_path": None,
        "password_auth": False, "kbdint_auth": False,
        "connect_timeout": settings.KF_SSH_CONNECT_TIMEOUT_SECONDS,
        "login_timeout": settings.KF_SSH_CONNECT_TIMEOUT_SECONDS,
        "keepalive_interval": 30,
    }
    if host.identity_files:
        options["client_keys"] = list(host.identity_files)
    return options


def _has_known_key(host: SshHost, known_hosts: str) -> bool:
    try:
        trusted, trusted_ca, *_ = asyncssh.match_known_hosts(
            known_hosts, host.hostname, host.hostname, host.port if host.port != DEFAULT_PORT else None)
    except (OSError, ValueError):
        return False
    return bool(trusted or trusted_ca)


def _error_of(exc: BaseException, host: SshHost) -> SshError:
    """A sentence for what went wrong, naming the host by alias and address, never a key or a secret."""
    where = f"{host.alias} ({host.user}@{host.address})"
    if isinstance(exc, SshError):
        return exc
    if isinstance(exc, asyncssh.HostKeyNotVerifiable):
        known_hosts = settings.KF_SSH_KNOWN_HOSTS
        if _has_known_key(host, known_hosts):
            return SshError(f"The host key of {where} does not match the one in kf's known_hosts ({known_hosts}): "
                            "it changed, or someone is intercepting the connection. kf refused to connect.",
                            reason="host_key_changed")
        return SshError(f"The host key of {where} is not in kf's known_hosts ({known_hosts}): kf never accepts an "
                        "unknown key. Verify its fingerprint and add it (e.g. from ssh-keyscan).",
                        reason="host_key_unknown")
    if isinstance(exc, asyncssh.PermissionDenied):
        return SshError(f"{where} refused kf's key: authentication failed.", reason="auth_failed")
    if isinstance(exc, asyncssh.KeyImportError):
        return SshError(f"The IdentityFile of {host.alias} could not be loaded (is it passphrase-protected?).",
                        reason="key_unusable")
    if isinstance(exc, TimeoutError):
        return SshError(f"Connecting to {where} timed out after {settings.KF_SSH_CONNECT_TIMEOUT_SECONDS:g} s.",
                        reason="timeout")
    if isinstance(exc, asyncssh.ChannelOpenError):
        return SshError(f"{where} refused to open a session: {exc.reason}", reason="session_refused")
    if isinstance(exc, asyncssh.DisconnectError):
        return SshError(f"{where} closed the connection: {exc.reason}", reason="disconnected")
    if isinstance(exc, OSError):
        return SshError(f"Could not connect to {where}: {exc.strerror or exc}.", reason="connect_failed")
    return SshError(f"The SSH session with {where} failed ({type(exc).__name__}).", reason="failed")


def _in_own_loop(factory: Callable[[], Awaitable[T]]) -> T:
    """Runs a coroutine to its end in a fresh event loop on a thread of its own (the caller may be a
    request thread, a Celery thread, or already inside an event loop) and returns or raises its result."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = asyncio.run(factory())
        except BaseException as exc:  # noqa: BLE001 -- handed over to the caller's thread, re-raised there
            outcome["error"] = exc

    thread = threading.Thread(target=target, name="kf-ssh", daemon=True)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


# --- ssh-run -----------------------------------------------------------------------------------------

# The remote side of a command: the user's command runs under their login shell with stdin from
# /dev/null, while a watcher reads the channel's stdin. kf never sends on it, so it only ends when kf
# closes it (cancel, timeout) or the connection drops (a dead worker): the watcher then ends the whole
# session process group, TERM then KILL. This works on any POSIX sshd, unlike the SSH "signal"
# request, which OpenSSH ignores for sessions without privilege separation (e.g. root logins).
# (An asynchronous list's stdin is /dev/null unless redirected, hence the explicit `<&3`.)
_WATCHER = ('exec 3<&0; { IFS= read -r _; trap "" TERM; kill -s TERM 0; sleep 2; kill -s KILL 0; } <&3 >/dev/null 2>&1 & '
            'w=$!; "${SHELL:-/bin/sh}" -c "$1" </dev/null 3<&-; s=$?; kill $w 2>/dev/null; exit $s')


def remote_command_line(command: str) -> str:
    return f"exec /bin/sh -c {shlex.quote(_WATCHER)} kf-ssh {shlex.quote(command)}"


@dataclass
class _RemoteOutcome:
    exit_status: int | None = None
    exit_signal: str | None = None
    error: SshError | None = None
    stopped: bool = False


class _Session(asyncssh.SSHClientSession[bytes]):
    def __init__(self, sink: "queue.Queue[tuple[str, Any]]") -> None:
        self.sink = sink
        self.exit_status: int | None = None
        self.exit_signal: str | None = None

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        self.sink.put(("out", ("stderr" if datatype == asyncssh.EXTENDED_DATA_STDERR else "stdout", data)))

    def exit_status_received(self, status: int) -> None:
        self.exit_status = status

    def exit_signal_received(self, signal: str, core_dumped: bool, msg: str, lang: str) -> None:
        self.exit_signal = signal


class _RemoteCommand:
    """One command on one host, in its own thread and event loop. On `events`: ("started", None) once
    the command runs, ("out", (stream, bytes)) as output comes, and last ("done", _RemoteOutcome).
    `stop()` may be called from any thread at any time (also before the connection is up)."""

    def __init__(self, host: SshHost, command: str) -> None:
        self.host = host
        self.command = command
        self.events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._stop_requested = False
        self._thread = threading.Thread(target=self._run, name="kf-ssh-run", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._lock:
            self._stop_requested = True
            if self._loop is not None and self._stop is not None:
                self._loop.call_soon_threadsafe(self._stop.set)

    def _run(self) -> None:
        outcome = _RemoteOutcome()
        try:
            outcome = asyncio.run(self._main())
        except BaseException as exc:  # reported as the job's error; the task thread lives on
            logger.exception("ssh session with %s failed", self.host.alias)
            outcome.error = _error_of(exc, self.host)
        finally:
            self.events.put(("done", outcome))

    async def _main(self) -> _RemoteOutcome:
        with self._lock:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            if self._stop_requested:
                self._stop.set()
        stop_wait = asyncio.ensure_future(self._stop.wait())
        try:
            return await self._session(stop_wait)
        finally:
            stop_wait.cancel()

    async def _session(self, stop_wait: "asyncio.Future[Any]") -> _RemoteOutcome:
        outcome = _RemoteOutcome()
        try:
            connecting = asyncio.ensure_future(asyncssh.connect(**_connect_options(self.host)))
        except SshError as exc:
            outcome.error = exc
            return outcome
        await asyncio.wait({connecting, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        if not connecting.done():
            connecting.cancel()
            await asyncio.gather(connecting, return_exceptions=True)
            outcome.stopped = True
            return outcome
        try:
            conn = connecting.result()
        except (asyncssh.Error, asyncssh.KeyImportError, OSError, SshError, TimeoutError) as exc:
            outcome.error = _error_of(exc, self.host)
            return outcome
        try:
            try:
                channel, session = await conn.create_session(lambda: _Session(self.events),
                                                             remote_command_line(self.command), encoding=None)
            except (asyncssh.Error, OSError) as exc:
                outcome.error = _error_of(exc, self.host)
                return outcome
            self.events.put(("started", None))
            closed = asyncio.ensure_future(channel.wait_closed())
            await asyncio.wait({closed, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
            if not closed.done():
                outcome.stopped = True
                try:
                    channel.write_eof()  # the watcher's cue (see _WATCHER)
                    channel.send_signal("TERM")  # honoured by sshds that allow it; harmless otherwise
                except (OSError, asyncssh.Error):
                    pass  # the channel closed meanwhile: the command is over anyway
                try:
                    await asyncio.wait_for(asyncio.shield(closed), STOP_GRACE_SECONDS)
                except TimeoutError:
                    channel.close()
                    try:
                        await asyncio.wait_for(asyncio.shield(closed), 2)
                    except TimeoutError:
                        conn.abort()  # the server does not even confirm the close: stop waiting for it
            outcome.exit_status = session.exit_status
            outcome.exit_signal = session.exit_signal
            return outcome
        finally:
            conn.close()
            try:
                await asyncio.wait_for(conn.wait_closed(), 5)
            except TimeoutError:
                pass


class _OutputEvents:
    """Turns output bytes into `stdout`/`stderr` events: UTF-8 decoded incrementally per stream (a
    character split across packets stays whole; invalid bytes → U+FFFD), batched, and capped at
    `max_bytes` for both streams together. Past the cap nothing more is stored (one `truncated`
    event says so) but the command runs on, as /api/shell/run does; the timeout still bounds it."""

    def __init__(self, job_id: str, max_bytes: int) -> None:
        self.job_id = job_id
        self.max_bytes = max_bytes
        self.total = 0
        self.truncated = False
        self.decoders = {name: codecs.getincrementaldecoder("utf-8")(errors="replace") for name in ("stdout", "stderr")}
        self.pending_stream: str | None = None
        self.pending: list[str] = []
        self.pending_bytes = 0
        self.pending_since = 0.0

    def feed(self, stream: str, data: bytes) -> None:
        before = self.total
        self.total += len(data)
        if self.truncated:
            return
        if self.total > self.max_bytes:
            self.truncated = True
            self._add(stream, self.decoders[stream].decode(data[: max(0, self.max_bytes - before)]))
            self.flush()
            event_append(job_id=self.job_id, type="truncated", data={
                "limit_bytes": self.max_bytes,
                "message": f"Output passed {self.max_bytes} bytes: the rest is not shown."})
            return
        self._add(stream, self.decoders[stream].decode(data))
        if self.pending_bytes >= FLUSH_BYTES:
            self.flush()

    def _add(self, stream: str, text: str) -> None:
        if not text:
            return
        if self.pending_stream not in (None, stream):
            self.flush()
        if not self.pending:
            self.pending_since = time.monotonic()
        self.pending_stream = stream
        self.pending.append(text)
        self.pending_bytes += len(text)

    def tick(self) -> None:
        if self.pending and time.monotonic() - self.pending_since >= FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        if self.pending and self.pending_stream:
            event_append(job_id=self.job_id, type=self.pending_stream, data={"text": "".join(self.pending)})
        self.pending, self.pending_bytes, self.pending_stream = [], 0, None

    def close(self) -> None:
        if not self.truncated:
            for stream, decoder in self.decoders.items():
                self._add(stream, decoder.decode(b"", final=True))
        self.flush()


def ssh_run_start(*, user: User, workspace: Workspace, project_id: str, host: SshHost, command: str,
                  timeout_s: int, ip: str | None = None) -> Job:
    """A queued `ssh` job (its first event: `job {job_id}`), sent to a worker once committed."""
    from shell.tasks.remote import ssh_run_task

    with transaction.atomic():
        job = job_create(kind="ssh", owner=user, workspace=workspace, project_id=project_id,
                         params={"command": command, "host": host.alias, "timeout_s": timeout_s})
        event_append(job_id=job.pk, type="job", data={"job_id": job.pk, "kind": "ssh", "project_id": project_id,
                                                      "command": command, "host": host.alias})
        # Who ran something on which of the operator's hosts; the command itself may hold secrets.
        audit_record(action="ssh_run", actor=user, workspace=workspace, ip=ip, target=host.alias,
                     meta={"job_id": job.pk, "project_id": project_id, "hostname": host.hostname})
        enqueue(ssh_run_task, job.pk)
    return job


def ssh_run(*, job_id: str) -> None:
    """The worker side of ssh-run: connects, streams the output into the job's events, polls the cancel
    flag, enforces the timeout, and ends the job with exit_code, signal and duration_ms."""
    job = Job.objects.get(pk=job_id)
    if not job_start(job_id=job_id):
        return
    started = time.monotonic()
    params = job.params
    timeout_s = float(params.get("timeout_s") or settings.KF_SHELL_TIMEOUT_SECONDS)
    base = {"host": params.get("host", "")}
    try:
        host = ssh_host_get(alias=params.get("host", ""))
    except InvalidRequest as exc:  # the alias left the config after the job was queued
        job_finish(job_id=job_id, status=Job.Status.FAILED, result={
            **base, "exit_code": None, "duration_ms": 0, "error": exc.message, "reason": "unknown_host"})
        return

    remote = _RemoteCommand(host, params["command"])
    output = _OutputEvents(job_id, settings.KF_SHELL_OUTPUT_MAX_BYTES)
    cancelled = timed_out = False
    last_poll = 0.0
    deadline: float | None = None  # the command's time counts from its start; connecting has its own limit
    remote.start()
    try:
        while True:
            try:
                kind, value = remote.events.get(timeout=FLUSH_SECONDS)
            except queue.Empty:
                kind, value = "", None
            if kind == "out":
                output.feed(*value)
            elif kind == "started":
                deadline = time.monotonic() + timeout_s
            elif kind == "done":
                outcome: _RemoteOutcome = value
                break
            output.tick()
            now = time.monotonic()
            if not (cancelled or timed_out):
                if now - last_poll >= CANCEL_POLL_SECONDS:
                    last_poll = now
                    if job_cancel_requested(job_id):
                        cancelled = True
                        remote.stop()
                if not cancelled and deadline is not None and now >= deadline:
                    timed_out = True
                    remote.stop()
    except BaseException:
        remote.stop()  # leave nothing running remotely if this thread fails
        raise
    output.close()

    result: dict[str, Any] = {**base, "exit_code": outcome.exit_status, "signal": outcome.exit_signal,
                              "duration_ms": int((time.monotonic() - started) * 1000),
                              "output_bytes": output.total, "truncated": output.truncated, "timed_out": timed_out}
    if cancelled:
        final = Job.Status.CANCELLED
    elif outcome.error is not None:
        final = Job.Status.FAILED
        result.update(error=outcome.error.message, reason=outcome.error.reason)
    elif timed_out:
        final = Job.Status.FAILED
        result["error"] = f"The command did not finish within {timeout_s:g} s and was stopped."
    elif outcome.exit_status == 0:
        final = Job.Status.SUCCEEDED
    else:
        final = Job.Status.FAILED
        if outcome.exit_status is None and outcome.exit_signal is None:
            result["error"] = "The session ended without an exit status."
    job_finish(job_id=job_id, status=final, result=result)


# --- ssh-pull ----------------------------------------------------------------------------------------

def _open_target_dir(root: str, parts: list[str]) -> int:
    """An fd of the folder `parts` under the project root, creating missing folders. Each step opens
    what is there and then checks where the fd really points (/proc/self/fd), so a symlink, even one
    swapped in meanwhile, cannot lead outside the root."""
    real_root = os.path.realpath(root)
    fd = os.open(real_root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts:
            try:
                child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
            except FileNotFoundError:
                try:
                    os.mkdir(part, 0o755, dir_fd=fd)
                except FileExistsError:
                    pass  # created meanwhile: open whatever it is, checked below
                child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            except NotADirectoryError:
                raise InvalidRequest(f"'{part}' on the way to the target is a file, not a folder.",
                                     details={"path": ["not a folder"]}) from None
            os.close(fd)
            fd = child
            if not path_inside(os.readlink(f"/proc/self/fd/{fd}"), real_root):
                raise InvalidRequest("The path leads outside the project root.", details={"path": ["outside the root"]})
        return fd
    except BaseException:
        os.close(fd)
        raise


def _clean_remote_path(raw: str) -> str:
    if "\x00" in raw:
        raise InvalidRequest("remote_path contains a NUL byte.", details={"remote_path": ["NUL byte"]})
    path = raw.strip()
    path = path.removeprefix("~/")  # SFTP paths that are not absolute are relative to the remote home
    if not path or path == "~" or len(path) > REMOTE_PATH_MAX_CHARS:
        raise InvalidRequest("remote_path must name a file (absolute, or relative to the remote home).",
                             details={"remote_path": ["required"]})
    return path


class LocalWriteFailed(Conflict):
    """The project folder refused the file (permissions, full disk, a folder in the way): a state of
    the project the caller can fix, so `conflict` with the reason, not an internal error."""

    default_detail = "Could not write the file into the project."


@dataclass
class PullResult:
    path: str
    size: int
    sha256: str
    replaced: bool


async def _pull(host: SshHost, remote_path: str, root: str, rel: str, max_bytes: int) -> PullResult:
    parent, _, name = rel.rpartition("/")
    where = f"{host.alias}:{remote_path}"
    try:
        conn = await asyncssh.connect(**_connect_options(host))
    except (asyncssh.Error, asyncssh.KeyImportError, OSError, TimeoutError) as exc:
        raise _error_of(exc, host) from None
    try:
        async with conn, conn.start_sftp_client() as sftp:
            try:
                attrs = await sftp.stat(remote_path)
            except (asyncssh.SFTPNoSuchFile, asyncssh.SFTPNoSuchPath):
                raise NotFound(f"There is no file {where}.", details={"remote_path": ["no such file"]}) from None
            except asyncssh.SFTPPermissionDenied:
                raise InvalidRequest(f"Permission denied reading {where}.",
                                     details={"remote_path": ["permission denied"]}) from None
            regular = (stat.S_ISREG(attrs.permissions) if attrs.permissions is not None
                       else attrs.type == asyncssh.FILEXFER_TYPE_REGULAR)
            if not regular:
                raise InvalidRequest(f"{where} is not a regular file.", details={"remote_path": ["not a regular file"]})
            if attrs.size is not None and attrs.size > max_bytes:
                raise PayloadTooLarge(f"{where} is {attrs.size} bytes; pulls are limited to {max_bytes} bytes.")
            try:
                dir_fd = _open_target_dir(root, parent.split("/") if parent else [])
                try:
                    return await _download(sftp, remote_path, where, dir_fd, name, rel, max_bytes)
                finally:
                    os.close(dir_fd)
            except OSError as exc:  # the project folder gone, a full disk, …
                if exc.errno == errno.ENAMETOOLONG:
                    raise InvalidRequest("A name in the path is too long.", details={"path": ["name too long"]}) from None
                raise LocalWriteFailed(f"Could not write {rel} into the project: {exc.strerror or exc}.") from None
    except asyncssh.SFTPError as exc:
        raise SshError(f"Reading {where} failed: {exc.reason}", reason="sftp_failed") from None
    except (asyncssh.DisconnectError, asyncssh.ChannelOpenError, ConnectionError) as exc:
        raise _error_of(exc, host) from None


async def _download(sftp: asyncssh.SFTPClient, remote_path: str, where: str, dir_fd: int, name: str, rel: str,
                    max_bytes: int) -> PullResult:
    try:
        existing = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        existing = None
    if existing is not None and stat.S_ISLNK(existing.st_mode):
        raise InvalidRequest("The target path is a symlink; kf does not write through links.",
                             details={"path": ["symlink"]})
    if existing is not None and not stat.S_ISREG(existing.st_mode):
        raise InvalidRequest("The target path exists and is not a regular file.", details={"path": ["not a file"]})
    # Written beside the target and renamed over it: readers see the old file or the whole new one.
    tmp = f".{name[:200]}.kf-pull-{secrets.token_hex(6)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=dir_fd)
    digest, size, renamed = hashlib.sha256(), 0, False
    try:
        async with sftp.open(remote_path, "rb") as remote:
            while True:
                chunk = await remote.read(min(PULL_CHUNK_BYTES, max_bytes + 1 - size))
                if not chunk:
                    break
                size += len(chunk)
                if size > max_bytes:  # grew since the stat
                    raise PayloadTooLarge(f"{where} is over {max_bytes} bytes; pulls are limited to that.")
                digest.update(chunk)
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view):]
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        renamed = True
        return PullResult(path=rel, size=size, sha256=digest.hexdigest(), replaced=existing is not None)
    finally:
        if fd >= 0:
            os.close(fd)
        if not renamed:
            try:
                os.unlink(tmp, dir_fd=dir_fd)
            except FileNotFoundError:
                pass


def ssh_pull(*, user: User, project: Project, alias: str, remote_path: str, path: str,
             ip: str | None = None) -> PullResult:
    """Copies a remote file (SFTP) into the project at `path`: capped at KF_SSH_PULL_MAX_BYTES (by the
    remote stat and while reading), written to a temp file in the target folder and renamed."""
    host = ssh_host_get(alias=alias)
    rel = clean_relative(path)
    remote = _clean_remote_path(remote_path)
    max_bytes = settings.KF_SSH_PULL_MAX_BYTES

    async def pull() -> PullResult:
        try:
            return await asyncio.wait_for(_pull(host, remote, project.root, rel, max_bytes),
                                          settings.KF_SHELL_TIMEOUT_SECONDS)
        except TimeoutError:
            raise SshError(f"Pulling {host.alias}:{remote} did not finish within "
                           f"{settings.KF_SHELL_TIMEOUT_SECONDS} s.", reason="timeout") from None

    result = _in_own_loop(pull)
    audit_record(action="ssh_pull", actor=user, workspace=project.workspace, ip=ip, target=host.alias,
                 meta={"project_id": project.pk, "remote_path": remote, "path": result.path, "size": result.size,
                       "sha256": result.sha256})
    return result

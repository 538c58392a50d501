"""Runs one command as its own process group and hands its output on as text while it runs.

- The child starts a new session (start_new_session), so its pid is also its process-group id and
  everything it spawns (unless it calls setsid itself) can be signalled at once with killpg.
- stdout and stderr are read as they come (non-blocking pipes under a selector) and decoded with an
  incremental UTF-8 decoder per stream: a character split across two reads stays whole; invalid
  bytes become U+FFFD. Each stream then goes through its own SecretMasker.
- Cancel and timeout: SIGTERM to the group, SIGKILL to whatever is left after GRACE_SECONDS.
- When the main process exits, whatever it left running in its group (`sleep 300 &`) is ended the
  same way: a job leaves nothing behind.
- Output cap (`output_max_bytes`, stdout and stderr together): past it nothing more is handed on
  (one `on_truncated` call says so) but the pipes keep being drained to the end, so the command is
  neither killed nor blocked on a full pipe: a test run that prints too much still reports its
  result. The timeout still bounds it.
"""

import codecs
import os
import selectors
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from secrets_app.masking import SecretMasker

READ_BYTES = 64 * 1024
SELECT_SECONDS = 0.05
CANCEL_POLL_SECONDS = 0.1
GRACE_SECONDS = 1.0
DRAIN_SECONDS = 2.0

STREAMS = ("stdout", "stderr")


@dataclass(frozen=True)
class CommandSpec:
    argv: list[str]
    cwd: str
    env: dict[str, str]
    timeout_s: float
    output_max_bytes: int
    mask: list[str] = field(default_factory=list, repr=False)  # values to mask: never in a repr or log


@dataclass
class CommandOutcome:
    exit_code: int | None  # None when killed by a signal (see `signal`)
    signal: str | None
    duration_ms: int
    output_bytes: int
    truncated: bool
    timed_out: bool
    cancelled: bool


class _Stream:
    def __init__(self, name: str, mask: list[str]) -> None:
        self.name = name
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.masker = SecretMasker(mask)

    def text(self, data: bytes, *, final: bool = False) -> str:
        text = self.masker.feed(self.decoder.decode(data, final=final))
        if final:
            text += self.masker.flush()
        return text

    def cut(self, data: bytes) -> str:
        """The last bytes before the cap. What the decoder and masker still hold is dropped: it may
        be half a character, or the first part of a secret value."""
        text = self.masker.feed(self.decoder.decode(data))
        self.masker.discard()
        self.decoder.reset()
        return text


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group, from /proc."""
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid pgrp …": comm may hold spaces and parentheses; split after the last ")".
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(entry.name))
    return members


def kill_group(pgid: int, *, grace: float = GRACE_SECONDS) -> None:
    """SIGTERM to the group, SIGKILL to what is left after `grace` seconds; returns once none is alive.

    Called while the group leader is still unreaped (a zombie at worst), so the group id cannot have
    been reused by an unrelated process."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not group_members(pgid):
            return
        time.sleep(0.02)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 5
    while group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.02)


def _exited(pid: int) -> bool:
    """Whether the process has exited, without reaping it (WNOWAIT): its pid, and so its group id,
    stay reserved until we have dealt with the rest of the group."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def run_command(spec: CommandSpec, *, on_output: Callable[[str, str], None],
                on_truncated: Callable[[int], None], should_cancel: Callable[[], bool],
                on_tick: Callable[[], None] = lambda: None) -> CommandOutcome:
    """Runs `spec.argv` to its end (or cancel, or timeout). `on_output(stream, text)` gets masked text
    as it comes; `should_cancel()` is asked every CANCEL_POLL_SECONDS; `on_tick()` runs every loop
    turn (at least every SELECT_SECONDS), so the caller can flush batched output on time.

    Raises OSError if the process cannot be started (no such cwd, no shell)."""
    started = time.monotonic()
    proc = subprocess.Popen(spec.argv, cwd=spec.cwd, env=spec.env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                            close_fds=True)
    pgid = proc.pid
    streams = {proc.stdout.fileno(): _Stream("stdout", spec.mask), proc.stderr.fileno(): _Stream("stderr", spec.mask)}
    selector = selectors.DefaultSelector()
    for fd in streams:
        os.set_blocking(fd, False)
        selector.register(fd, selectors.EVENT_READ)
    total = 0
    truncated = timed_out = cancelled = False
    killed = False  # the group has been dealt with (after exit, cancel or timeout)
    exited_at: float | None = None
    closed_at: float | None = None
    deadline = started + spec.timeout_s
    last_poll = 0.0

    def handle(stream: _Stream, data: bytes) -> None:
        nonlocal total, truncated
        before = total
        total += len(data)
        if truncated:
            return
        if total <= spec.output_max_bytes:
            text = stream.text(data)
        else:
            truncated = True
            text = stream.cut(data[: max(0, spec.output_max_bytes - before)])
        if text:
            on_output(stream.name, text)
        if truncated:
            on_truncated(spec.output_max_bytes)

    try:
        while True:
            if selector.get_map():
                ready = selector.select(timeout=SELECT_SECONDS)
            elif killed:
                break  # the group is dealt with and both pipes are closed: done
            else:
                # Its output is closed: it is exiting (look again soon), or runs on without output.
                ready = []
                closed_at = closed_at or time.monotonic()
                time.sleep(0.01 if time.monotonic() - closed_at < 0.2 else SELECT_SECONDS)
            for key, _ in ready:
                try:
                    data = os.read(key.fd, READ_BYTES)
                except BlockingIOError:
                    continue
                stream = streams[key.fd]
                if data:
                    handle(stream, data)
                else:
                    selector.unregister(key.fd)
                    if not truncated:
                        tail = stream.text(b"", final=True)
                        if tail:
                            on_output(stream.name, tail)
            now = time.monotonic()
            if not killed:
                if now - last_poll >= CANCEL_POLL_SECONDS:
                    last_poll = now
                    if should_cancel():
                        cancelled = killed = True
                        kill_group(pgid)
                if not killed and now >= deadline:
                    timed_out = killed = True
                    kill_group(pgid)
                if not killed and _exited(proc.pid):
                    # The main process is done: end what it left running in its group, which may
                    # also be what keeps our pipes open.
                    killed = True
                    kill_group(pgid, grace=0.2)
            if killed:
                exited_at = exited_at or time.monotonic()
                if time.monotonic() - exited_at > DRAIN_SECONDS:
                    break  # a process outside the group (it called setsid) holds the pipes: stop reading
            on_tick()
    finally:
        selector.close()
        if not killed:
            kill_group(pgid, grace=0.2)  # an exception in a callback: leave nothing running
        proc.stdout.close()
        proc.stderr.close()
        returncode = proc.wait()
    exit_code = returncode if returncode >= 0 else None
    sig = signal.Signals(-returncode).name if returncode < 0 else None
    return CommandOutcome(exit_code=exit_code, signal=sig, duration_ms=int((time.monotonic() - started) * 1000),
                          output_bytes=total, truncated=truncated, timed_out=timed_out, cancelled=cancelled)

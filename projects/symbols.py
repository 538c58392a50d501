"""Symbols of a project's files, extracted by universal-ctags (Debian `universal-ctags`)."""

import functools
import json
import os
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

CTAGS = "/usr/bin/ctags"
BATCH_SIZE = 2000
WORKERS = os.cpu_count() or 2
MIN_SHARE = 50  # files: below this, one more process costs more than it saves
# Column sizes of projects.Symbol: a longer name is no symbol anyone looks up (a Markdown paragraph
# under a `#`, a minified identifier), so such rows are dropped; other fields are cut.
NAME_MAX, CONTAINER_MAX, KIND_MAX, LANGUAGE_MAX = 255, 255, 40, 50


class SymbolsError(Exception):
    """ctags is missing, is not universal-ctags, failed or took longer than the timeout."""


@dataclass(frozen=True)
class SymbolRow:
    path: str
    name: str
    kind: str
    line: int
    end_line: int | None
    container: str
    language: str


@functools.cache
def _ctags_problem(executable: str) -> str | None:
    try:
        result = subprocess.run([executable, "--version"], check=False, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"ctags cannot be run ({executable}: {exc}); install the Debian package universal-ctags"
    if not result.stdout.startswith("Universal Ctags") or "+json" not in result.stdout:
        return f"{executable} is not universal-ctags with JSON output; install the Debian package universal-ctags"
    return None


def ctags_available() -> bool:
    return _ctags_problem(CTAGS) is None


def ctags_symbols(root: Path, paths: list[str], *, timeout: float = 120) -> list[SymbolRow]:
    """Symbols of the files at `paths` (relative to `root`), in ctags' order, each with its path exactly
    as given. Files that do not exist or cannot be read are skipped, as are names that ctags' file list
    cannot carry (a line break, or a blank at the end). `timeout` bounds the whole call, batches included."""
    if problem := _ctags_problem(CTAGS):
        raise SymbolsError(problem)
    deadline = time.monotonic() + timeout
    usable = [path for path in paths if path == path.rstrip() and "\n" not in path and "\r" not in path]
    if not usable:
        return []
    # ctags is single-threaded: one process per core, each on an equal share (at most BATCH_SIZE files).
    workers = max(1, min(WORKERS, len(usable) // MIN_SHARE))
    size = min(BATCH_SIZE, -(-len(usable) // workers))
    batches = [usable[start:start + size] for start in range(0, len(usable), size)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(lambda batch: _ctags_batch(root, batch, deadline - time.monotonic()), batches)
        return [row for rows in results for row in rows]


def _ctags_batch(root: Path, paths: list[str], timeout: float) -> list[SymbolRow]:
    # In a -L list ctags strips blanks around each name and reads a leading `-` as an option:
    # `./` before every name keeps both as part of the name.
    fed = {f"./{path}": path for path in paths}
    command = [
        CTAGS,
        "--options=NONE",  # first: no ~/.ctags.d or ./.ctags.d from the (untrusted) project
        "--quiet",
        "--output-format=json",
        "--fields=+nKlse",
        "--sort=no",
        "-f", "-",
        "-L", "-",
    ]
    if timeout <= 0:
        raise SymbolsError("ctags timed out")
    try:
        result = subprocess.run(
            command, cwd=root, input=b"".join(os.fsencode(name) + b"\n" for name in fed),
            capture_output=True, timeout=timeout, check=False,
        )
    except subprocess.TimeoutExpired as exc:  # run() has killed ctags by now
        raise SymbolsError(f"ctags timed out after {exc.timeout:.0f}s") from exc
    except OSError as exc:
        raise SymbolsError(f"ctags cannot be run: {exc}") from exc
    if result.returncode != 0:
        stderr = result.stderr.decode(errors="replace").strip()[-500:]
        raise SymbolsError(f"ctags exited with status {result.returncode}: {stderr}")
    return list(_parse(result.stdout.decode(errors="surrogateescape"), fed))


def _parse(output: str, fed: dict[str, str]) -> Iterator[SymbolRow]:
    for line in output.split("\n"):  # not splitlines(): a name may hold U+2028
        try:
            tag = json.loads(line)
        except ValueError:
            continue
        if not isinstance(tag, dict) or tag.get("_type") != "tag":
            continue
        path, name, number, end = tag.get("path"), tag.get("name"), tag.get("line"), tag.get("end")
        if path not in fed or not isinstance(name, str) or not name or len(name) > NAME_MAX:
            continue
        if not isinstance(number, int) or number < 1:
            continue
        yield SymbolRow(
            path=fed[path],
            name=name,
            kind=str(tag.get("kind", ""))[:KIND_MAX],
            line=number,
            end_line=end if isinstance(end, int) and end >= number else None,
            container=str(tag.get("scope", ""))[:CONTAINER_MAX],
            language=str(tag.get("language", ""))[:LANGUAGE_MAX],
        )

"""Which test runner a project uses, the command that runs it, and what its results were.

Detection looks at the project root, in this order; the first that matches wins (a request may
name another with `runner`):

1. pytest  — pytest.ini; pyproject.toml with [tool.pytest…]; setup.cfg with [tool:pytest]; tox.ini
             with [pytest]; conftest.py; or test_*.py / *_test.py files (up to 3 folders deep)
2. npm     — package.json whose scripts.test is set (and is not npm init's "no test specified")
3. go      — go.mod                      → `go test -v ./...`
4. cargo   — Cargo.toml                  → `cargo test`
5. make    — Makefile / makefile / GNUmakefile with a `test:` target → `make test`

Results come from JUnit XML where the runner can write it, else from the runner's own output:
- pytest writes JUnit to a file outside the project (PYTEST_ADDOPTS adds --junitxml, so the command
  shown is the plain one);
- npm: node's built-in runner (`node --test`) writes JUnit through NODE_OPTIONS reporters; other
  test frameworks behind `npm test` report no counts;
- go: `go test -v` lines (`--- FAIL: TestX`), cargo: libtest lines (`test x ... FAILED`);
- make (and any runner): if the test writes JUnit XML to $KF_JUNIT_XML, that file is read.
"""

import configparser
import json
import os
import re
import shlex
import shutil
import tomllib
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from api.errors import InvalidRequest

RUNNERS = ("pytest", "npm", "go", "cargo", "make")
JUNIT_MAX_BYTES = 32 * 1024 * 1024
FAILURES_MAX = 100
MESSAGE_MAX_CHARS = 2000
SCAN_DEPTH = 3
SKIP_DIRS = {".git", "node_modules", ".venv", "venv", "__pycache__", "target", "build", "dist", ".tox", ".mypy_cache"}
NPM_DEFAULT_TEST = 'echo "Error: no test specified" && exit 1'


@dataclass
class Detected:
    runner: str
    reason: str  # which file made us pick it, shown to the user


@dataclass
class RunnerCommand:
    runner: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)  # added to the job's environment

    @property
    def command(self) -> str:
        return shlex.join(self.argv)


@dataclass
class Failure:
    name: str
    message: str
    path: str | None
    line: int | None


@dataclass
class RunnerResults:
    source: str  # "junit" or "output"
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    errors: int = 0
    failures: list[Failure] = field(default_factory=list)
    failures_truncated: bool = False

    def add_failure(self, failure: Failure) -> None:
        if len(self.failures) < FAILURES_MAX:
            self.failures.append(failure)
        else:
            self.failures_truncated = True


# --- detection -----------------------------------------------------------------------------------

def _read_text(path: Path, limit: int = 1024 * 1024) -> str | None:
    try:
        if not path.is_file():
            return None
        with path.open("rb") as fh:
            return fh.read(limit).decode("utf-8", errors="replace")
    except OSError:
        return None


def _ini_has_section(path: Path, section: str) -> bool:
    text = _read_text(path)
    if text is None:
        return False
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    try:
        parser.read_string(text)
    except configparser.Error:
        return f"[{section}]" in text
    return parser.has_section(section)


def _has_test_files(root: Path) -> str | None:
    def walk(folder: Path, depth: int) -> str | None:
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            return None
        for entry in entries:
            if entry.is_file(follow_symlinks=False) and entry.name.endswith(".py") and (
                    entry.name.startswith("test_") or entry.name.endswith("_test.py")):
                return str(Path(entry.path).relative_to(root))
        if depth < SCAN_DEPTH:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False) and entry.name not in SKIP_DIRS and not entry.name.startswith("."):
                    found = walk(Path(entry.path), depth + 1)
                    if found:
                        return found
        return None

    return walk(root, 0)


def _pytest_reason(root: Path) -> str | None:
    if (root / "pytest.ini").is_file():
        return "pytest.ini"
    text = _read_text(root / "pyproject.toml")
    if text is not None:
        try:
            if "pytest" in tomllib.loads(text).get("tool", {}):
                return "pyproject.toml [tool.pytest]"
        except tomllib.TOMLDecodeError:
            pass
    if _ini_has_section(root / "setup.cfg", "tool:pytest"):
        return "setup.cfg [tool:pytest]"
    if _ini_has_section(root / "tox.ini", "pytest"):
        return "tox.ini [pytest]"
    if (root / "conftest.py").is_file():
        return "conftest.py"
    found = _has_test_files(root)
    return f"test file {found}" if found else None


def _npm_reason(root: Path) -> str | None:
    text = _read_text(root / "package.json")
    if text is None:
        return None
    try:
        scripts = json.loads(text).get("scripts") or {}
    except (ValueError, AttributeError):
        return None
    test = scripts.get("test") if isinstance(scripts, dict) else None
    if isinstance(test, str) and test.strip() and test.strip() != NPM_DEFAULT_TEST:
        return "package.json scripts.test"
    return None


MAKE_TEST_TARGET = re.compile(r"^test\s*::?(?!=)", re.MULTILINE)


def _make_reason(root: Path) -> str | None:
    for name in ("GNUmakefile", "makefile", "Makefile"):
        text = _read_text(root / name)
        if text is not None and MAKE_TEST_TARGET.search(text):
            return f"{name} test target"
    return None


def _simple(name: str) -> Callable[[Path], str | None]:
    return lambda root: name if (root / name).is_file() else None


DETECTORS = {
    "pytest": _pytest_reason,
    "npm": _npm_reason,
    "go": _simple("go.mod"),
    "cargo": _simple("Cargo.toml"),
    "make": _make_reason,
}

TOOLS = {"npm": "npm", "go": "go", "cargo": "cargo", "make": "make"}


def detect_runner(root: Path) -> Detected | None:
    for runner in RUNNERS:
        reason = DETECTORS[runner](root)
        if reason:
            return Detected(runner=runner, reason=reason)
    return None


def _python_for(root: Path) -> str:
    """The project's own virtualenv if it has one, else python3 from PATH."""
    for venv in (".venv", "venv"):
        candidate = root / venv / "bin" / "python"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(Path(venv) / "bin" / "python")
    return "python3"


def runner_command(*, root: Path, runner: str | None, args: list[str], junit_path: str, path: str) -> tuple[RunnerCommand, Detected]:
    """The command for the project's runner (detected, or the one asked for). `path` is the PATH the
    job will run with: a runner whose tool is not installed is a clear error now, not exit 127 later."""
    if runner is None:
        detected = detect_runner(root)
        if detected is None:
            raise InvalidRequest(
                "No test runner found in this project: looked for pytest (pytest.ini, pyproject.toml, setup.cfg, "
                "tox.ini, conftest.py, test_*.py), npm (package.json scripts.test), go (go.mod), cargo (Cargo.toml) "
                "and make (a Makefile with a test target). Name one with `runner`.",
                details={"runner": ["no runner detected"]})
    else:
        if runner not in RUNNERS:
            raise InvalidRequest(f"Unknown runner {runner!r}.", details={"runner": [f"one of {', '.join(RUNNERS)}"]})
        detected = Detected(runner=runner, reason="asked for")
    tool = TOOLS.get(detected.runner)
    if tool and shutil.which(tool, path=path) is None:
        raise InvalidRequest(f"This project uses {detected.runner} ({detected.reason}), but `{tool}` is not "
                             "installed on this server.", details={"runner": [f"{tool} is not installed"]})
    env = {"KF_JUNIT_XML": junit_path}
    if detected.runner == "pytest":
        argv = [_python_for(root), "-m", "pytest", *args]
        # Not in argv, so the command shown and kept is the plain one; xunit1 has file and line.
        env["PYTEST_ADDOPTS"] = shlex.join([f"--junitxml={junit_path}", "-o", "junit_family=xunit1"])
    elif detected.runner == "npm":
        argv = ["npm", "test", *(["--", *args] if args else [])]
        # Node's own test runner (node --test) reads reporters from NODE_OPTIONS: people keep the
        # usual spec output, we get JUnit. Other frameworks ignore these flags.
        env["NODE_OPTIONS"] = shlex.join(["--test-reporter=spec", "--test-reporter-destination=stdout",
                                          "--test-reporter=junit", f"--test-reporter-destination={junit_path}"])
    elif detected.runner == "go":
        argv = ["go", "test", "-v", *(args or ["./..."])]
    elif detected.runner == "cargo":
        argv = ["cargo", "test", *args]
    else:
        argv = ["make", "test", *args]
    return RunnerCommand(runner=detected.runner, argv=argv, env=env), detected


# --- results -------------------------------------------------------------------------------------

LOCATION = re.compile(r"(?P<path>(?:[A-Za-z]:)?[\w.@+\-/\\]+\.[A-Za-z0-9]+):(?P<line>\d+)")


def _project_location(text: str, root: Path, *, innermost: bool) -> tuple[str | None, int | None]:
    """The first (or last) `path:line` in a traceback that names a file of the project."""
    real_root = str(root.resolve())
    found: list[tuple[str, int]] = []
    for m in LOCATION.finditer(text):
        path = m.group("path")
        path = path.removeprefix("file://")
        if os.path.isabs(path):
            if not path.startswith(real_root + "/"):
                continue
            path = path[len(real_root) + 1:]
        if "node_modules/" in path or path.startswith(("node:", "../")):
            continue
        if (root / path).is_file():
            found.append((path, int(m.group("line"))))
    if not found:
        return None, None
    return found[-1] if innermost else found[0]


def _short(text: str) -> str:
    text = text.strip()
    return text if len(text) <= MESSAGE_MAX_CHARS else text[: MESSAGE_MAX_CHARS - 1] + "…"


def parse_junit(path: Path, *, root: Path, runner: str) -> RunnerResults | None:
    """Counts and failures from a JUnit XML file; None if there is none or it is not JUnit."""
    try:
        if not path.is_file() or path.stat().st_size > JUNIT_MAX_BYTES:
            return None
        # ElementTree never fetches external entities, and expat ≥ 2.4 refuses entity expansion bombs.
        tree = ET.parse(path)
    except (OSError, ET.ParseError):
        return None
    results = RunnerResults(source="junit")
    for case in tree.getroot().iter("testcase"):
        name = case.get("name", "")
        classname = case.get("classname", "")
        full = f"{classname}::{name}" if classname and runner == "pytest" else (
            f"{classname}.{name}" if classname and classname not in ("test", name) else name)
        problem = None
        for tag in ("failure", "error"):
            problem = case.find(tag)
            if problem is not None:
                break
        if problem is None:
            if case.find("skipped") is not None:
                results.skipped += 1
            else:
                results.passed += 1
            continue
        if problem.tag == "failure":
            results.failed += 1
        else:
            results.errors += 1
        body = problem.text or ""
        message = problem.get("message") or (body.strip().splitlines() or [""])[0]
        path_, line = _project_location(body + "\n" + (problem.get("message") or ""), root,
                                        innermost=runner == "pytest")
        if path_ is None and case.get("file"):
            path_ = case.get("file")
            raw_line = case.get("line")
            if raw_line and raw_line.isdigit():
                # pytest writes the 0-based line of the test function; people count from 1.
                line = int(raw_line) + (1 if runner == "pytest" else 0)
        results.add_failure(Failure(name=full, message=_short(message), path=path_, line=line))
    return results


GO_RESULT = re.compile(r"^\s*--- (PASS|FAIL|SKIP): (\S+)")
CARGO_RESULT = re.compile(r"^test (\S+) \.\.\. (ok|FAILED|ignored)\b")
CARGO_PANIC = re.compile(r"panicked at (?P<path>[^:\n]+):(?P<line>\d+):\d+:\n")


def parse_output(text: str, *, root: Path, runner: str) -> RunnerResults | None:
    """Counts and failures from a runner's own output, for runners without JUnit (go, cargo)."""
    parse = {"go": _parse_go, "cargo": _parse_cargo}.get(runner)
    return parse(text, root) if parse else None


def _parse_go(text: str, root: Path) -> RunnerResults | None:
    results = RunnerResults(source="output")
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = GO_RESULT.match(line)
        if not m:
            continue
        outcome, name = m.groups()
        if outcome == "PASS":
            results.passed += 1
        elif outcome == "SKIP":
            results.skipped += 1
        else:
            results.failed += 1
            # go prints a failing test's log lines indented just before its --- FAIL line.
            before = []
            for prev in reversed(lines[max(0, i - 20):i]):
                if not prev.startswith("    ") or GO_RESULT.match(prev):
                    break
                before.insert(0, prev.strip())
            detail = "\n".join(before)
            path, lineno = _project_location(detail, root, innermost=False)
            if path is None:
                m2 = re.search(r"(\w+\.go):(\d+)", detail)
                if m2:
                    path, lineno = m2.group(1), int(m2.group(2))
            results.add_failure(Failure(name=name, message=_short(detail or "failed"), path=path, line=lineno))
    return results if results.passed or results.failed or results.skipped else None


def _parse_cargo(text: str, root: Path) -> RunnerResults | None:
    results = RunnerResults(source="output")
    failed_names = []
    for line in text.splitlines():
        m = CARGO_RESULT.match(line)
        if not m:
            continue
        name, outcome = m.groups()
        if outcome == "ok":
            results.passed += 1
        elif outcome == "ignored":
            results.skipped += 1
        else:
            results.failed += 1
            failed_names.append(name)
    for name in failed_names:
        section = re.search(rf"^---- {re.escape(name)} stdout ----\n(.*?)(?=^---- |^failures:|\Z)", text,
                            re.MULTILINE | re.DOTALL)
        detail = section.group(1) if section else ""
        panic = CARGO_PANIC.search(detail)
        if panic:
            # The panic message runs to the "note: run with RUST_BACKTRACE" hint or a blank line.
            message = []
            for line in detail[panic.end():].splitlines():
                if not line.strip() or line.startswith("note: "):
                    break
                message.append(line)
            results.add_failure(Failure(name=name, message=_short("\n".join(message) or "panicked"),
                                        path=panic.group("path"), line=int(panic.group("line"))))
        else:
            results.add_failure(Failure(name=name, message=_short(detail or "failed"), path=None, line=None))
    return results if results.passed or results.failed or results.skipped else None

"""Findings in a project's files: hard-coded secrets, merge conflict markers and TODO comments (in
process, one file's text at a time), and ruff over the Python files."""

import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import AnyStr

from accounts import apikeys

MESSAGE_MAX = 500  # projects.Finding.message
TODO_MESSAGE_MAX = 200
RUFF_RULES = "E9,F"  # syntax errors and pyflakes: few false positives, no style opinions
RUFF_BATCH_SIZE = 500
PYTHON_SUFFIXES = (".py", ".pyi")
# Lines longer than this are minified or generated: only the exact key formats are looked for there.
LONG_LINE = 2000


class ScannerError(Exception):
    """ruff is missing, failed, or took longer than the timeout."""


@dataclass(frozen=True)
class FindingRow:
    rule: str
    severity: str  # "info" | "warning" | "error"
    path: str
    line: int
    message: str
    fingerprint: str


def fingerprint(rule: str, path: str, line_text: str, occurrence: int) -> str:
    """Identity of a finding that survives lines moving: the flagged line's text with blanks normalised,
    and how many findings of the same rule on the same text precede it in the file."""
    return _fingerprint(rule, path, _line_digest(line_text), occurrence)


def _line_digest(line_text: str) -> str:
    # Hashed once per line, not per finding: a minified line may be megabytes long with many findings.
    return hashlib.sha256(" ".join(line_text.split()).encode("utf-8", "surrogatepass")).hexdigest()


def _fingerprint(rule: str, path: str, line_digest: str, occurrence: int) -> str:
    data = "\0".join((rule, path, line_digest, str(occurrence)))
    return hashlib.sha256(data.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class _Hit:
    rule: str
    severity: str
    line: int
    message: str


def _rows(path: str, lines: list[str], hits: Iterable[_Hit]) -> list[FindingRow]:
    """Fingerprints for `hits`, which come in file order (the occurrence index depends on it)."""
    seen: Counter[tuple[str, str]] = Counter()
    digests: dict[int, str] = {}
    rows = []
    for hit in hits:
        if hit.line not in digests:
            digests[hit.line] = _line_digest(lines[hit.line - 1] if hit.line <= len(lines) else "")
        key = (hit.rule, digests[hit.line])
        rows.append(FindingRow(hit.rule, hit.severity, path, hit.line, hit.message[:MESSAGE_MAX],
                               _fingerprint(hit.rule, path, key[1], seen[key])))
        seen[key] += 1
    return rows


def _split_lines(text: str) -> list[str]:
    # "\n" only, as grep and the search index count lines (str.splitlines also splits on \f, \x1c, …).
    lines = text.split("\n")
    return [line.removesuffix("\r") for line in lines] if "\r" in text else lines


def _capped(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= TODO_MESSAGE_MAX else text[:TODO_MESSAGE_MAX - 1] + "…"


# --- secrets ---------------------------------------------------------------------------------------
# Whole-text searches. A pattern that starts with a literal is looked for at C speed, so each checks
# the word boundary before the token with a lookbehind after that literal: a leading `\b` would make
# the search ~30× slower.

def _is_kf_key(token: str) -> bool:
    return apikeys.parse(token) is not None


@dataclass(frozen=True)
class _SecretKind:
    kind: str
    label: str
    pattern: re.Pattern[str]
    check: Callable[[str], bool] | None = None


_SECRET_KINDS = [
    # With the start of the key's body (perhaps after `Proc-Type: …` headers, perhaps in a string with
    # `\n` escapes): a header alone is a constant of PEM-parsing code, not a key.
    _SecretKind("private-key", "private key", re.compile(
        r"-----BEGIN (?:[A-Z0-9]+ ){0,3}PRIVATE KEY(?: BLOCK)?-----(?:\\[rn]|\s|[A-Za-z-]++: [^\n\\]*+(?:\\n|\n))*+"
        r"[A-Za-z0-9+/=]{40}")),
    _SecretKind("aws-access-key-id", "AWS access key ID", re.compile(r"A[KS]IA(?<!\wA[KS]IA)[0-9A-Z]{16}\b")),
    _SecretKind("github-token", "GitHub token", re.compile(
        r"g(?:h[pousr]_(?<!\wgh[pousr]_)[A-Za-z0-9]{36}|ithub_pat_(?<!\wgithub_pat_)[A-Za-z0-9_]{60,255})\b")),
    _SecretKind("gitlab-token", "GitLab token", re.compile(r"glpat-(?<!\wglpat-)[A-Za-z0-9_-]{20,}")),
    _SecretKind("slack-token", "Slack token", re.compile(r"xox[baprs]-(?<!\wxox[baprs]-)\d++-[A-Za-z0-9-]{8,}")),
    _SecretKind("stripe-key", "Stripe live key", re.compile(r"k_live_(?<=[rs]k_live_)(?<!\w[rs]k_live_)[A-Za-z0-9]{20,}")),
    _SecretKind("anthropic-key", "Anthropic API key", re.compile(r"sk-ant-(?<!\wsk-ant-)[A-Za-z0-9_-]{32,}")),
    _SecretKind("openai-key", "OpenAI API key", re.compile(
        r"sk-(?<!\wsk-)(?:(?:proj|svcacct|admin)-[A-Za-z0-9_-]{40,}|[A-Za-z0-9]{48})(?![A-Za-z0-9_-])")),
    _SecretKind("google-api-key", "Google API key", re.compile(r"AIza(?<!\wAIza)[0-9A-Za-z_-]{35}(?![0-9A-Za-z_-])")),
    # Possessive: a long run of `eyJeyJ…` must not be rescanned from each `eyJ` in it.
    _SecretKind("jwt", "JSON Web Token", re.compile(
        r"eyJ(?<![\w-]eyJ)[A-Za-z0-9_-]{10,}+\.eyJ[A-Za-z0-9_-]{10,}+\.[A-Za-z0-9_-]{20,}+")),
    _SecretKind("kf-api-key", "kf API key", re.compile(r"kf_(?<!\wkf_)[0-9A-Za-z]{58}\b"), _is_kf_key),
]

# Lines that may assign a secret contain one of these words (looked for in the lowercased bytes).
_SECRET_WORDS = (b"pass", b"pwd", b"secret", b"token", b"key", b"cred")
_AWS_SECRET = re.compile(
    r"(?i)(?<![a-z0-9])aws_?secret_?access_?key[\"']?\s*(?::=|=>|=|:)\s*[\"']?[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])")
# `db_password = "…"`, `"apiKey": "…"`, `token: str = "…"`, `password="…"` (a keyword argument).
_ASSIGNMENT = re.compile(
    r"(?<![\w.:-])(?P<name>[A-Za-z_][\w.-]{0,80})[\"']?"
    r"\s*(?::\s*[A-Za-z_][\w\[\]., |]{0,40}?\s*(?==))?(?::=|=>|=|:)\s*"
    r"(?P<quote>[\"'`])(?P<value>[^\"'`\s]{8,200})(?P=quote)"
)
# In configuration files values need no quotes: `API_TOKEN=…`, `password: …`.
_BARE_ASSIGNMENT = re.compile(
    r"^\s*(?:export\s+)?(?P<name>[A-Za-z_][\w.-]{0,80})\s*(?:=|:)\s*(?P<value>[^\"'`\s#;]{8,200})\s*$"
)
_CONFIG_FILE = re.compile(r"(?:^|/)(?:\.env[^/]*|[^/]*\.(?:env|ini|cfg|conf|properties|ya?ml))$", re.IGNORECASE)
_SECRET_NAME_ENDINGS = (
    "password", "passwd", "pwd", "passphrase", "secret", "secretkey", "token", "apikey", "accesskey",
    "authkey", "privatekey", "signingkey", "credential", "credentials",
)
_PLACEHOLDER_WORDS = (
    "example", "changeme", "change_me", "change-me", "placeholder", "dummy", "sample", "your", "redacted",
    "xxx", "fake", "test", "todo", "password", "secret",
)
_PLACEHOLDER_MARKS = ("${", "{{", "}}", "%(", "%s", "://", "os.environ", "getenv", "process.env")


def _line_numbers(text: AnyStr, positions: list[int]) -> list[int]:
    """The 1-based line of each position, counting "\\n" only (as grep and the search index do)."""
    newline = "\n" if isinstance(text, str) else b"\n"
    numbers, line, last = {}, 1, 0
    for position in sorted(set(positions)):
        line += text.count(newline, last, position)  # type: ignore[arg-type]
        numbers[position], last = line, position
    return [numbers[position] for position in positions]


def _token_secrets(text: str) -> list[tuple[int, _SecretKind, str]]:
    """(position, kind, token) of each key in a known format."""
    found = []
    for kind in _SECRET_KINDS:
        for match in kind.pattern.finditer(text):
            token = match.group()
            if "example" not in token.lower() and (kind.check is None or kind.check(token)):
                found.append((match.start(), kind, token))
    return found


def _word_lines(text: AnyStr, words: Iterable[AnyStr]) -> set[int]:
    """The lines where any of `words` occurs (str.find is much faster than a regex alternation)."""
    positions = []
    for word in words:
        position = text.find(word)
        while position != -1:
            positions.append(position)
            position = text.find(word, position + len(word))
    return set(_line_numbers(text, positions))


def _secret_word_lines(text: str) -> set[int]:
    folded = text.encode("utf-8", "surrogatepass").lower()  # ASCII-only lowering, ~8× faster than str.lower
    return _word_lines(folded, _SECRET_WORDS)


def _is_secret_name(name: str) -> bool:
    return re.sub(r"[^a-z0-9]", "", name.lower()).endswith(_SECRET_NAME_ENDINGS)


def _entropy(value: str) -> float:
    counts = Counter(value)
    return -sum(n / len(value) * math.log2(n / len(value)) for n in counts.values())


def _is_secret_value(value: str) -> bool:
    lowered = value.lower()
    if value[0] in "<$%{[(/~." or value.endswith(">"):
        return False
    if any(word in lowered for word in _PLACEHOLDER_WORDS) or any(mark in value for mark in _PLACEHOLDER_MARKS):
        return False
    has_letter = any(c.isalpha() for c in value)
    has_digit = any(c.isdigit() for c in value)
    return has_letter and has_digit and _entropy(value) >= 3.0


def _assignment_hits(path: str, number: int, line: str, tokens: list[str]) -> list[_Hit]:
    """An AWS secret key, or a literal that looks random assigned to a name that says secret; `tokens` are
    the keys in a known format already found on the line."""
    if len(line) > LONG_LINE:
        return []
    hits, known = [], [*tokens]
    for match in _AWS_SECRET.finditer(line):
        if "example" not in match.group().lower():
            known.append(match.group())
            hits.append(_Hit("secret-aws-secret-access-key", "error", number, "Hard-coded AWS secret access key"))
    matches = list(_ASSIGNMENT.finditer(line))
    if _CONFIG_FILE.search(path) and (bare := _BARE_ASSIGNMENT.match(line)):
        matches.append(bare)
    for match in matches:
        name, value = match["name"], match["value"]
        if any(value in token or token in value for token in known):
            continue  # already reported as its exact kind
        if _is_secret_name(name) and _is_secret_value(value):
            hits.append(_Hit("secret-assignment", "warning", number,
                             f"Possible hard-coded secret assigned to `{name[-60:]}`"))
    return hits


# --- merge conflicts and TODO comments ---------------------------------------------------------------

_CONFLICT_MARKER = re.compile(r"^(?:<{7}(?: |\r?$)|={7}[ \t]*\r?$|>{7}(?: |\r?$))", re.MULTILINE)


def _conflict_hits(text: str) -> list[_Hit]:
    """One hit per `<<<<<<<` … `=======` … `>>>>>>>` block; a lone `=======` is a reST or Markdown
    heading underline, not a conflict."""
    if "<<<<<<<" not in text:
        return []
    markers = list(_CONFLICT_MARKER.finditer(text))
    numbers = _line_numbers(text, [marker.start() for marker in markers])
    hits = []
    start, separated = None, False
    for marker, number in zip(markers, numbers, strict=True):
        kind = text[marker.start()]
        if kind == "<":
            start, separated = number, False
        elif kind == "=" and start is not None:
            separated = True
        elif kind == ">" and start is not None:
            if separated:
                hits.append(_Hit("merge-conflict", "error", start, f"Unresolved merge conflict (lines {start}–{number})"))
            start = None
    return hits


_TODO_WORDS = ("TODO", "FIXME", "XXX", "HACK")
# The marker right after a comment leader (`# TODO`, `// FIXME:`, `/* XXX`, ` * HACK`, `<!-- TODO`,
# `-- TODO`, `"""TODO`), or at the start of a line when followed by `:` or `(` (plain text files).
_TODO = re.compile(
    r"(?:(?:#|//|/\*|<!--|--|;|%|\{#|\"\"\"|'''|^\s*\*)[\s*!/#;-]*|^\s*(?:[-*+]\s+)?(?=\w+\s*[:(]))"
    r"(?P<text>(?:TODO|FIXME|XXX|HACK)(?![\w-]).*)"
)
_COMMENT_CLOSERS = ("*/", "-->", "#}", '"""', "'''")


def _todo_hit(number: int, line: str) -> _Hit | None:
    if len(line) > LONG_LINE or not (match := _TODO.search(line)):
        return None
    text = match["text"].rstrip()
    for closer in _COMMENT_CLOSERS:
        text = text.removesuffix(closer).rstrip()
    return _Hit("todo", "info", number, _capped(text))


def scan_text(path: str, text: str) -> list[FindingRow]:
    """Secrets, merge conflicts and TODO comments in one file's text, in line order."""
    tokens = _token_secrets(text)
    token_lines = _line_numbers(text, [position for position, _, _ in tokens])
    word_lines = _secret_word_lines(text)
    todo_lines = _word_lines(text, _TODO_WORDS)
    conflicts = _conflict_hits(text)
    if not (tokens or word_lines or todo_lines or conflicts):
        return []

    lines = _split_lines(text)
    hits = [_Hit(f"secret-{kind.kind}", "error", number, f"Hard-coded {kind.label}")
            for number, (_, kind, _) in zip(token_lines, tokens, strict=True)]
    tokens_by_line: dict[int, list[str]] = {}
    for number, (_, _, token) in zip(token_lines, tokens, strict=True):
        tokens_by_line.setdefault(number, []).append(token)
    for number in sorted(word_lines):
        hits.extend(_assignment_hits(path, number, lines[number - 1], tokens_by_line.get(number, [])))
    hits.extend(hit for number in sorted(todo_lines) if (hit := _todo_hit(number, lines[number - 1])))
    hits.extend(conflicts)
    # Stable, so same-rule hits on one line keep their left-to-right order (their occurrence index).
    hits.sort(key=lambda hit: hit.line)
    return _rows(path, lines, hits)


# --- ruff --------------------------------------------------------------------------------------------

def ruff_executable() -> str | None:
    beside = Path(sys.executable).parent / "ruff"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("ruff")


def _ruff_severity(code: str) -> str:
    return "error" if code == "invalid-syntax" or code.startswith("E9") or code in {"F821", "F822", "F823"} else "warning"


def ruff_findings(root: Path, paths: list[str], *, timeout: float = 120) -> list[FindingRow]:
    """ruff's findings in the Python files among `paths` (relative to `root`); other files are ignored.
    A file that is missing or cannot be read has none. Only the first syntax error of a file is kept:
    the ones after it are mostly the parser losing its way. `timeout` bounds the whole call."""
    python = list(dict.fromkeys(path for path in paths if path.endswith(PYTHON_SUFFIXES)))
    if not python:
        return []
    ruff = ruff_executable()
    if ruff is None:
        raise ScannerError("ruff is not installed (pip install ruff)")
    deadline = time.monotonic() + timeout
    found: dict[str, list[tuple[int, int, str, str]]] = {}
    for start in range(0, len(python), RUFF_BATCH_SIZE):
        batch = python[start:start + RUFF_BATCH_SIZE]
        for path, line, column, code, message in _ruff_batch(ruff, root, batch, deadline - time.monotonic()):
            found.setdefault(path, []).append((line, column, code, message))
    rows = []
    for path in python:
        if path not in found:
            continue
        try:
            lines = _split_lines((root / path).read_text(encoding="utf-8", errors="replace"))
        except OSError:
            lines = []
        hits, syntax_seen = [], False
        for line, _column, code, message in sorted(found[path]):
            if code == "invalid-syntax":
                if syntax_seen:
                    continue
                syntax_seen = True
            hits.append(_Hit(f"ruff-{code}", _ruff_severity(code), line, message))
        rows.extend(_rows(path, lines, hits))
    return rows


def _ruff_batch(ruff: str, root: Path, paths: list[str], timeout: float) -> list[tuple[str, int, int, str, str]]:
    if timeout <= 0:
        raise ScannerError("ruff timed out")
    command = [ruff, "check", "--output-format", "json", "--no-cache", "--isolated", "--select", RUFF_RULES,
               "--", *paths]
    try:
        result = subprocess.run(command, cwd=root, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:  # run() has killed ruff by now
        raise ScannerError(f"ruff timed out after {exc.timeout:.0f}s") from exc
    except OSError as exc:
        raise ScannerError(f"ruff cannot be run: {exc}") from exc
    if result.returncode not in (0, 1):  # 1 only means that there are findings
        stderr = result.stderr.decode(errors="replace").strip()[-500:]
        raise ScannerError(f"ruff exited with status {result.returncode}: {stderr}")
    try:
        items = json.loads(result.stdout.decode(errors="surrogateescape") or "[]")
    except ValueError as exc:
        raise ScannerError("ruff's output is not JSON") from exc

    # ruff reports absolute paths with symlinks resolved.
    base, real_base = os.path.abspath(root), os.path.realpath(root)
    relative: dict[str, str] = {}
    for path in paths:
        for absolute in (os.path.join(base, path), os.path.join(real_base, path)):
            relative[os.path.normpath(absolute)] = path
        relative.setdefault(os.path.realpath(os.path.join(base, path)), path)
    out = []
    for item in items if isinstance(items, list) else []:
        try:
            path = relative.get(os.path.normpath(item["filename"]))
            code, message = item["code"], str(item["message"])
            line, column = int(item["location"]["row"]), int(item["location"]["column"])
        except (KeyError, TypeError, ValueError):
            continue
        if path is None or not isinstance(code, str) or code == "E902" or line < 1:  # E902: cannot be read
            continue
        out.append((path, line, column, code, message))
    return out

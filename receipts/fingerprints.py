"""Findings' fingerprints: what ties a receipt's finding to the code it was about, so `reground` can
later say whether that code is still there, moved, or gone.

When a receipt is written, each finding gets, from the project's file as it is at that moment:
  line_sha256  SHA-256 of the flagged line with its blanks normalised (runs of whitespace → one space,
               trimmed), so re-indenting does not change it;
  fingerprint  SHA-256 of "kf.finding.v1", the rule, that normalised line, and the normalised nearest
               non-blank line above and below it (NUL-separated): a little context, which tells
               apart the many identical lines code has (`# TODO`, `pass`, `}`), while blank lines
               added or removed around it do not matter.
Both are null when the line could not be read (file gone, binary, beyond its end).

`reground` checks each finding against the files as they are now, strongest evidence first:
  present   its line still has the same fingerprint, or, with no exact match in its file, the same
            text;
  moved     an exact fingerprint match at another line of its file (the nearest) or in another file,
            else the same text elsewhere in its file or in another file;
  resolved  none of these: the flagged code is gone (or it had no fingerprint to look for).
"Another file" is any file a rescan would index (the project's files, .gitignore respected).
"""

import hashlib
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings

from api.errors import ApiError
from projects.paths import read_file
from projects.walk import project_files

FINGERPRINT_VERSION = "kf.finding.v1"


def split_lines(content: str) -> list[str]:
    # "\n" only, as the scanners and the search index count lines.
    lines = content.split("\n")
    return [line.removesuffix("\r") for line in lines] if "\r" in content else lines


def normalized(line: str) -> str:
    return " ".join(line.split())


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()


class FileLines:
    """One file's lines with what matching needs, computed once per file."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = [normalized(line) for line in lines]
        self._digests: list[str] | None = None

    @property
    def digests(self) -> list[str]:
        if self._digests is None:
            self._digests = [_digest(line) for line in self.lines]
        return self._digests

    def _neighbour(self, index: int, step: int) -> str:
        index += step
        while 0 <= index < len(self.lines):
            if self.lines[index]:
                return self.lines[index]
            index += step
        return ""

    def fingerprint(self, rule: str, line: int) -> str | None:
        if not 1 <= line <= len(self.lines):
            return None
        index = line - 1
        parts = (FINGERPRINT_VERSION, rule, self.lines[index], self._neighbour(index, -1), self._neighbour(index, 1))
        return _digest("\0".join(parts))

    def line_sha256(self, line: int) -> str | None:
        return _digest(self.lines[line - 1]) if 1 <= line <= len(self.lines) else None

    def lines_with(self, line_sha256: str) -> list[int]:
        return [i + 1 for i, digest in enumerate(self.digests) if digest == line_sha256]


def _decode(data: bytes) -> str | None:
    if b"\0" in data[:8192]:
        return None  # binary
    return data.decode("utf-8", "replace")


def file_lines(root: str, path: str, *, max_bytes: int | None = None) -> FileLines | None:
    """The file's lines, or None when it is missing, outside the root, binary or too large."""
    try:
        opened = read_file(root, path, max_bytes=max_bytes or settings.KF_FILE_MAX_BYTES)
    except ApiError:
        return None
    content = _decode(opened.data)
    return FileLines(split_lines(content)) if content is not None else None


def findings_fingerprinted(root: str | None, findings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`findings` with `fingerprint` and `line_sha256` added, from the files under `root` now."""
    cache: dict[str, FileLines | None] = {}
    out = []
    for finding in findings:
        path = finding["path"]
        if root is not None and path not in cache:
            cache[path] = file_lines(root, path)
        lines = cache.get(path)
        out.append({**finding,
                    "fingerprint": lines.fingerprint(finding["rule"], finding["line"]) if lines else None,
                    "line_sha256": lines.line_sha256(finding["line"]) if lines else None})
    return out


@dataclass
class Place:
    status: str  # present | moved | resolved
    path: str | None = None
    line: int | None = None


def _nearest(candidates: Iterable[int], line: int) -> int | None:
    return min(candidates, key=lambda n: (abs(n - line), n), default=None)


def _in_file(finding: dict[str, Any], lines: FileLines, *, same_file: bool) -> tuple[int | None, int | None]:
    """(line of an exact fingerprint match, line of a same-text match), nearest to the old line."""
    candidates = lines.lines_with(finding["line_sha256"])
    exact = [n for n in candidates if lines.fingerprint(finding["rule"], n) == finding["fingerprint"]]
    line = finding["line"] if same_file else 0
    return _nearest(exact, line), _nearest(candidates, line)


def _locate_in_own_file(finding: dict[str, Any], lines: FileLines | None) -> Place | None:
    if lines is None:
        return None
    exact, same_text = _in_file(finding, lines, same_file=True)
    if exact is not None:
        return Place("present" if exact == finding["line"] else "moved", finding["path"], exact)
    if same_text == finding["line"]:
        return Place("present", finding["path"], same_text)
    return None


def _project_matches(root: str, pending: list[dict[str, Any]]) -> dict[int, tuple[str, int, bool]]:
    """For each pending finding (by position): (path, line, exact) of its best match in other files."""
    wanted = {finding["line_sha256"] for finding in pending}
    found: dict[int, tuple[str, int, bool]] = {}
    try:
        for path, info in project_files(Path(root)):
            _file_matches(root, path, info.st_size, pending, wanted, found)
    except (OSError, subprocess.SubprocessError):
        pass  # the project's folder is gone or git failed: what was found so far is the answer
    return found


def _file_matches(root: str, path: str, size: int, pending: list[dict[str, Any]], wanted: set[str],
                  found: dict[int, tuple[str, int, bool]]) -> None:
    if size > settings.KF_INDEX_MAX_FILE_BYTES:
        return
    lines = file_lines(root, path, max_bytes=settings.KF_INDEX_MAX_FILE_BYTES)
    if lines is None or wanted.isdisjoint(lines.digests):
        return
    for position, finding in enumerate(pending):
        if path == finding["path"] or (position in found and found[position][2]):
            continue
        exact, same_text = _in_file(finding, lines, same_file=False)
        if exact is not None:
            found[position] = (path, exact, True)
        elif same_text is not None and position not in found:
            found[position] = (path, same_text, False)


def _locatable(finding: Any) -> bool:
    return (isinstance(finding, dict) and isinstance(finding.get("fingerprint"), str)
            and isinstance(finding.get("line_sha256"), str) and isinstance(finding.get("path"), str)
            and isinstance(finding.get("line"), int) and isinstance(finding.get("rule"), str))


def findings_reground(root: str, findings: list[dict[str, Any]]) -> list[Place]:
    """Where each finding of a receipt is now (see the module's docstring)."""
    cache: dict[str, FileLines | None] = {}
    places: list[Place | None] = []
    weak: dict[int, Place] = {}
    pending: list[tuple[int, dict[str, Any]]] = []
    for position, finding in enumerate(findings):
        if not _locatable(finding):
            places.append(Place("resolved"))
            continue
        path = finding["path"]
        if path not in cache:
            cache[path] = file_lines(root, path)
        place = _locate_in_own_file(finding, cache[path])
        places.append(place)
        if place is None:
            lines = cache[path]
            _, same_text = _in_file(finding, lines, same_file=True) if lines else (None, None)
            if same_text is not None:
                weak[position] = Place("moved", path, same_text)
            pending.append((position, finding))
    if pending:
        matches = _project_matches(root, [finding for _, finding in pending])
        for index, (position, _) in enumerate(pending):
            match = matches.get(index)
            if match is not None and (match[2] or position not in weak):
                places[position] = Place("moved", match[0], match[1])
            else:
                places[position] = weak.get(position, Place("resolved"))
    return [place or Place("resolved") for place in places]

"""Code search over a project's indexed files (DESIGN decision 9).

The database only narrows the files down, from its trigram index alone (migration 0002): SQLite's
FTS5 trigram table answers single-trigram MATCH queries from the index, and Postgres's GIN index over
pg_trgm's show_trgm() answers array containment (@>) from the index, so neither re-reads the
candidates' contents. Every match is then confirmed here, line by line, with Python's `re` semantics,
so both databases give the same answer. Lines are what grep calls lines: text between "\n"s, a "\r"
before the "\n" included (it is only left out of the preview).

Candidates come in path order (code point order on both databases) and the search stops at
`limit + 1` matches, so a common query reads only its first few files. A query the index cannot
help with (fewer than three characters, a regex without a literal) reads the project's files in path
order, a window at a time, still stopping at `limit + 1`.

Bounds: candidate queries have a LIMIT (pages, at most MAX_CANDIDATES files in all), `limit` caps the
matches returned and a time budget caps the whole search (Postgres: `statement_timeout` set locally in
the search's transaction before each statement; SQLite: a progress handler that interrupts the running
statement; Python: checks between files and every few thousand lines). Whatever bound is hit, the
result so far is returned with truncated=True.
"""

import re
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import OperationalError, connection, transaction

from api.errors import InvalidRequest
from projects.models import Project

try:  # Python ≥ 3.11
    from re import _parser as sre_parse  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover
    import sre_parse  # type: ignore[no-redef]

MAX_QUERY_CHARS = 1000
MAX_LIMIT = 1000
PREVIEW_CHARS = 500
DEFAULT_TIMEOUT_MS = 3000
MAX_CANDIDATES = 50_000  # files confirmed per search, whatever the index proposes
CANDIDATE_PAGE = 500  # rows per candidate query
FIRST_WINDOW = 32  # files per path-order window when the index cannot help, doubling up to MAX_WINDOW
MAX_WINDOW = 1024

# ASCII letters that Python's re.IGNORECASE also matches with non-ASCII characters (İ ı K ſ): a
# case-insensitive prefilter cannot use them, because the databases fold case differently.
_UNSAFE_FOLD = frozenset("iIkKsS")
_MIN_TRIGRAM = 3


@dataclass
class SearchResult:
    items: list[dict[str, Any]]
    truncated: bool
    took_ms: int


class _Expired(Exception):
    """The time budget ran out in Python code (the database raises its own cancel error)."""


class _Budget:
    def __init__(self, timeout_ms: int) -> None:
        self.deadline = time.monotonic() + timeout_ms / 1000

    def remaining_ms(self) -> int:
        return int((self.deadline - time.monotonic()) * 1000)

    def expired(self) -> bool:
        return time.monotonic() >= self.deadline

    def check(self) -> None:
        if self.expired():
            raise _Expired


# --- the query: literal or regex, and what the database can filter on ---------------------------


@dataclass
class _Query:
    """How to find matching lines in one file, and the prefilter the database can apply.

    Clauses are a conjunction of disjunctions: a line can match only if, for every clause, it contains
    one of the clause's fragments (compared case-insensitively, ASCII only, when `fold`; fragments are
    then lower case). `clauses` are those worth giving the database, `fragments` all of them.
    """

    confirm: Callable[[str, int], int]  # (line, hint) → 0-based column of the first match, or -1
    clauses: list[list[str]]
    fragments: list[list[str]]
    fold: bool
    # When no fragment can lead: a position ≥ pos on the first line (from pos on) that may match, or -1.
    fallback: Callable[[str, int], int]
    fallback_scans: bool = True  # False when the fallback offers every line (no whole-text search)
    literal: str | None = None  # a case-sensitive literal query: found exactly, columns need no confirming

    def finder(self, content: str) -> Callable[[int], int] | None:
        """find(pos) for `_file_matches`, or None when no line of `content` can match.

        Every matching line holds a fragment of each clause: a file lacking one is skipped in C, and
        the rarest single fragment leads from line to line (str.find) so that only its lines are
        confirmed with the regex.
        """
        if self.literal is not None:
            literal = self.literal
            return lambda pos: content.find(literal, pos)
        text = content
        if self.fold:
            text = content.lower()
            if len(text) != len(content):  # some character lowers to two: positions would shift
                return lambda pos: self.fallback(content, pos)
        if not self.fragments:
            return lambda pos: self.fallback(content, pos)
        counts: dict[str, int] = {}
        for clause in self.fragments:
            if len(clause) == 1:
                counts[clause[0]] = text.count(clause[0])
                if not counts[clause[0]]:
                    return None
            elif not any(frag in text for frag in clause):
                return None
        # A character or two, found on most lines, would lead the search line by line in Python: then
        # the regex itself runs through the text, in C.
        leads = [frag for frag in counts if len(frag) >= _MIN_TRIGRAM or not self.fallback_scans]
        if not leads:
            return lambda pos: self.fallback(content, pos)
        anchor = min(leads, key=lambda frag: (counts[frag], -len(frag)))
        return lambda pos: text.find(anchor, pos)


def _query_build(q: str, *, regex: bool, case: bool) -> _Query:
    if not q:
        raise InvalidRequest("Search for something.", details={"q": ["This field may not be empty."]})
    _text_check("q", q)
    if len(q) > MAX_QUERY_CHARS:
        raise InvalidRequest("The query is too long.",
                             details={"q": [f"At most {MAX_QUERY_CHARS} characters."]})
    if not regex:
        if "\n" in q:
            raise InvalidRequest("Search one line at a time.", details={"q": ["Must not contain a newline."]})
        return _literal_query(q, case=case)
    flags = 0 if case else re.IGNORECASE
    try:
        narrow = re.compile(q, flags)
        wide = re.compile(q, flags | re.MULTILINE)
    except (re.error, OverflowError, RecursionError) as exc:
        raise InvalidRequest("The regular expression is invalid.",
                             details={"q": [f"Invalid regular expression: {exc}"]}) from exc
    try:
        tree = sre_parse.parse(q, flags)
        fold = not case or bool(tree.state.flags & re.IGNORECASE) or _scoped_ignorecase(tree)
        fragments = _sequence_info(tree, fold)[1]
        whole_text_safe = _whole_text_safe(tree)
    except RecursionError:  # a pathologically nested pattern: no prefilter, line by line
        fold, fragments, whole_text_safe = True, [], False
    if fold:
        fragments = [[frag.lower() for frag in clause] for clause in fragments]
    fragments = _clauses_unique(fragments)[:16]

    def confirm(line: str, hint: int) -> int:
        match = narrow.search(line)
        return match.start() if match else -1

    if whole_text_safe:
        def fallback(content: str, pos: int) -> int:
            match = wide.search(content, pos)
            return match.start() if match else -1
    else:
        def fallback(content: str, pos: int) -> int:
            return pos  # every line is a candidate
    return _Query(confirm=confirm, clauses=_clauses_trim(fragments), fragments=fragments, fold=fold,
                  fallback=fallback, fallback_scans=whole_text_safe)


def _text_check(name: str, value: str) -> None:
    """Stored text never holds NUL (Postgres refuses it) nor lone surrogates: such a query could never
    match, and the database would reject it."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequest(f"The {name} is not valid text.", details={name: ["Not valid Unicode."]}) from None
    if "\x00" in value:
        raise InvalidRequest(f"The {name} is not valid text.", details={name: ["Must not contain NUL."]})


def _literal_query(q: str, *, case: bool) -> _Query:
    if case:
        return _Query(confirm=lambda line, hint: hint, clauses=[[q]], fragments=[[q]], fold=False,
                      fallback=lambda content, pos: content.find(q, pos), literal=q)
    pattern = re.compile(re.escape(q), re.IGNORECASE)

    def confirm(line: str, hint: int) -> int:
        match = pattern.search(line)
        return match.start() if match else -1

    def fallback(content: str, pos: int) -> int:
        match = pattern.search(content, pos)
        return match.start() if match else -1

    fragments = _clauses_unique([[run.lower()] for run in re.split(r"[^\x00-\x7f]|[iIkKsS]", q) if run])
    return _Query(confirm=confirm, clauses=_clauses_trim(fragments), fragments=fragments, fold=True,
                  fallback=fallback)


def _scoped_ignorecase(tree: Any) -> bool:
    for op, av in _walk(tree):
        if op is sre_parse.SUBPATTERN and av[1] & re.IGNORECASE:
            return True
    return False


def _walk(tree: Any) -> Iterator[tuple[Any, Any]]:
    for op, av in tree:
        yield op, av
        if op is sre_parse.BRANCH:
            for alt in av[1]:
                yield from _walk(alt)
        elif op is sre_parse.SUBPATTERN:
            yield from _walk(av[3])
        elif op in (sre_parse.MAX_REPEAT, sre_parse.MIN_REPEAT, _POSSESSIVE_REPEAT):
            yield from _walk(av[2])
        elif op in (sre_parse.ASSERT, sre_parse.ASSERT_NOT):
            yield from _walk(av[1])
        elif op is _ATOMIC_GROUP:
            yield from _walk(av)
        elif op is sre_parse.GROUPREF_EXISTS:
            yield from _walk(av[1])
            if av[2] is not None:
                yield from _walk(av[2])


_POSSESSIVE_REPEAT = getattr(sre_parse, "POSSESSIVE_REPEAT", object())
_ATOMIC_GROUP = getattr(sre_parse, "ATOMIC_GROUP", object())


def _whole_text_safe(tree: Any) -> bool:
    """Whether searching the whole text (MULTILINE) finds every position where a line match starts.

    A match within a line is a match of the whole text at the same position, because more text
    around it can only add ways to match; except for constructs that fail when they see more:
    negative lookarounds, atomic groups, possessive repeats, and \\A / \\Z (start/end of *line* when
    a line is searched alone).
    """
    for op, av in _walk(tree):
        if op in (sre_parse.ASSERT_NOT, _ATOMIC_GROUP, _POSSESSIVE_REPEAT):
            return False
        if op is sre_parse.AT and av in (sre_parse.AT_BEGINNING_STRING, sre_parse.AT_END_STRING):
            return False
    return True


def _sequence_info(seq: Any, fold: bool) -> tuple[str | None, list[list[str]]]:
    """(the exact text the sequence matches, or None; the clauses every match of it satisfies, which
    for exact text is the text itself).

    Literal characters next to each other form a fragment; anything else (classes, optional parts,
    alternations, …) ends it. An alternation of parts that each require a fragment gives one clause
    with a fragment per part. Under `fold`, characters the databases cannot fold like Python
    (non-ASCII, and i/k/s) end fragments too.
    """
    clauses: list[list[str]] = []
    run: list[str] = []
    exact = True

    def flush() -> None:
        if run:
            clauses.append(["".join(run)])
            run.clear()

    for op, av in seq:
        if op is sre_parse.LITERAL:
            char = chr(av)
            if fold and (ord(char) > 0x7F or char in _UNSAFE_FOLD):
                flush()
                exact = False
            else:
                run.append(char)
        elif op is sre_parse.SUBPATTERN:
            sub_exact, sub_clauses = _sequence_info(av[3], fold)
            if sub_exact is not None:
                run.append(sub_exact)
            else:
                flush()
                clauses.extend(sub_clauses)
                exact = False
        elif op is _ATOMIC_GROUP:
            flush()
            clauses.extend(_sequence_info(av, fold)[1])
            exact = False
        elif op in (sre_parse.MAX_REPEAT, sre_parse.MIN_REPEAT, _POSSESSIVE_REPEAT):
            flush()
            if av[0] >= 1:
                clauses.extend(_sequence_info(av[2], fold)[1])
            exact = False
        elif op is sre_parse.BRANCH:
            flush()
            alternatives: list[str] = []
            for alt in av[1]:
                alt_exact, alt_clauses = _sequence_info(alt, fold)
                singles = [clause[0] for clause in alt_clauses if len(clause) == 1]
                best = alt_exact if alt_exact is not None else max(singles, key=len, default="")
                if not best:
                    alternatives = []
                    break
                alternatives.append(best)
            if alternatives:
                clauses.append(sorted(set(alternatives)))
            exact = False
        elif op is sre_parse.AT:
            # Zero width: the characters on either side are still next to each other in the text.
            exact = False
        else:  # classes, any character, back references, lookarounds, conditionals
            flush()
            exact = False
    if exact:
        text = "".join(run)
        return text, [[text]] if text else []
    flush()
    return None, clauses


def _clauses_unique(clauses: list[list[str]]) -> list[list[str]]:
    unique: list[list[str]] = []
    for clause in clauses:
        clause = sorted(set(clause))
        if clause and all(clause) and clause not in unique:
            unique.append(clause)
    return unique


def _clauses_trim(clauses: list[list[str]]) -> list[list[str]]:
    """Few, selective clauses for the database: its work grows with each one."""
    kept = [clause for clause in clauses if len(clause) <= 16]
    kept.sort(key=lambda clause: min(len(frag) for frag in clause), reverse=True)
    if kept and min(len(frag) for frag in kept[0]) >= _MIN_TRIGRAM:
        # With a selective clause at hand, one- and two-character ones only cost database time.
        kept = [clause for clause in kept if min(len(frag) for frag in clause) >= _MIN_TRIGRAM]
    return kept[:6]


# --- path globs ----------------------------------------------------------------------------------


@dataclass
class _Glob:
    """`*` and `?` stay within a folder, `**` crosses folders; a glob without "/" matches the file
    name (like grep's --include), one with "/" the whole path from the project root."""

    pattern: str
    regex: re.Pattern[str] = field(init=False)
    basename: bool = field(init=False)

    def __post_init__(self) -> None:
        glob = self.pattern.strip().lstrip("/")
        glob = glob.removeprefix("./")
        self.basename = "/" not in glob
        self.regex = re.compile(_glob_translate(glob), re.DOTALL)
        self.pattern = glob

    def match(self, path: str) -> bool:
        return bool(self.regex.fullmatch(path.rsplit("/", 1)[-1] if self.basename else path))

    def like(self) -> str:
        """A LIKE pattern (escape character "\\") that every matching path matches."""
        out: list[str] = ["%"] if self.basename else []
        for kind, text in _glob_tokens(self.pattern):
            if kind in ("star", "globstar"):
                piece = "%"
            elif kind in ("any", "class"):
                piece = "_"
            else:
                piece = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            if not (piece == "%" and out and out[-1] == "%"):
                out.append(piece)
        return "".join(out)


def _glob_tokens(glob: str) -> Iterator[tuple[str, str]]:
    i = 0
    while i < len(glob):
        if glob.startswith("**/", i):
            yield "globstar", "**/"
            i += 3
        elif glob.startswith("**", i):
            yield "globstar", "**"
            i += 2
        elif glob[i] == "*":
            yield "star", "*"
            i += 1
        elif glob[i] == "?":
            yield "any", "?"
            i += 1
        elif glob[i] == "[":
            j = i + 1
            if j < len(glob) and glob[j] in "!^":
                j += 1
            if j < len(glob) and glob[j] == "]":
                j += 1
            j = glob.find("]", j)
            if j < 0:  # no closing bracket: a literal "[" (as fnmatch)
                yield "text", "["
                i += 1
            else:
                yield "class", glob[i:j + 1]
                i = j + 1
        else:
            yield "text", glob[i]
            i += 1


def _glob_translate(glob: str) -> str:
    out: list[str] = []
    for kind, text in _glob_tokens(glob):
        if kind == "globstar":
            out.append("(?:.*/)?" if text == "**/" else ".*")
        elif kind == "star":
            out.append("[^/]*")
        elif kind == "any":
            out.append("[^/]")
        elif kind == "class":
            body = text[1:-1]
            negate = body[:1] in ("!", "^")
            if negate:
                body = body[1:]
            body = body.replace("\\", "\\\\").replace("^", "\\^").replace("[", "\\[")
            out.append(f"[{'^/' if negate else ''}{body}]" if body else "(?!)")
        else:
            out.append(re.escape(text))
    return "".join(out)


# --- matching lines in one file ------------------------------------------------------------------


def _file_matches(content: str, query: _Query, budget: _Budget) -> Iterator[tuple[int, int, str]]:
    """(1-based line, 1-based column, line) of every matching line, in order."""
    find = query.finder(content)
    if find is None:
        return
    size = len(content)
    pos, line_no, counted, steps = 0, 1, 0, 0
    while pos <= size:
        start = find(pos)
        if start < 0 or (start == size and (size == 0 or content[-1] == "\n")):
            return  # no match, or only on the "line" after the final newline, which grep does not count
        newline = content.rfind("\n", pos, start)
        line_start = pos if newline < 0 else newline + 1
        line_end = content.find("\n", start)
        if line_end < 0:
            line_end = size
        line_no += content.count("\n", counted, line_start)
        counted = line_start
        line = content[line_start:line_end]
        column = query.confirm(line, start - line_start)
        if column >= 0:
            yield line_no, column + 1, line
        pos = line_end + 1
        steps += 1
        if steps % 2048 == 0:
            budget.check()


# --- candidate files from the database -----------------------------------------------------------


@dataclass
class _Progress:
    files_read: int = 0
    candidates: int = 0
    capped: bool = False


class _Source:
    """Candidate files in path order: from the trigram index when the query has fragments it can use,
    else every file of the project, a window at a time."""

    def __init__(self, *, project: Project, query: _Query, glob: _Glob | None, budget: _Budget,
                 progress: _Progress) -> None:
        self.project = project
        self.query = query
        self.glob = glob
        self.budget = budget
        self.progress = progress
        self.vendor = connection.vendor
        # Code point order on both databases (Postgres would otherwise sort by the database's locale).
        self.path = 'path COLLATE "C"' if self.vendor == "postgresql" else "path"

    def files(self) -> Iterator[tuple[str, str]]:
        """(path, content) of candidate files in path order."""
        with connection.cursor() as cursor:
            condition = self._index_condition(cursor)
            if condition is None:
                yield from self._windows(cursor)
            else:
                yield from self._indexed(cursor, *condition)

    def _execute(self, cursor: Any, sql: str, params: list[Any]) -> list[tuple[Any, ...]]:
        return _bounded_fetch(cursor, self.budget, sql, params)

    def _glob_sql(self, alias: str) -> tuple[str, list[Any]]:
        if self.glob is None:
            return "", []
        return f" AND {alias}path LIKE %s ESCAPE '\\'", [self.glob.like()]

    def _index_condition(self, cursor: Any) -> tuple[str, list[Any]] | None:
        """A query for the ids of candidate blobs that the index answers alone (no re-reading of
        contents), or None when no clause of the query gives the index anything to look up."""
        if self.vendor == "sqlite":
            clauses = [clause for clause in self.query.clauses if all(len(frag) >= _MIN_TRIGRAM for frag in clause)]
            if not clauses:
                return None
            return ("SELECT rowid FROM projects_blob_fts WHERE projects_blob_fts MATCH %s", [_fts_match(clauses)])
        if self.vendor != "postgresql" or not _pg_lowercases_ascii(cursor):
            return None
        required: set[str] = set()
        alternatives: list[list[list[str]]] = []
        for clause in self.query.clauses:
            grams = [_pg_trigrams(frag) for frag in clause]
            if not all(grams):
                continue  # an alternative the index cannot look up: the clause narrows nothing
            if len(grams) == 1:
                required.update(grams[0])
            else:
                alternatives.append(grams)
        # One index lookup per SELECT, combined with INTERSECT and UNION: given `a AND (b OR c)`, the
        # planner may look `a` up and compute the trigrams of each row it finds to test `b OR c`.
        lookup = "SELECT id FROM projects_blob WHERE projects_blob_trigrams(content) @> %s::text[]"
        parts: list[str] = []
        params: list[Any] = []
        if required:
            parts.append(lookup)
            params.append(sorted(required))
        for grams in alternatives:
            parts.append("(" + " UNION ".join([lookup] * len(grams)) + ")")
            params.extend(grams)
        if not parts:
            return None
        return " INTERSECT ".join(parts), params

    def _indexed(self, cursor: Any, candidates: str, candidate_params: list[Any]) -> Iterator[tuple[str, str]]:
        """Candidates from the trigram index, a page at a time, contents fetched as needed."""
        glob_sql, glob_params = self._glob_sql("f.")
        # Postgres leaves out the contents of candidates lacking a fragment (the index only knows
        # pg_trgm's word trigrams, blind to punctuation); not under `fold`, where ~* costs more than
        # it saves.
        hit, hit_params = ("TRUE", []) if self.query.fold else self._window_filter()
        where = f"f.project_id = %s AND f.{self.path} > %s{glob_sql}"
        if self.vendor == "postgresql":
            # Planned apart (MATERIALIZED), the lookup can only be the index's: joined, the planner
            # may prefer to compute the trigrams of each file of the project instead.
            sql = (f"WITH candidate AS MATERIALIZED ({candidates}) SELECT f.path, f.blob_id FROM projects_file f"
                   f" JOIN candidate c ON c.id = f.blob_id WHERE {where} ORDER BY f.{self.path} LIMIT %s")
        else:
            sql = (f"SELECT f.path, f.blob_id FROM projects_file f WHERE {where} AND f.blob_id IN ({candidates})"
                   " ORDER BY f.path LIMIT %s")
        after = ""
        while True:
            page = min(CANDIDATE_PAGE, MAX_CANDIDATES - self.progress.candidates)
            if page <= 0:
                self.progress.capped = True
                return
            where_params = [self.project.pk, after, *glob_params]
            params = ([*candidate_params, *where_params, page] if self.vendor == "postgresql"
                      else [*where_params, *candidate_params, page])
            rows = self._execute(cursor, sql, params)
            self.progress.candidates += len(rows)
            wanted = [(path, blob_id) for path, blob_id in rows if self.glob is None or self.glob.match(path)]
            batch = 8  # common queries end within the first few files
            while wanted:
                chunk, wanted = wanted[:batch], wanted[batch:]
                placeholders = ", ".join(["%s"] * len(chunk))
                contents = dict(self._execute(
                    cursor, f"SELECT b.id, CASE WHEN {hit} THEN b.content ELSE '' END FROM projects_blob b"
                            f" WHERE b.id IN ({placeholders})", [*hit_params, *(blob_id for _, blob_id in chunk)]))
                for path, blob_id in chunk:
                    self.progress.files_read += 1
                    content = contents.get(blob_id)
                    if content:  # None: a rescan deleted it since; "": it lacks a fragment
                        yield path, content
                batch = min(batch * 2, 256)
            if len(rows) < page:
                return
            after = rows[-1][0]

    def _windows(self, cursor: Any) -> Iterator[tuple[str, str]]:
        """Every file in path order, a window at a time; Postgres drops files without the query's
        fragments before sending them."""
        after, size = "", FIRST_WINDOW
        if self.vendor == "postgresql":
            hit, hit_params = self._window_filter()
            glob_sql, glob_params = self._glob_sql("")
            # The LIMIT in a subquery keeps the planner from reading blobs outside the window.
            sql = (f"SELECT w.path, CASE WHEN {hit} THEN b.content END FROM ("
                   f"SELECT path, blob_id FROM projects_file WHERE project_id = %s AND {self.path} > %s{glob_sql}"
                   f" ORDER BY {self.path} LIMIT %s) w JOIN projects_blob b ON b.id = w.blob_id"
                   f" ORDER BY w.{self.path}")
        else:
            # Walks the (project, path) index in order and reads each blob as it goes, no sorting;
            # SQLite's instr() is no faster than reading the text into Python and searching it there.
            hit_params = []
            glob_sql, glob_params = self._glob_sql("f.")
            sql = ("SELECT f.path, b.content FROM projects_file f JOIN projects_blob b ON b.id = f.blob_id"
                   f" WHERE f.project_id = %s AND f.path > %s{glob_sql} ORDER BY f.path LIMIT %s")
        while True:
            if self.progress.files_read >= MAX_CANDIDATES:
                self.progress.capped = True
                return
            rows = self._execute(cursor, sql, [*hit_params, self.project.pk, after, *glob_params, size])
            for path, content in rows:
                self.progress.files_read += 1
                if content is not None and (self.glob is None or self.glob.match(path)):
                    yield path, content
            if len(rows) < size:
                return
            after = rows[-1][0]
            size = min(size * 2, MAX_WINDOW)

    def _window_filter(self) -> tuple[str, list[Any]]:
        """Postgres: whether b.content holds the query's fragments (exact). SQLite's instr() is no
        faster than reading the text into Python and searching it there."""
        if self.vendor != "postgresql" or not self.query.clauses:
            return "TRUE", []
        parts: list[str] = []
        params: list[Any] = []
        for clause in self.query.clauses:
            if self.query.fold:
                parts.append("(" + " OR ".join(["b.content ~* %s"] * len(clause)) + ")")
                params.extend(_are_escape(frag) for frag in clause)
            else:
                parts.append("(" + " OR ".join(["strpos(b.content, %s) > 0"] * len(clause)) + ")")
                params.extend(clause)
        return " AND ".join(parts), params


def _fts_match(clauses: list[list[str]]) -> str:
    """An FTS5 query over single trigrams: with detail=none FTS5 has no positions (so no phrases),
    but a file holding a fragment holds each of its trigrams, so AND-ing them is a superset."""
    def trigrams(frag: str) -> str:
        grams = list(dict.fromkeys(frag[i:i + 3] for i in range(len(frag) - 2)))
        if len(grams) > 12:  # spread over the fragment: enough to be selective, cheap to intersect
            step = (len(grams) - 1) / 11
            grams = [grams[round(i * step)] for i in range(12)]
        return "(" + " AND ".join('"' + gram.replace('"', '""') + '"' for gram in grams) + ")"

    return " AND ".join("(" + " OR ".join(trigrams(frag) for frag in clause) + ")" for clause in clauses)


_ASCII_WORD = re.compile(r"[A-Za-z0-9]+")


def _pg_trigrams(fragment: str) -> list[str]:
    """Trigrams that pg_trgm's show_trgm() (projects_blob_trigrams) yields for every text containing
    `fragment`.

    show_trgm splits text into words (runs of alphanumerics), lowercases them and takes the trigrams
    of "  word ". A word of the fragment is only known to be a whole word of the text on a side where
    the fragment has an ASCII non-alphanumeric character next to it; the text may extend it anywhere
    else (whether a non-ASCII character is alphanumeric depends on the database's locale), so only
    the trigrams inside it, and the padding on known sides, are certain. Only ASCII words are used.
    """
    grams: set[str] = set()
    for match in _ASCII_WORD.finditer(fragment):
        start, end = match.span()
        left = start > 0 and fragment[start - 1].isascii()
        right = end < len(fragment) and fragment[end].isascii()
        padded = ("  " if left else "") + match.group().lower() + (" " if right else "")
        grams.update(padded[i:i + 3] for i in range(len(padded) - 2))
    return sorted(grams)


_pg_lowercase_checked: dict[str, bool] = {}


def _pg_lowercases_ascii(cursor: Any) -> bool:
    """pg_trgm lowercases with the database's locale; in a Turkish one "I" does not become "i" and the
    trigrams computed here would not be the index's. Checked once per database."""
    name = connection.settings_dict["NAME"]
    if name not in _pg_lowercase_checked:
        cursor.execute("SELECT lower('ABCDEFGHIJKLMNOPQRSTUVWXYZ') = 'abcdefghijklmnopqrstuvwxyz'")
        _pg_lowercase_checked[name] = bool(cursor.fetchone()[0])
    return _pg_lowercase_checked[name]


def _are_escape(text: str) -> str:
    """A Postgres regular expression matching `text` literally (ASCII text: fold fragments are)."""
    return "".join(char if char.isascii() and char.isalnum() else "\\" + char for char in text)


# --- the time bound in the database --------------------------------------------------------------


@contextmanager
def _database_bound(budget: _Budget) -> Iterator[None]:
    """Postgres: a transaction whose statements each get the remaining budget as statement_timeout
    (set locally before each one, see _bounded_fetch). SQLite: a progress handler interrupting any
    statement that runs past the deadline. Not a transaction on SQLite: kf opens them IMMEDIATE,
    which would queue searches behind rescans."""
    if connection.vendor == "postgresql":
        nested = connection.in_atomic_block
        with transaction.atomic():
            with connection.cursor() as cursor:
                # The index function's high cost (migration 0002) would otherwise get plans JIT-compiled,
                # which takes longer than running them.
                cursor.execute("SELECT current_setting('statement_timeout'), current_setting('jit'),"
                               " set_config('jit', 'off', true)")
                previous_timeout, previous_jit, _ = cursor.fetchone()
            yield
            if nested:  # SET LOCAL would outlive our savepoint in the caller's transaction
                with connection.cursor() as cursor:
                    cursor.execute("SELECT set_config('statement_timeout', %s, true), set_config('jit', %s, true)",
                                   [previous_timeout, previous_jit])
    elif connection.vendor == "sqlite":
        connection.ensure_connection()
        raw = connection.connection
        raw.set_progress_handler(lambda: int(budget.expired()), 2000)
        try:
            yield
        finally:
            raw.set_progress_handler(None, 0)
    else:
        yield


def _bounded_fetch(cursor: Any, budget: _Budget, sql: str, params: list[Any]) -> list[tuple[Any, ...]]:
    """Runs one statement within what is left of the budget (inside _database_bound)."""
    budget.check()
    if connection.vendor == "postgresql":
        # The remaining budget, so that all statements together stay within it.
        cursor.execute("SELECT set_config('statement_timeout', %s, true)", [str(max(1, budget.remaining_ms()))])
    cursor.execute(sql, params)
    return cursor.fetchall()


def _is_cancel(exc: OperationalError) -> bool:
    cause = exc.__cause__
    if connection.vendor == "postgresql":
        return getattr(cause, "sqlstate", None) == "57014"  # query_canceled
    return connection.vendor == "sqlite" and "interrupted" in str(exc)


# --- the service ---------------------------------------------------------------------------------


def search_project(*, project: Project, q: str, regex: bool = False, case: bool = True,
                   glob: str | None = None, limit: int = 200, timeout_ms: int | None = None) -> SearchResult:
    """Matching lines of the project's indexed files, ordered by path then line.

    `limit` bounds the items; truncated=True when there were more, or when a bound (time, candidate
    files) cut the search short. Raises InvalidRequest for an empty query or a bad regex.
    """
    started = time.monotonic()
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidRequest("The limit is out of range.", details={"limit": [f"Between 1 and {MAX_LIMIT}."]})
    query = _query_build(q, regex=regex, case=case)
    if glob:
        _text_check("glob", glob)
    path_glob = _Glob(glob) if glob and glob.strip() else None
    if timeout_ms is None:
        timeout_ms = int(getattr(settings, "KF_SEARCH_TIMEOUT_MS", DEFAULT_TIMEOUT_MS))
    budget = _Budget(timeout_ms)
    progress = _Progress()
    items: list[dict[str, Any]] = []
    truncated = False
    try:
        with _database_bound(budget):
            source = _Source(project=project, query=query, glob=path_glob, budget=budget, progress=progress)
            # closing(): the generator's cursor is released inside the transaction, not at some later GC.
            with closing(source.files()) as files:
                for path, content in files:
                    for line, column, text in _file_matches(content, query, budget):
                        items.append({"path": path, "line": line, "column": column,
                                      "preview": text.removesuffix("\r")[:PREVIEW_CHARS]})
                        if len(items) > limit:
                            break
                    if len(items) > limit:
                        truncated = True
                        break
                    budget.check()
            truncated = truncated or progress.capped
    except _Expired:
        truncated = True
    except OperationalError as exc:
        if not _is_cancel(exc):
            raise
        truncated = True
    return SearchResult(items=items[:limit], truncated=truncated,
                        took_ms=int((time.monotonic() - started) * 1000))

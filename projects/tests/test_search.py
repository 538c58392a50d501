"""Search against real grep on the same files, on whichever database the suite runs on."""

import hashlib
import os
import subprocess
import time
from pathlib import Path

import pytest
from django.db import OperationalError, connection

from accounts.models import User, Workspace
from api.errors import InvalidRequest
from projects import search
from projects.models import Blob, File, Project
from projects.search import search_project

TREE: dict[str, bytes] = {
    "README.md": (
        "# Demo project\n"
        "TODO: write the docs\n"
        "naïve café — Ünïcödé text\n"
        "🚀 launch the rocket\n"
        "See école and ÉCOLE and Ecole.\n"
        "Straße und STRASSE und straße\n"
        "trailing spaces   \n"
    ).encode(),
    "src/app.py": (
        b"import os\n"
        b"import sys\n"
        b"\n"
        b"\n"
        b"class AppError(ValueError):\n"
        b"    pass\n"
        b"\n"
        b"\n"
        b"class App:\n"
        b"    def __init__(self, name):\n"
        b"        self.name = name  # TODO: validate\n"
        b"\n"
        b"    def run(self):\n"
        b'        raise ValueError("bad")  # foo foo foo\n'
        b"\n"
        b"    def foo_bar(self):\n"
        b'        return "foobaz barbaz"\n'
        b"\n"
        b"\tindented = 1.5 + 10.25\n"
        b'PROGRESS = "100% done"  # a_b, back\\slash, [bracket], star*, ab\n'
        b"#!shebang-ish comment with Value and VALUE\n"
    ),
    "src/sub/deep/mod.py": (
        b"import os.path\n"
        b"from app import App  # foo\n"
        b"\n"
        b"def helper_test(x):\n"
        b"    return x * 2  # fixme later: FIXME\n"
        b"\n"
        b"def other_test(y): return y\n"
        b"KELVIN = 'Kelvin sign K'\n"
    ),
    "src/sub/util.js": b"function foo() { return 'foobar'; }\n// TODO js\nconst \xc3\xa9t\xc3\xa9 = 1;\n",
    "docs/notes.txt": b"First line\r\nTODO: crlf item\r\n\r\nfoo at the end\r\nlast line without newline",
    "docs/guide.md": b"# Guide\n\nUse `import os` and then foo.\n   \n\ttabbed line\n",
    "data/long.txt": b"x" * 3000 + b" needle foo " + b"y" * 3000 + b"\nshort needle\n",
    "data/empty.txt": b"",
    "data/blank_lines.txt": b"\n\n\n",
    "data/weird name with spaces.txt": b"foo with spaces\nclass Spaced: pass\n",
    "lib/many.txt": b"".join(b"line %d: foo and foo\n" % i for i in range(1, 301)),
}


def tree_write(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def project_store(workspace: Workspace, root: Path, *, name: str = "demo") -> Project:
    """What a rescan stores, minus the walking rules: one File per file, one Blob per content."""
    project = Project.objects.create(workspace=workspace, name=name, root=str(root), source=Project.Source.PATH)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        blob, _ = Blob.objects.get_or_create(sha=hashlib.sha256(data).hexdigest(),
                                             defaults={"size": len(data), "content": data.decode("utf-8")})
        File.objects.create(project=project, path=path.relative_to(root).as_posix(), blob=blob, size=len(data),
                            mtime_ns=path.stat().st_mtime_ns)
    return project


def grep(root: Path, *args: str) -> set[tuple[str, int]]:
    """(path, line) of every line real grep reports under `root`."""
    done = subprocess.run(["grep", "-rnZ", *args], cwd=root, capture_output=True,
                          env={**os.environ, "LC_ALL": "C.UTF-8"}, check=False)
    assert done.returncode in (0, 1), done.stderr
    found = set()
    for row in done.stdout.split(b"\n"):
        if row:
            name, rest = row.split(b"\0", 1)
            found.add((name.decode(), int(rest.split(b":", 1)[0])))
    return found


def hits(result: search.SearchResult) -> set[tuple[str, int]]:
    pairs = [(item["path"], item["line"]) for item in result.items]
    assert pairs == sorted(set(pairs)), "ordered by path then line, each line once"
    return set(pairs)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return tree_write(tmp_path / "tree", TREE)


@pytest.fixture
def project(team: Workspace, tree: Path) -> Project:
    return project_store(team, tree)


LITERALS = ["def ", "ValueError(", "TODO", "foo", "é", "école", "🚀", "%", "_", "\\", "[", "*", "a_b",
            "100% done", "  ", "ab", "x", "needle", "import os", "Straße", "    return", ":"]


@pytest.mark.parametrize("q", LITERALS)
def test_search_literal_matches_grep(project: Project, tree: Path, q: str) -> None:
    result = search_project(project=project, q=q, limit=1000)

    assert hits(result) == grep(tree, "-F", "-e", q)
    assert not result.truncated
    for item in result.items:
        line = (tree / item["path"]).read_bytes().decode().split("\n")[item["line"] - 1]
        assert line.find(q) == item["column"] - 1
        assert item["preview"] == line.removesuffix("\r")[:500]


@pytest.mark.parametrize("q", ["todo", "ÉCOLE", "valueerror(", "STRAßE", "value", "is", "Ab", "KELVIN", "Ünï"])
def test_search_case_insensitive_matches_grep(project: Project, tree: Path, q: str) -> None:
    result = search_project(project=project, q=q, case=False, limit=1000)

    assert hits(result) == grep(tree, "-i", "-F", "-e", q)


REGEXES = [r"def \w+\(", r"class [A-Z]\w*", r"^import", r"o{2}", r"(foo|bar)baz", r"[0-9]+\.[0-9]+", r"\s+$",
           r"^$", r"x*", r"TODO|FIXME", r"é+", r"^\s*#", r"\bfoo\b", r"def \w+_test\(", r"foo.*foo", r"^[^a-z]+$",
           r"(import|from) [a-z.]+", r"ne+dle"]


@pytest.mark.parametrize("q", REGEXES)
def test_search_regex_matches_grep(project: Project, tree: Path, q: str) -> None:
    result = search_project(project=project, q=q, regex=True, limit=1000)

    assert hits(result) == grep(tree, "-E", "-e", q)


@pytest.mark.parametrize("q", [r"todo|fixme", r"class \w+error", r"é+", r"^IMPORT"])
def test_search_regex_case_insensitive_matches_grep(project: Project, tree: Path, q: str) -> None:
    result = search_project(project=project, q=q, regex=True, case=False, limit=1000)

    assert hits(result) == grep(tree, "-i", "-E", "-e", q)


@pytest.mark.parametrize(("glob", "q", "grep_args"), [
    ("*.py", "foo", ["--include=*.py"]),
    ("*.txt", "foo", ["--include=*.txt"]),
    ("*name with*", "foo", ["--include=*name with*"]),
    ("src/**/*.py", "import", ["--include=*.py", "src"]),
    ("src/**", "TODO", ["src"]),
    ("**/*.md", "TODO", ["--include=*.md"]),
    ("m?d.py", "def", ["--include=m?d.py"]),
    ("[a-m]*.py", "import", ["--include=[a-m]*.py"]),
])
def test_search_glob_matches_grep_include(project: Project, tree: Path, glob: str, q: str,
                                          grep_args: list[str]) -> None:
    result = search_project(project=project, q=q, glob=glob, limit=1000)

    assert hits(result) == grep(tree, "-F", *grep_args, "-e", q)


def test_search_glob_star_stays_in_its_folder(project: Project) -> None:
    assert {i["path"] for i in search_project(project=project, q="foo", glob="src/*").items} == {"src/app.py"}
    assert {i["path"] for i in search_project(project=project, q="foo", glob="src/*.py").items} == {"src/app.py"}
    assert {i["path"] for i in search_project(project=project, q="foo", glob="src/*/*").items} == {"src/sub/util.js"}
    assert {i["path"] for i in search_project(project=project, q="foo", glob="src/**/*").items} == {
        "src/app.py", "src/sub/deep/mod.py", "src/sub/util.js"}


def test_search_two_character_query_uses_no_index_and_is_complete(project: Project, tree: Path) -> None:
    for q, case in [("fo", True), ("é", True), ("Ab", False), ("\t", True)]:
        result = search_project(project=project, q=q, case=case, limit=1000)
        assert hits(result) == grep(tree, "-F", *([] if case else ["-i"]), "-e", q), q


def test_search_regex_without_literal_scans_everything(project: Project, tree: Path) -> None:
    result = search_project(project=project, q=r"[A-Z][a-z]+\s", regex=True, limit=1000)

    assert hits(result) == grep(tree, "-E", "-e", r"[A-Z][a-z]+\s")
    assert search._query_build(r"[A-Z][a-z]+\s", regex=True, case=True).clauses == []


def test_search_regex_lookaround_and_anchors_fall_back_to_every_line(project: Project) -> None:
    # \A and \Z are the start and end of each line; (?!…) must not see the next line.
    found = search_project(project=project, q=r"\Aimport", regex=True, limit=1000)
    assert {(i["path"], i["line"]) for i in found.items} == {("src/app.py", 1), ("src/app.py", 2),
                                                            ("src/sub/deep/mod.py", 1)}
    found = search_project(project=project, q=r"foo(?![\s\S])", regex=True, glob="*.txt", limit=1000)
    assert {(i["path"], i["line"]) for i in found.items} == {("lib/many.txt", n) for n in range(1, 301)}


def test_search_column_is_the_first_match_in_the_line(project: Project) -> None:
    [item] = search_project(project=project, q=r"fo+ ", regex=True, glob="src/app.py").items

    assert (item["line"], item["column"]) == (14, 36)
    [item] = search_project(project=project, q="needle", glob="long.txt", limit=1).items
    assert (item["line"], item["column"], len(item["preview"])) == (1, 3002, 500)


def test_search_regex_prefilter_keeps_required_literals() -> None:
    def clauses(q: str, case: bool = True) -> list[list[str]]:
        return search._query_build(q, regex=True, case=case).clauses

    assert clauses(r"def \w+_test\(") == [["_test("], ["def "]]
    assert clauses(r"(get|set)_value") == [["_value"], ["get", "set"]]
    assert clauses(r"class \w+Error\(", case=False) == [["error("], ["cla"]]
    assert clauses(r"(?i)value") == [["value"]]
    assert clauses(r"colou?r") == [["colo"]]
    assert clauses(r"a.c") == [["a"], ["c"]]
    assert clauses(r"(foo)?bar|baz") == [["bar", "baz"]]
    assert clauses(r"x*|abc") == []
    assert clauses(r"needle") == [["needle"]]
    assert clauses(r"(abc)+d") == [["abc"]]


@pytest.mark.parametrize("q", ["(", "[a-", "a{2,1}", "*", "(?P<x>a)(?P<x>b)"])
def test_search_bad_regex_is_invalid_request(project: Project, q: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        search_project(project=project, q=q, regex=True)

    assert caught.value.status_code == 400
    assert caught.value.default_code == "invalid_request"
    assert list(caught.value.details) == ["q"]


@pytest.mark.parametrize("q", ["", "a\nb", "nul\x00", "x" * 1001])
def test_search_unusable_query_is_invalid_request(project: Project, q: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        search_project(project=project, q=q)

    assert list(caught.value.details) == ["q"]


def test_search_limit_out_of_range_is_invalid_request(project: Project) -> None:
    with pytest.raises(InvalidRequest) as caught:
        search_project(project=project, q="foo", limit=0)

    assert list(caught.value.details) == ["limit"]


def test_search_over_limit_is_truncated_in_order(project: Project) -> None:
    everything = search_project(project=project, q="foo", limit=1000)
    assert not everything.truncated and len(everything.items) > 300

    first = search_project(project=project, q="foo", limit=5)

    assert first.truncated
    assert first.items == everything.items[:5]
    exact = search_project(project=project, q="foo", limit=len(everything.items))
    assert not exact.truncated and exact.items == everything.items


def test_search_never_returns_another_projects_files(project: Project, tree: Path, outsider: User,
                                                     tmp_path: Path) -> None:
    other_root = tree_write(tmp_path / "other", {
        "secret.txt": b"only-in-the-other-project\n",
        "README.md": TREE["README.md"],  # the same content: one blob for both projects
    })
    other = project_store(outsider.memberships.get().workspace, other_root, name="other")

    assert search_project(project=project, q="only-in-the-other-project").items == []
    assert {i["path"] for i in search_project(project=project, q="launch the rocket").items} == {"README.md"}
    assert [i["path"] for i in search_project(project=other, q="foo").items] == []
    assert Blob.objects.filter(files__project=other).filter(files__project=project).count() == 1


def test_search_sees_blob_inserts_updates_and_deletes(project: Project) -> None:
    blob = Blob.objects.create(sha="f" * 64, size=11, content="zebra quagga\n")
    File.objects.create(project=project, path="new.txt", blob=blob, size=11, mtime_ns=0)
    assert [i["path"] for i in search_project(project=project, q="quagga").items] == ["new.txt"]

    Blob.objects.filter(pk=blob.pk).update(content="okapi\n")
    assert search_project(project=project, q="quagga").items == []
    assert [i["path"] for i in search_project(project=project, q="okapi").items] == ["new.txt"]

    File.objects.filter(blob=blob).delete()
    blob.delete()
    assert search_project(project=project, q="okapi").items == []
    if connection.vendor == "sqlite":
        with connection.cursor() as cursor:  # raises if the FTS index and projects_blob disagree
            cursor.execute("INSERT INTO projects_blob_fts(projects_blob_fts, rank) VALUES ('integrity-check', 1)")


def test_search_index_exists(db: None) -> None:
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SELECT indexname, indexdef FROM pg_indexes WHERE indexname = ANY(%s)",
                           [["projects_blob_content_trgm", "projects_symbol_name_trgm",
                             "projects_symbol_name_prefix", "projects_file_project_path_c"]])
            indexes = dict(cursor.fetchall())
            assert "gin (projects_blob_trigrams(content))" in indexes["projects_blob_content_trgm"]
            assert "fastupdate=off" in indexes["projects_blob_content_trgm"]
            assert "gin_trgm_ops" in indexes["projects_symbol_name_trgm"]
            assert "varchar_pattern_ops" in indexes["projects_symbol_name_prefix"]
            assert len(indexes) == 4
        else:
            cursor.execute("SELECT type, name FROM sqlite_master WHERE name LIKE 'projects_blob_fts%%'")
            objects = set(cursor.fetchall())
            assert {("table", "projects_blob_fts"), ("trigger", "projects_blob_fts_insert"),
                    ("trigger", "projects_blob_fts_delete"), ("trigger", "projects_blob_fts_update")} <= objects


def test_search_index_and_windows_agree(team: Workspace, tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Candidates from the index (in pages) or every file in windows give the same lines."""
    tree_write(tree, {f"bulk/f{n:03}.txt": (b"filler line\n" * 2 + (b"rare needle\n" if n % 40 == 0 else b""))
                      for n in range(200)})
    project = project_store(team, tree)
    queries = [("needle", False), ("foo", False), ("filler", False), (r"ra+re", True), (r"f\w+r", True),
               ("def ", False), (r"(import|from) [a-z.]+", True)]
    expected = {q: grep(tree, "-E" if regex else "-F", "-e", q) for q, regex in queries}
    unindexed = {q: search._query_build(q, regex=regex, case=True).clauses == [] for q, regex in queries}
    assert not any(unindexed[q] for q in ("needle", "foo", "filler", "def "))
    for first_window, page, use_index in [(32, 500, True), (4, 3, True), (1, 7, False), (3, 500, False)]:
        monkeypatch.setattr(search, "FIRST_WINDOW", first_window)
        monkeypatch.setattr(search, "CANDIDATE_PAGE", page)
        if not use_index:
            monkeypatch.setattr(search._Source, "_index_condition", lambda self, cursor: None)
        for q, regex in queries:
            assert hits(search_project(project=project, q=q, regex=regex, limit=1000)) == expected[q], (q, page)


def test_search_candidate_cap_truncates(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(search, "MAX_CANDIDATES", 2)
    monkeypatch.setattr(search, "CANDIDATE_PAGE", 1)

    result = search_project(project=project, q="foo", limit=1000)

    assert result.truncated
    assert len({item["path"] for item in result.items}) <= 2


@pytest.mark.parametrize("fragment", ["import os", "sys.version_info", "__init__", "a", "Ab1 cD", "x_y", "éa",
                                      "aé", "fooBAR", " os.path.", "'__main__':", "100% done", "ZeroDivisionError"])
def test_search_pg_trigrams_are_in_every_text_holding_the_fragment(db: None, fragment: str) -> None:
    """The trigrams looked up in the Postgres index are a subset of show_trgm() of any text holding the
    fragment, whatever surrounds it (else the index would hide a match)."""
    if connection.vendor != "postgresql":
        pytest.skip("show_trgm() is Postgres's")
    texts = [fragment, f"x{fragment}y", f"é{fragment}é", f" {fragment} ", f"_{fragment}_", f"9{fragment}Z",
             f"line one\n{fragment.upper()}\n"]
    with connection.cursor() as cursor:
        for text in texts:
            cursor.execute("SELECT show_trgm(%s)", [text])
            assert set(search._pg_trigrams(fragment)) <= set(cursor.fetchone()[0]), text


def test_search_out_of_time_returns_partial_result(project: Project) -> None:
    result = search_project(project=project, q="foo", timeout_ms=0)

    assert result.truncated
    assert result.items == []


def test_search_running_out_of_time_midway_keeps_what_was_found(project: Project,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    everything = search_project(project=project, q=r"o+", regex=True, limit=1000)
    clock = [0.0]

    def ticking() -> float:  # every look at the clock costs a millisecond
        clock[0] += 0.001
        return clock[0]

    monkeypatch.setattr(search.time, "monotonic", ticking)
    partials = [search_project(project=project, q=r"o+", regex=True, limit=1000, timeout_ms=budget)
                for budget in range(0, 60, 3)]

    assert all(partial.truncated for partial in partials if len(partial.items) < len(everything.items))
    assert any(0 < len(partial.items) < len(everything.items) for partial in partials)
    for partial in partials:
        assert partial.items == everything.items[:len(partial.items)]


def test_search_database_bound_cancels_a_long_statement(db: None) -> None:
    budget = search._Budget(200)
    started = time.monotonic()
    slow = ("SELECT pg_sleep(10)" if connection.vendor == "postgresql" else
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c")

    with pytest.raises(OperationalError) as caught, search._database_bound(budget), connection.cursor() as cursor:
        search._bounded_fetch(cursor, budget, slow, [])

    assert search._is_cancel(caught.value)
    assert time.monotonic() - started < 5
    with connection.cursor() as cursor:  # the connection is usable and the caller's setting untouched
        cursor.execute("SELECT 1")
        if connection.vendor == "postgresql":
            cursor.execute("SHOW statement_timeout")
            assert cursor.fetchone()[0] == "0"


def test_search_restores_the_callers_statement_timeout(project: Project) -> None:
    search_project(project=project, q="foo")

    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SHOW statement_timeout")
            assert cursor.fetchone()[0] == "0"
    else:
        # No progress handler left behind: a long statement runs to the end.
        with connection.cursor() as cursor:
            cursor.execute("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 200000)"
                           " SELECT count(*) FROM c")
            assert cursor.fetchone()[0] == 200000


def test_search_result_shape(project: Project) -> None:
    result = search_project(project=project, q="launch")

    assert result.items == [{"path": "README.md", "line": 4, "column": 3, "preview": "🚀 launch the rocket"}]
    assert result.truncated is False
    assert isinstance(result.took_ms, int) and result.took_ms >= 0


def test_search_crlf_preview_drops_the_carriage_return(project: Project) -> None:
    [item] = search_project(project=project, q="crlf item").items

    assert item == {"path": "docs/notes.txt", "line": 2, "column": 7, "preview": "TODO: crlf item"}

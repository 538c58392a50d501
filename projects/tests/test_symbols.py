import textwrap
from pathlib import Path

import pytest

from projects import symbols
from projects.symbols import SymbolRow, SymbolsError, ctags_available, ctags_symbols

SOURCES = {
    "app/models.py": """\
        LIMIT = 10


        class Greeter:
            def hello(self):
                def inner():
                    return 1
                return inner()

            async def bye(self):
                pass
        """,
    "web/shape.js": """\
        class Shape {
          area() { return 0; }
        }
        function make() {
          return new Shape();
        }
        const ANSWER = 42;
        """,
    "src/point.c": """\
        #define MAX 3
        struct point { int x; int y; };
        static int add(int a, int b) {
            return a + b;
        }
        int main(void) { return add(1, 2); }
        """,
    "cmd/server.go": """\
        package main

        type Server struct {
        \tAddr string
        }

        func (s *Server) Start() error {
        \treturn nil
        }
        """,
    "src/lib.rs": """\
        struct Point { x: i32 }
        impl Point {
            fn norm(&self) -> i32 {
                self.x
            }
        }
        """,
    "docs/guide.md": """\
        # Guide

        ## Install

        Run it.
        """,
}


def write(root: Path, files: dict[str, str]) -> list[str]:
    for path, text in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(textwrap.dedent(text))
    return list(files)


def find(rows: list[SymbolRow], path: str, name: str) -> SymbolRow:
    [row] = [row for row in rows if row.path == path and row.name == name]
    return row


def fake_ctags(tmp_path: Path, body: str, *, version: str = "Universal Ctags 5.9.0, +json") -> str:
    script = tmp_path / "fake-ctags"
    script.write_text(f'#!/bin/sh\nif [ "$1" = --version ]; then echo "{version}"; exit 0; fi\n{body}\n')
    script.chmod(0o755)
    return str(script)


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, list[str]]:
    root = tmp_path / "repo"
    return root, write(root, SOURCES)


def test_ctags_available() -> None:
    assert ctags_available()


def test_ctags_symbols_python(tree: tuple[Path, list[str]]) -> None:
    root, paths = tree
    rows = ctags_symbols(root, paths)
    path = "app/models.py"
    assert find(rows, path, "LIMIT") == SymbolRow(path, "LIMIT", "variable", 1, None, "", "Python")
    assert find(rows, path, "Greeter") == SymbolRow(path, "Greeter", "class", 4, 11, "", "Python")
    assert find(rows, path, "hello") == SymbolRow(path, "hello", "member", 5, 8, "Greeter", "Python")
    assert find(rows, path, "inner") == SymbolRow(path, "inner", "function", 6, 7, "Greeter.hello", "Python")
    assert find(rows, path, "bye") == SymbolRow(path, "bye", "member", 10, 11, "Greeter", "Python")


def test_ctags_symbols_javascript(tree: tuple[Path, list[str]]) -> None:
    root, paths = tree
    rows = ctags_symbols(root, paths)
    path = "web/shape.js"
    assert (find(rows, path, "Shape").kind, find(rows, path, "Shape").line) == ("class", 1)
    assert (find(rows, path, "area").kind, find(rows, path, "area").container) == ("method", "Shape")
    assert (find(rows, path, "make").kind, find(rows, path, "make").line) == ("function", 4)
    assert (find(rows, path, "ANSWER").kind, find(rows, path, "ANSWER").line) == ("constant", 7)
    assert {row.language for row in rows if row.path == path} == {"JavaScript"}


def test_ctags_symbols_c_includes_file_scoped_tags(tree: tuple[Path, list[str]]) -> None:
    root, paths = tree
    rows = ctags_symbols(root, paths)
    path = "src/point.c"
    # `static` functions, macros and structs of a .c file are file-scoped tags: they must be there.
    assert find(rows, path, "add") == SymbolRow(path, "add", "function", 3, 5, "", "C")
    assert find(rows, path, "MAX").kind == "macro"
    assert find(rows, path, "point").kind == "struct"
    assert (find(rows, path, "x").kind, find(rows, path, "x").container) == ("member", "point")
    assert find(rows, path, "main") == SymbolRow(path, "main", "function", 6, 6, "", "C")


def test_ctags_symbols_go_and_rust(tree: tuple[Path, list[str]]) -> None:
    root, paths = tree
    rows = ctags_symbols(root, paths)
    assert find(rows, "cmd/server.go", "Server") == SymbolRow("cmd/server.go", "Server", "struct", 3, 5, "main", "Go")
    assert find(rows, "cmd/server.go", "Start") == SymbolRow("cmd/server.go", "Start", "func", 7, 9, "main.Server", "Go")
    assert find(rows, "src/lib.rs", "norm") == SymbolRow("src/lib.rs", "norm", "method", 3, None, "Point", "Rust")


def test_ctags_symbols_markdown_headings(tree: tuple[Path, list[str]]) -> None:
    root, paths = tree
    rows = ctags_symbols(root, paths)
    assert find(rows, "docs/guide.md", "Guide") == SymbolRow("docs/guide.md", "Guide", "chapter", 1, 5, "", "Markdown")
    assert find(rows, "docs/guide.md", "Install") == SymbolRow(
        "docs/guide.md", "Install", "section", 3, 5, "Guide", "Markdown")


def test_ctags_symbols_every_path_as_given(tree: tuple[Path, list[str]]) -> None:
    root, paths = tree
    rows = ctags_symbols(root, paths)
    assert {row.path for row in rows} == set(paths)


@pytest.mark.parametrize("name", ["with space.py", "-dash.py", "--version.py", "ünïcødé ☃.py", " leading.py",
                                  "dir with space/-x.py"])
def test_ctags_symbols_odd_file_names(tmp_path: Path, name: str) -> None:
    write(tmp_path, {name: "def odd():\n    pass\n"})
    assert ctags_symbols(tmp_path, [name]) == [SymbolRow(name, "odd", "function", 1, 2, "", "Python")]


def test_ctags_symbols_empty_list(tmp_path: Path) -> None:
    assert ctags_symbols(tmp_path, []) == []


def test_ctags_symbols_missing_path_skipped(tree: tuple[Path, list[str]]) -> None:
    root, _ = tree
    rows = ctags_symbols(root, ["gone.py", "app/models.py", "nowhere/else.js"])
    assert {row.path for row in rows} == {"app/models.py"}
    assert len(rows) == 5


def test_ctags_symbols_skips_names_a_file_list_cannot_carry(tmp_path: Path) -> None:
    write(tmp_path, {"new\nline.py": "a = 1\n", "trailing.py ": "b = 1\n", "trailing.py": "c = 1\n"})
    rows = ctags_symbols(tmp_path, ["new\nline.py", "trailing.py ", "trailing.py"])
    assert rows == [SymbolRow("trailing.py", "c", "variable", 1, None, "", "Python")]


def test_ctags_symbols_ignores_the_projects_ctags_options(tmp_path: Path) -> None:
    write(tmp_path, {".ctags.d/evil.ctags": "--kinds-Python=-c\n", "a.py": "class Kept:\n    pass\n"})
    assert [row.name for row in ctags_symbols(tmp_path, ["a.py"])] == ["Kept"]


def test_ctags_symbols_in_batches(tree: tuple[Path, list[str]], monkeypatch: pytest.MonkeyPatch) -> None:
    root, paths = tree
    expected = ctags_symbols(root, paths)
    monkeypatch.setattr(symbols, "BATCH_SIZE", 2)
    assert ctags_symbols(root, paths) == expected


def test_ctags_symbols_timeout_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(symbols, "CTAGS", fake_ctags(tmp_path, "exec sleep 30"))
    with pytest.raises(SymbolsError, match="timed out"):
        ctags_symbols(tmp_path, ["a.py"], timeout=0.5)


def test_ctags_symbols_failure_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(symbols, "CTAGS", fake_ctags(tmp_path, "echo boom >&2; exit 3"))
    with pytest.raises(SymbolsError, match="status 3: boom"):
        ctags_symbols(tmp_path, ["a.py"])


def test_ctags_symbols_skips_pseudo_tags_and_malformed_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    output = "\n".join([
        '{"_type": "ptag", "name": "JSON_OUTPUT_VERSION", "path": "0.0"}',
        "not json at all",
        '{"_type": "tag", "name": "ok", "path": "./a.py", "line": 3, "kind": "function", "end": 4}',
        '{"_type": "tag", "name": "no_line", "path": "./a.py", "kind": "function"}',
        '{"_type": "tag", "name": "elsewhere", "path": "./other.py", "line": 1, "kind": "function"}',
        '{"_type": "tag", "name": "' + "n" * 300 + '", "path": "./a.py", "line": 5, "kind": "chapter"}',
        '["a", "list"]',
        '{"_type": "tag", "name": "trunc',
    ])
    (tmp_path / "out.jsonl").write_text(output + "\n")
    monkeypatch.setattr(symbols, "CTAGS", fake_ctags(tmp_path, f"cat '{tmp_path / 'out.jsonl'}'"))
    assert ctags_symbols(tmp_path, ["a.py"]) == [SymbolRow("a.py", "ok", "function", 3, 4, "", "")]


@pytest.mark.parametrize("version", ["Exuberant Ctags 5.8, Copyright (C) 1996-2009", "Universal Ctags 5.9.0 (no json)"])
def test_ctags_symbols_refuses_other_ctags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, version: str) -> None:
    monkeypatch.setattr(symbols, "CTAGS", fake_ctags(tmp_path, "exit 0", version=version))
    assert not ctags_available()
    with pytest.raises(SymbolsError, match="universal-ctags"):
        ctags_symbols(tmp_path, ["a.py"])


def test_ctags_symbols_missing_ctags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(symbols, "CTAGS", str(tmp_path / "no-ctags-here"))
    assert not ctags_available()
    with pytest.raises(SymbolsError, match="universal-ctags"):
        ctags_symbols(tmp_path, ["a.py"])

"""The tool registry against real files in a project folder, a real index (rescan), real shell jobs in
the test's own thread, and a real streams Job as the run's event log."""

import json
import os
import subprocess
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from jsonschema import Draft202012Validator

from accounts.models import User, Workspace
from agent import tools
from agent.tools import REGISTRY, ToolContext, mcp_tools, openai_tools, tool_call
from api.errors import Conflict
from projects.models import Project
from projects.services import project_rescan
from shell.runner import group_members
from streams.models import Event, Job
from streams.services import event_append, job_create

pytestmark = pytest.mark.django_db(transaction=True)

APP_PY = '''import os


class Greeter:
    """Says hello."""

    def greet(self, name):
        return f"hello {name}"


def main():
    print(Greeter().greet("world"))
'''

CALC_TESTS = '''def test_adds():
    assert 1 + 2 == 3


def test_subtracts():
    assert 5 - 1 == 3, "value should be three"
'''


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder outside every project, which no tool may read or write."""
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "secret.txt").write_text("outside the project\n")
    return folder


@pytest.fixture
def tree(outside: Path) -> Path:
    root = Path(settings.KF_PROJECTS_ROOT) / f"ag-{uuid.uuid4().hex[:10]}"
    (root / "src").mkdir(parents=True)
    (root / "src" / "app.py").write_text(APP_PY)
    (root / "notes.txt").write_text("one\ntwo\nthree\nfour\nfive\n")
    (root / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00binary")
    (root / "tests").mkdir()
    (root / "tests" / "test_calc.py").write_text(CALC_TESTS)
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    with (root / ".git" / "config").open("a") as config:
        config.write('[remote "origin"]\n\turl = https://token@example.com/repo.git\n')
    (root / "passwd").symlink_to("/etc/passwd")
    (root / "out").symlink_to(outside)  # a folder link leading out of the project
    (root / "inner").symlink_to(root / "src")  # a folder link that stays inside
    (root / "gitdir").symlink_to(root / ".git")  # … and one into .git
    return root


@pytest.fixture
def project(owner: User, team: Workspace, tree: Path) -> Project:
    return Project.objects.create(workspace=team, name=tree.name, root=str(tree.resolve()),
                                  source=Project.Source.PATH, created_by=owner)


class Run:
    """The loop's side of a ToolContext: a real agent Job as the event log, and counters."""

    def __init__(self, owner: User, project: Project) -> None:
        self.job = job_create(kind="agent", owner=owner, workspace=project.workspace, project_id=project.pk)
        self.before_write_calls = 0
        self.on_before_write: Any = None
        self.cancel = threading.Event()
        self.ctx = ToolContext(user=owner, project=project, job_id=self.job.pk, emit=self.emit,
                               before_write=self.before_write, secrets_mask=[],
                               should_cancel=self.cancel.is_set)

    def emit(self, type: str, data: dict[str, Any]) -> None:
        event_append(job_id=self.job.pk, type=type, data=data)

    def before_write(self) -> None:
        self.before_write_calls += 1
        if self.on_before_write:
            self.on_before_write()

    def call(self, name: str, arguments: Any) -> tools.ToolResult:
        return tool_call(self.ctx, name, arguments if isinstance(arguments, str) else json.dumps(arguments))

    def events(self, type: str) -> list[dict[str, Any]]:
        return list(Event.objects.filter(job_id=self.job.pk, type=type).order_by("seq").values_list("data", flat=True))


@pytest.fixture
def run(owner: User, project: Project) -> Run:
    return Run(owner, project)


def rescan_now(project: Project, user: User) -> None:
    job = job_create(kind="rescan", owner=user, workspace=project.workspace, project_id=project.pk)
    project_rescan(job_id=job.pk)


def processes_with(text: str) -> list[int]:
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                cmdline = Path(entry.path, "cmdline").read_bytes().replace(b"\x00", b" ").decode(errors="replace")
                state = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if cmdline.startswith(text) and state not in ("Z", "X"):
                found.append(int(entry.name))
    return found


# --- the registry --------------------------------------------------------------------------------

def test_registry_serves_the_same_tools_to_openai_and_mcp():
    names = {"list_dir", "read_file", "search", "symbols", "write_file", "edit_file", "run_command", "run_tests",
             "report_finding"}
    assert set(REGISTRY) == names
    assert {t["function"]["name"] for t in openai_tools()} == names
    for entry in openai_tools():
        assert entry["type"] == "function" and entry["function"]["description"]
        schema = entry["function"]["parameters"]
        Draft202012Validator.check_schema(schema)
        assert schema["type"] == "object" and schema["additionalProperties"] is False
        assert set(schema["required"]) <= set(schema["properties"])
    for entry in mcp_tools():
        assert entry["inputSchema"] == REGISTRY[entry["name"]].input_schema
        assert entry["annotations"]["readOnlyHint"] is not REGISTRY[entry["name"]].mutates
    assert {t.name for t in REGISTRY.values() if t.mutates} == {"write_file", "edit_file", "run_command", "run_tests"}


# --- bad calls -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "arguments", "expected"), [
    ("read_file", '{"path": "notes.txt"', "not valid JSON"),
    ("read_file", "[1, 2]", "must be a JSON object"),
    ("read_file", "{}", "'path' is a required property"),
    ("read_file", '{"path": "notes.txt", "color": "red"}', "'color' was unexpected"),
    ("read_file", '{"path": 5}', "path: 5 is not of type 'string'"),
    ("read_file", '{"path": "notes.txt", "start_line": "2"}', "start_line: '2' is not of type 'integer'"),
    ("read_file", '{"path": "notes.txt", "start_line": 0}', "start_line: 0 is less than the minimum of 1"),
    ("read_file", '{"path": "notes.txt", "start_line": true}', "is not of type 'integer'"),
    ("edit_file", '{"path": "notes.txt", "search": "one"}', "'replace' is a required property"),
    ("report_finding", '{"path": "notes.txt", "line": 1, "rule": "r", "severity": "fatal", "message": "m"}',
     "'fatal' is not one of"),
    ("write_file", '{"path": "a.txt", "content": "\\ud800"}', "lone surrogate"),
    ("no_such_tool", "{}", "Unknown tool 'no_such_tool'. Available tools: list_dir"),
])
def test_bad_calls_come_back_as_errors_for_the_model(run, name, arguments, expected):
    result = run.call(name, arguments)
    assert result.ok is False and expected in result.content, result.content
    assert run.before_write_calls == 0
    assert not Path(run.ctx.project.root, "a.txt").exists()


def test_a_missing_field_error_names_the_expected_fields(run):
    result = run.call("edit_file", {"path": "notes.txt"})
    assert not result.ok and "Expected {path, search, replace, count?}" in result.content


def test_empty_arguments_mean_no_arguments(run):
    result = run.call("list_dir", "")
    assert result.ok and "notes.txt" in result.content


# --- reads ---------------------------------------------------------------------------------------

def test_list_dir_lists_one_folder_without_git_or_links_leading_out(run):
    result = run.call("list_dir", {"path": "."})
    assert result.ok
    names = [e["name"] for e in result.data["entries"]]
    assert names[:4] == ["gitdir", "inner", "src", "tests"]  # folders first
    assert "notes.txt" in names and "passwd" not in names and "out" not in names and ".git" not in names
    assert "src/" in result.content and "notes.txt  (24 bytes)" in result.content
    sub = run.call("list_dir", {"path": "src"})
    assert sub.ok and [e["path"] for e in sub.data["entries"]] == ["src/app.py"]


@pytest.mark.parametrize("path", ["..", "../..", "/etc", "out", "src/../..", ".git", "nowhere"])
def test_list_dir_stays_inside_the_project(run, path):
    result = run.call("list_dir", {"path": path})
    assert result.ok is False
    assert "secret.txt" not in result.content and "passwd" not in result.content


def test_read_file_numbers_lines_and_reads_a_range(run):
    whole = run.call("read_file", {"path": "notes.txt"})
    assert whole.ok and whole.content.splitlines()[1:] == ["1\tone", "2\ttwo", "3\tthree", "4\tfour", "5\tfive"]
    part = run.call("read_file", {"path": "notes.txt", "start_line": 2, "end_line": 3})
    assert part.ok and part.content.splitlines()[1:] == ["2\ttwo", "3\tthree"]
    assert part.data == {"path": "notes.txt", "total_lines": 5, "start_line": 2, "end_line": 3,
                         "sha256": whole.data["sha256"]}
    tail = run.call("read_file", {"path": "notes.txt", "start_line": 4, "end_line": 99})
    assert tail.ok and tail.content.splitlines()[1:] == ["4\tfour", "5\tfive"]
    past = run.call("read_file", {"path": "notes.txt", "start_line": 6})
    assert not past.ok and "has 5 lines" in past.content
    backwards = run.call("read_file", {"path": "notes.txt", "start_line": 3, "end_line": 2})
    assert not backwards.ok and "end_line" in backwards.content


def test_read_file_through_a_link_inside_the_project(run):
    result = run.call("read_file", {"path": "inner/app.py"})
    assert result.ok and "class Greeter" in result.content


@pytest.mark.parametrize(("path", "expected"), [
    ("../outside/secret.txt", "'..'"),
    ("/etc/passwd", "relative to the project root"),
    ("passwd", "outside the project root"),
    ("out/secret.txt", "outside the project root"),
    (".git/config", ".git"),
    ("src", "directory"),
    ("missing.txt", "No such file"),
    ("notes.txt\u0000", "NUL"),
])
def test_read_file_refuses_paths_out_of_the_project(run, path, expected):
    result = run.call("read_file", {"path": path})
    assert result.ok is False and expected in result.content, result.content
    assert "outside the project\n" not in result.content and "root:" not in result.content and "token" not in result.content


def test_read_file_refuses_binary_files(run):
    result = run.call("read_file", {"path": "logo.png"})
    assert result.ok is False and "binary" in result.content and "PNG" not in result.content


def test_a_long_read_is_cut_at_a_line_with_where_to_read_on(run, project):
    Path(project.root, "long.txt").write_text("".join(f"line {n} {'x' * 90}\n" for n in range(1, 2001)))
    result = run.call("read_file", {"path": "long.txt"})
    assert result.ok and len(result.content) <= tools.OUTPUT_MAX_CHARS
    last = result.data["end_line"]
    assert 100 < last < 2000
    assert result.content.splitlines()[-2].lstrip().startswith(f"{last}\tline {last} ")
    assert f"cut at line {last}: {2000 - last} more lines in the range; read on with start_line={last + 1}" in result.content
    more = run.call("read_file", {"path": "long.txt", "start_line": last + 1})
    assert more.ok and more.content.splitlines()[1].lstrip().startswith(f"{last + 1}\tline {last + 1} ")


def test_search_and_symbols_read_the_index(run, project, owner):
    rescan_now(project, owner)
    found = run.call("search", {"query": "greet"})
    assert found.ok
    assert [(i["path"], i["line"]) for i in found.data["items"]] == [("src/app.py", 7), ("src/app.py", 12)]
    assert "src/app.py:7:9:     def greet(self, name):" in found.content
    limited = run.call("search", {"query": "greet", "limit": 1})
    assert limited.ok and limited.data["truncated"] is True and "more matches" in limited.content
    regex = run.call("search", {"query": r"def \w+\(", "regex": True, "glob": "src/*.py"})
    assert regex.ok and len(regex.data["items"]) == 2
    none = run.call("search", {"query": "GREET", "case": True})
    assert none.ok and none.data["items"] == [] and "No matches" in none.content
    bad = run.call("search", {"query": "(", "regex": True})
    assert bad.ok is False and "search failed" in bad.content

    exact = run.call("symbols", {"name": "Greeter", "mode": "exact"})
    assert exact.ok and [(s["kind"], s["path"], s["line"]) for s in exact.data["items"]] == [("class", "src/app.py", 4)]
    prefix = run.call("symbols", {"name": "gre"})
    assert prefix.ok and [s["name"] for s in prefix.data["items"]] == ["greet"]
    sub = run.call("symbols", {"name": "ai", "mode": "substring"})
    assert sub.ok and "main" in [s["name"] for s in sub.data["items"]]
    assert run.call("symbols", {"name": "x", "mode": "fuzzy"}).ok is False
    assert run.before_write_calls == 0


# --- writes --------------------------------------------------------------------------------------

def test_write_file_creates_folders_and_emits_the_diff(run, project):
    result = run.call("write_file", {"path": "pkg/new/mod.py", "content": "A = 1\nB = 2\n"})
    assert result.ok, result.content
    assert Path(project.root, "pkg/new/mod.py").read_text() == "A = 1\nB = 2\n"
    assert result.data["created"] is True and result.data["before_sha256"] is None
    [event] = run.events("file_changed")
    assert event["path"] == "pkg/new/mod.py"
    assert event["diff"] == "--- /dev/null\n+++ b/pkg/new/mod.py\n@@ -0,0 +1,2 @@\n+A = 1\n+B = 2\n"
    again = run.call("write_file", {"path": "notes.txt", "content": "one\n2\nthree\nfour\nfive"})
    assert again.ok and again.data["created"] is False
    diff = run.events("file_changed")[1]["diff"]
    assert diff.startswith("--- a/notes.txt\n+++ b/notes.txt\n")
    assert "-two\n+2\n" in diff and "-five\n+five\n\\ No newline at end of file\n" in diff
    assert run.before_write_calls == 2
    # Race-safe writes leave no temporary files behind.
    assert sorted(p.name for p in Path(project.root).iterdir() if p.name.startswith(".")) == [".git"]


def test_write_file_keeps_the_file_mode(run, project):
    script = Path(project.root, "run.sh")
    script.write_text("echo hi\n")
    script.chmod(0o750)
    assert run.call("write_file", {"path": "run.sh", "content": "echo bye\n"}).ok
    assert script.read_text() == "echo bye\n" and script.stat().st_mode & 0o777 == 0o750


def test_writing_the_same_content_changes_nothing(run):
    result = run.call("write_file", {"path": "notes.txt", "content": "one\ntwo\nthree\nfour\nfive\n"})
    assert result.ok and result.data["changed"] is False and run.events("file_changed") == []


@pytest.mark.parametrize(("path", "expected"), [
    ("../outside/new.txt", "'..'"),
    ("/tmp/kf-agent-abs.txt", "relative to the project root"),
    ("out/new.txt", "outside the project root"),
    ("out/deeper/new.txt", "outside the project root"),
    ("passwd", "symbolic link"),
    (".git/hooks/pre-commit", ".git"),
    ("gitdir/hooks/pre-commit", "leads into a .git folder"),
    ("src", "folder"),
    ("notes.txt/x", "is a file"),
    ("a\u0000b", "NUL"),
])
def test_write_file_refuses_paths_out_of_the_project(run, outside, path, expected):
    before = sorted(p.name for p in outside.iterdir())
    result = run.call("write_file", {"path": path, "content": "pwned\n"})
    assert result.ok is False and expected in result.content, result.content
    assert sorted(p.name for p in outside.iterdir()) == before
    assert not Path("/tmp/kf-agent-abs.txt").exists()
    assert Path("/etc/passwd").read_text() != "pwned\n"
    assert run.events("file_changed") == []


def test_write_file_size_cap(run, project, settings):
    settings.KF_FILE_MAX_BYTES = 1000
    result = run.call("write_file", {"path": "notes.txt", "content": "x" * 1001})
    assert result.ok is False and "1001 bytes" in result.content and "over 1000 bytes" in result.content
    assert result.data["error"] == "payload_too_large"
    assert Path(project.root, "notes.txt").read_text() == "one\ntwo\nthree\nfour\nfive\n"
    assert run.call("write_file", {"path": "notes.txt", "content": "x" * 1000}).ok


def test_write_file_refuses_nul_content(run, project):
    result = run.call("write_file", {"path": "n.txt", "content": "a\u0000b"})
    assert result.ok is False and "NUL" in result.content and not Path(project.root, "n.txt").exists()


def test_edit_file_replaces_one_exact_block(run, project):
    result = run.call("edit_file", {"path": "src/app.py", "search": '        return f"hello {name}"\n',
                                    "replace": '        return f"hi {name}!"\n'})
    assert result.ok, result.content
    assert 'return f"hi {name}!"' in Path(project.root, "src/app.py").read_text()
    [event] = run.events("file_changed")
    assert event["path"] == "src/app.py"
    assert '-        return f"hello {name}"\n+        return f"hi {name}!"\n' in event["diff"]
    assert event["diff"].startswith("--- a/src/app.py\n+++ b/src/app.py\n@@ ")
    assert event["before_sha256"] != event["after_sha256"]


def test_edit_file_without_a_match_quotes_the_closest_lines(run, project):
    result = run.call("edit_file", {"path": "src/app.py", "search": "    def greet(self, person):\n",
                                    "replace": "    def greet(self, who):\n"})
    assert result.ok is False and "not found" in result.content
    assert "7\t    def greet(self, name):" in result.content
    assert Path(project.root, "src/app.py").read_text() == APP_PY and run.events("file_changed") == []
    spaces = run.call("edit_file", {"path": "src/app.py", "search": "def greet(self,  name):",
                                    "replace": "def greet(self, who):"})
    assert spaces.ok is False and "whitespace" in spaces.content


def test_edit_file_with_several_matches_asks_for_context_or_count(run, project):
    Path(project.root, "dup.txt").write_text("x = 1\ny = 2\nx = 1\n")
    several = run.call("edit_file", {"path": "dup.txt", "search": "x = 1", "replace": "x = 3"})
    assert several.ok is False and "occurs 2 times" in several.content and "count" in several.content
    wrong = run.call("edit_file", {"path": "dup.txt", "search": "x = 1", "replace": "x = 3", "count": 3})
    assert wrong.ok is False and "occurs 2 times" in wrong.content
    assert Path(project.root, "dup.txt").read_text() == "x = 1\ny = 2\nx = 1\n"
    both = run.call("edit_file", {"path": "dup.txt", "search": "x = 1", "replace": "x = 3", "count": 2})
    assert both.ok and Path(project.root, "dup.txt").read_text() == "x = 3\ny = 2\nx = 3\n"
    unique = run.call("edit_file", {"path": "dup.txt", "search": "y = 2\nx = 3", "replace": "y = 2\nx = 4"})
    assert unique.ok and Path(project.root, "dup.txt").read_text() == "x = 3\ny = 2\nx = 4\n"


def test_edit_file_keeps_windows_line_endings(run, project):
    Path(project.root, "win.txt").write_bytes(b"alpha\r\nbeta\r\ngamma\r\n")
    result = run.call("edit_file", {"path": "win.txt", "search": "alpha\nbeta\n", "replace": "alpha\nBETA\n"})
    assert result.ok and Path(project.root, "win.txt").read_bytes() == b"alpha\r\nBETA\r\ngamma\r\n"


@pytest.mark.parametrize(("path", "expected"), [
    ("logo.png", "binary"), ("missing.txt", "No such file"), ("passwd", "symbolic link"),
    ("out/secret.txt", "outside the project root"), ("../outside/secret.txt", "'..'"),
])
def test_edit_file_refuses_what_it_cannot_edit(run, outside, path, expected):
    result = run.call("edit_file", {"path": path, "search": "a", "replace": "b"})
    assert result.ok is False and expected in result.content, result.content
    assert (outside / "secret.txt").read_text() == "outside the project\n"


def test_before_write_runs_before_each_mutation_and_never_for_reads(run, project, owner):
    rescan_now(project, owner)
    seen: list[str] = []
    run.on_before_write = lambda: seen.append(Path(project.root, "notes.txt").read_text())
    for name, arguments in [("list_dir", {}), ("read_file", {"path": "notes.txt"}), ("search", {"query": "two"}),
                            ("symbols", {"name": "main"}),
                            ("report_finding", {"path": "notes.txt", "line": 2, "rule": "r", "severity": "info",
                                                "message": "m"})]:
        assert run.call(name, arguments).ok, name
    assert run.before_write_calls == 0
    assert run.call("write_file", {"path": "notes.txt", "content": "new\n"}).ok
    assert run.call("edit_file", {"path": "notes.txt", "search": "new", "replace": "newer"}).ok
    assert run.call("run_command", {"command": "true"}).ok
    assert run.before_write_calls == 3
    # Each call saw the file as it was before that mutation.
    assert seen == ["one\ntwo\nthree\nfour\nfive\n", "new\n", "newer\n"]


def test_a_failing_snapshot_stops_the_write(run, project):
    def refuse() -> None:
        raise Conflict("The snapshot could not be taken.")

    run.on_before_write = refuse
    result = run.call("write_file", {"path": "notes.txt", "content": "lost\n"})
    assert result.ok is False and "snapshot could not be taken" in result.content
    assert Path(project.root, "notes.txt").read_text() == "one\ntwo\nthree\nfour\nfive\n"


# --- findings ------------------------------------------------------------------------------------

def test_report_finding_emits_a_finding(run):
    finding = {"path": "src/app.py", "line": 8, "rule": "greeting-format", "severity": "warning",
               "message": "Use a translation."}
    result = run.call("report_finding", finding)
    assert result.ok and run.events("finding") == [finding]
    for path in ("missing.py", "../outside/secret.txt", "out/secret.txt", "passwd", "src"):
        bad = run.call("report_finding", {**finding, "path": path})
        assert bad.ok is False, path
    assert len(run.events("finding")) == 1


# --- secrets -------------------------------------------------------------------------------------

def test_secret_values_are_masked_in_results_and_events(run, project):
    run.ctx.secrets_mask = ["hunter2-value"]
    Path(project.root, "conf.txt").write_text("password = hunter2-value\n")
    read = run.call("read_file", {"path": "conf.txt"})
    assert read.ok and "hunter2-value" not in read.content and "password = ••••" in read.content
    edit = run.call("edit_file", {"path": "conf.txt", "search": "password", "replace": "token"})
    assert edit.ok and "hunter2-value" not in json.dumps(run.events("file_changed"))
    missing = run.call("edit_file", {"path": "conf.txt", "search": "token = hunter2-valuX", "replace": "x"})
    assert missing.ok is False and "hunter2-value" not in missing.content
    shell = run.call("run_command", {"command": "cat conf.txt"})
    assert shell.ok and "token = ••••" in shell.content and "hunter2-value" not in json.dumps(shell.data)
    # The shell job's own log (followed on its own stream) is masked too, not only the tool result.
    logged = Event.objects.filter(job_id=shell.data["shell_job_id"]).values_list("data", flat=True)
    assert "token = ••••" in json.dumps(list(logged), ensure_ascii=False)
    assert "hunter2-value" not in json.dumps(list(logged))


# --- commands ------------------------------------------------------------------------------------

def test_run_command_returns_exit_code_and_output_as_a_shell_job(run, project, owner):
    (Path(project.root) / "src" / "marker.txt").write_text("found me\n")
    result = run.call("run_command", {"command": "cat marker.txt; echo oops >&2; exit 3", "cwd": "src"})
    assert result.ok is True  # it ran: the exit code is for the model to judge
    assert result.content.splitlines() == ["$ cat marker.txt; echo oops >&2; exit 3   (in src)", "found me", "oops",
                                           result.content.splitlines()[-1]]
    assert result.content.splitlines()[-1].startswith("[exit code 3; ")
    assert result.data["exit_code"] == 3 and result.data["status"] == "failed"
    job = Job.objects.get(pk=result.data["shell_job_id"])
    assert job.kind == "shell" and job.owner == owner and job.project_id == project.pk
    assert job.params["agent_job_id"] == run.job.pk and job.params["cwd"] == "src"
    types = list(job.events.order_by("seq").values_list("type", flat=True))
    assert types[0] == "job" and types[1] == "status" and types[-1] == "end" and "stdout" in types
    assert run.events("stdout") == []  # the command's output is in its own log, not the run's


@pytest.mark.parametrize(("arguments", "expected"), [
    ({"command": "pwd", "cwd": ".."}, "'..'"),
    ({"command": "pwd", "cwd": "/tmp"}, "absolute path"),
    ({"command": "pwd", "cwd": "out"}, "outside the project"),
    ({"command": "pwd", "timeout_s": 10 ** 9}, "greater than the maximum of"),
    ({"command": "   "}, "command is required"),
])
def test_run_command_refuses_bad_input(run, arguments, expected):
    result = run.call("run_command", arguments)
    assert result.ok is False and expected in result.content, result.content
    assert not Job.objects.filter(kind="shell").exists()


def test_run_command_output_is_cut_with_a_note(run):
    result = run.call("run_command", {"command": "seq 1 30000"})
    total = sum(len(f"{n}\n") for n in range(1, 30001))
    assert result.ok and len(result.content) < total
    assert "characters cut here" in result.content
    assert result.content.startswith("$ seq 1 30000\n1\n2\n3\n")
    assert "\n30000\n[exit code 0; " in result.content  # the end (with the exit code) is kept


def test_run_command_past_its_timeout_is_killed(run):
    result = run.call("run_command", {"command": "echo start; sleep 60", "timeout_s": 1})
    assert result.ok is False and result.data["timed_out"] is True
    assert "start" in result.content and "timed out after 1 s" in result.content


def test_cancelling_the_run_kills_the_command_process_group(run):
    marker = str(400000 + int.from_bytes(os.urandom(2), "big"))
    pgids: list[int] = []

    def should_cancel() -> bool:
        pids = processes_with(f"sleep {marker}")
        if len(pids) == 2:  # the command and its background child are both running
            pgids.append(os.getpgid(pids[0]))
            return True
        return False

    run.ctx.should_cancel = should_cancel
    # The time limit only keeps a broken cancel from hanging the suite; the cancel comes far sooner.
    result = run.call("run_command", {"command": f"sleep {marker} & sleep {marker}; echo never", "timeout_s": 120})
    assert result.ok is False and "cancelled" in result.content
    assert "never" not in result.content.split("\n", 1)[1]  # after the command line
    assert result.data["status"] == "cancelled"
    assert Job.objects.get(pk=result.data["shell_job_id"]).status == "cancelled"
    assert pgids and group_members(pgids[0]) == [] and processes_with(f"sleep {marker}") == []


def test_a_run_cancelled_before_the_command_starts_runs_nothing(run, project):
    run.cancel.set()
    result = run.call("run_command", {"command": "touch ran.txt"})
    assert result.ok is False and result.data["status"] == "cancelled"
    assert not Path(project.root, "ran.txt").exists()


def test_run_tests_reports_counts_and_failures(run):
    result = run.call("run_tests", {"args": ["-q", "tests"]})
    assert result.ok is True, result.content
    assert result.data["runner"] == "pytest" and result.data["exit_code"] == 1
    assert (result.data["passed"], result.data["failed"]) == (1, 1)
    assert "Tests: 1 passed, 1 failed" in result.content
    assert "FAILED tests.test_calc::test_subtracts (tests/test_calc.py:6)" in result.content
    assert "value should be three" in result.content
    job = Job.objects.get(pk=result.data["shell_job_id"])
    assert job.kind == "test" and job.params["runner"] == "pytest" and job.params["args"] == ["-q", "tests"]
    assert run.before_write_calls == 1


def test_run_tests_refuses_an_unknown_runner_and_folders_out_of_the_project(run):
    result = run.call("run_tests", {"runner": "maven"})
    assert result.ok is False and "'maven' is not one of" in result.content
    for cwd, expected in (("..", "'..'"), ("out", "outside the project"), ("/tmp", "absolute path")):
        escaped = run.call("run_tests", {"cwd": cwd})
        assert escaped.ok is False and expected in escaped.content, escaped.content
    assert not Job.objects.filter(kind="test").exists()

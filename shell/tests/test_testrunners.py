"""Runner detection, the commands built for each runner, and reading their results (JUnit XML and
go/cargo output). The end-to-end runs of real test suites are in test_commands_test.py."""

import json
import os
import shlex
from pathlib import Path

import pytest

from api.errors import InvalidRequest
from shell.testrunners import detect_runner, parse_junit, parse_output, runner_command

PATH = os.environ.get("PATH", "/usr/bin:/bin")


def write(root: Path, files: dict[str, str]) -> Path:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    return root


@pytest.mark.parametrize("files,runner,reason", [
    ({"pytest.ini": "[pytest]\n"}, "pytest", "pytest.ini"),
    ({"pyproject.toml": "[tool.pytest.ini_options]\naddopts = '-q'\n"}, "pytest", "pyproject.toml [tool.pytest]"),
    ({"setup.cfg": "[metadata]\nname = x\n[tool:pytest]\n"}, "pytest", "setup.cfg [tool:pytest]"),
    ({"tox.ini": "[tox]\n[pytest]\n"}, "pytest", "tox.ini [pytest]"),
    ({"conftest.py": ""}, "pytest", "conftest.py"),
    ({"src/pkg/tests/test_things.py": ""}, "pytest", "test file src/pkg/tests/test_things.py"),
    ({"package.json": json.dumps({"scripts": {"test": "node --test"}})}, "npm", "package.json scripts.test"),
    ({"go.mod": "module example.com/x\n"}, "go", "go.mod"),
    ({"Cargo.toml": "[package]\nname = 'x'\n"}, "cargo", "Cargo.toml"),
    ({"Makefile": "build:\n\tcc x.c\n\ntest: build\n\t./run-tests\n"}, "make", "Makefile test target"),
    ({"GNUmakefile": "test::\n\ttrue\n"}, "make", "GNUmakefile test target"),
])
def test_detects_each_runner(tmp_path, files, runner, reason):
    detected = detect_runner(write(tmp_path, files))
    assert detected is not None and (detected.runner, detected.reason) == (runner, reason)


@pytest.mark.parametrize("files", [
    {},
    {"README.md": "tests welcome"},
    {"pyproject.toml": "[project]\nname = 'x'\n"},  # a Python project without pytest settings or tests
    {"package.json": json.dumps({"scripts": {"test": 'echo "Error: no test specified" && exit 1'}})},
    {"package.json": json.dumps({"scripts": {"build": "tsc"}})},
    {"package.json": "{not json"},
    {"Makefile": "TEST := 1\ntest := yes\nbuild:\n\ttrue\n"},  # variables, not a target
    {"node_modules/lib/test_x.py": ""},  # vendored folders are not the project's tests
    {"a/b/c/d/test_deep.py": ""},  # deeper than the scan goes
])
def test_detects_nothing_where_there_is_no_runner(tmp_path, files):
    assert detect_runner(write(tmp_path, files)) is None


def test_detection_order_is_pytest_npm_go_cargo_make(tmp_path):
    write(tmp_path, {"Makefile": "test:\n\ttrue\n", "Cargo.toml": "", "go.mod": "",
                     "package.json": json.dumps({"scripts": {"test": "jest"}}), "conftest.py": ""})
    order = []
    for marker in ("conftest.py", "package.json", "go.mod", "Cargo.toml", "Makefile"):
        order.append(detect_runner(tmp_path).runner)
        (tmp_path / marker).unlink()
    assert order == ["pytest", "npm", "go", "cargo", "make"]
    assert detect_runner(tmp_path) is None


def test_no_runner_is_a_clear_invalid_request(tmp_path):
    with pytest.raises(InvalidRequest) as exc:
        runner_command(root=tmp_path, runner=None, args=[], junit_path="/j.xml", path=PATH)
    assert "runner" in exc.value.details and "No test runner found" in exc.value.message


def test_an_unknown_runner_or_a_missing_tool_is_refused(tmp_path):
    with pytest.raises(InvalidRequest):
        runner_command(root=tmp_path, runner="rake", args=[], junit_path="/j.xml", path=PATH)
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    with pytest.raises(InvalidRequest) as exc:
        runner_command(root=tmp_path, runner="make", args=[], junit_path="/j.xml", path=str(empty))
    assert "not installed" in exc.value.message


def test_commands_keep_the_junit_plumbing_out_of_the_command_shown(tmp_path):
    write(tmp_path, {"conftest.py": ""})
    cmd, _ = runner_command(root=tmp_path, runner=None, args=["-k", "login and not slow"], junit_path="/x/j.xml",
                          path=PATH)
    assert cmd.command == "python3 -m pytest -k 'login and not slow'"
    assert shlex.split(cmd.env["PYTEST_ADDOPTS"]) == ["--junitxml=/x/j.xml", "-o", "junit_family=xunit1"]
    assert cmd.env["KF_JUNIT_XML"] == "/x/j.xml"
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "python").write_text("")
    (tmp_path / ".venv" / "bin" / "python").chmod(0o755)
    cmd, _ = runner_command(root=tmp_path, runner=None, args=[], junit_path="/x/j.xml", path=PATH)
    assert cmd.argv[0] == ".venv/bin/python"  # the project's own virtualenv
    npm, _ = runner_command(root=tmp_path, runner="npm", args=["--grep", "x"], junit_path="/x/j.xml", path=PATH)
    assert npm.command == "npm test -- --grep x"
    assert "--test-reporter=junit" in npm.env["NODE_OPTIONS"]
    make, _ = runner_command(root=tmp_path, runner="make", args=["V=1"], junit_path="/x/j.xml", path=PATH)
    assert make.command == "make test V=1"


# --- JUnit ---------------------------------------------------------------------------------------

PYTEST_JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites name="pytest tests"><testsuite name="pytest"
errors="1" failures="1" skipped="1" tests="4"><testcase classname="tests.test_a" name="test_ok" file="tests/test_a.py"
line="5" time="0.001" /><testcase classname="tests.test_a" name="test_bad" file="tests/test_a.py" line="8"
time="0.001"><failure message="AssertionError: x should be three&#10;assert 2 == 3">def test_bad():
&gt;       helper(2)

tests/test_a.py:10:
_ _ _ _ _ _

    def helper(x):
&gt;       assert x == 3, "x should be three"
E       AssertionError: x should be three

tests/test_a.py:4: AssertionError</failure></testcase><testcase classname="tests.test_a" name="test_skip"
file="tests/test_a.py" line="11" time="0.000"><skipped type="pytest.skip" message="later">later</skipped></testcase>
<testcase classname="tests.test_a.TestK" name="test_err" file="tests/test_a.py" line="16" time="0.000"><error
message="failed on setup">fixture 'nofixture' not found</error></testcase></testsuite></testsuites>"""


def test_reads_pytest_junit_with_the_failing_line(tmp_path):
    write(tmp_path, {"tests/test_a.py": "\n" * 20})
    junit = tmp_path / "j.xml"
    junit.write_text(PYTEST_JUNIT)
    results = parse_junit(junit, root=tmp_path, runner="pytest")
    assert (results.passed, results.failed, results.skipped, results.errors) == (1, 1, 1, 1)
    bad, err = results.failures
    assert bad.name == "tests.test_a::test_bad" and bad.message.startswith("AssertionError: x should be three")
    assert (bad.path, bad.line) == ("tests/test_a.py", 4)  # where it failed, the innermost frame
    assert err.name == "tests.test_a.TestK::test_err"
    assert (err.path, err.line) == ("tests/test_a.py", 17)  # the test's own line, counted from 1


def test_reads_node_junit_with_the_location_from_the_stack(tmp_path):
    write(tmp_path, {"test/a.test.js": "\n" * 10})
    junit = tmp_path / "j.xml"
    junit.write_text(f"""<?xml version="1.0" encoding="utf-8"?>
<testsuites>
  <testcase name="adds" time="0.002" classname="test"/>
  <testcase name="fails" time="0.002" classname="test" failure="Expected values to be strictly equal:2 !== 3">
    <failure type="testCodeFailure" message="Expected values to be strictly equal:2 !== 3">
AssertionError [ERR_ASSERTION]: Expected values to be strictly equal:
    at TestContext.&lt;anonymous&gt; ({tmp_path}/test/a.test.js:3:28)
    at Test.runInAsyncScope (node:async_hooks:206:9)
    at Test.run (node:internal/test_runner/test:796:25)
    </failure>
  </testcase>
  <testcase name="skipped" time="0.0" classname="test"><skipped type="skipped" message="true"/></testcase>
</testsuites>""")
    results = parse_junit(junit, root=tmp_path, runner="npm")
    assert (results.passed, results.failed, results.skipped, results.errors) == (1, 1, 1, 0)
    (failure,) = results.failures
    assert failure.name == "fails" and (failure.path, failure.line) == ("test/a.test.js", 3)


def test_junit_that_is_missing_broken_or_hostile_is_no_result(tmp_path):
    assert parse_junit(tmp_path / "none.xml", root=tmp_path, runner="make") is None
    broken = tmp_path / "broken.xml"
    broken.write_text("<testsuites><testcase name='x'>")
    assert parse_junit(broken, root=tmp_path, runner="make") is None
    bomb = tmp_path / "bomb.xml"
    entities = "".join(f'<!ENTITY e{i} "{f"&e{i - 1};" * 10}">' for i in range(1, 12))
    bomb.write_text(f'<?xml version="1.0"?><!DOCTYPE t [<!ENTITY e0 "lol">{entities}]>'
                    '<testsuites><testcase name="&e11;"/></testsuites>')
    assert parse_junit(bomb, root=tmp_path, runner="make") is None  # expat refuses the expansion
    outside = tmp_path / "ext.xml"
    outside.write_text('<?xml version="1.0"?><!DOCTYPE t [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
                       '<testsuites><testcase name="&x;"/></testsuites>')
    result = parse_junit(outside, root=tmp_path, runner="make")
    assert result is None or all("root:" not in f.name for f in result.failures)


def test_many_failures_are_capped(tmp_path):
    cases = "".join(f'<testcase name="t{i}"><failure message="m{i}"/></testcase>' for i in range(150))
    junit = tmp_path / "j.xml"
    junit.write_text(f"<testsuite>{cases}</testsuite>")
    results = parse_junit(junit, root=tmp_path, runner="make")
    assert results.failed == 150 and len(results.failures) == 100 and results.failures_truncated


# --- runners' own output -------------------------------------------------------------------------

CARGO_OUTPUT = """
running 3 tests
test tests::ok ... ok
test tests::skipped ... ignored
test tests::bad ... FAILED

failures:

---- tests::bad stdout ----

thread 'tests::bad' (16511) panicked at src/lib.rs:6:24:
assertion `left == right` failed
  left: 2
 right: 3
note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace


failures:
    tests::bad

test result: FAILED. 1 passed; 1 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.00s
"""


def test_reads_cargo_test_output(tmp_path):
    results = parse_output(CARGO_OUTPUT, root=tmp_path, runner="cargo")
    assert (results.passed, results.failed, results.skipped) == (1, 1, 1)
    (failure,) = results.failures
    assert failure.name == "tests::bad" and (failure.path, failure.line) == ("src/lib.rs", 6)
    assert failure.message.startswith("assertion `left == right` failed") and "right: 3" in failure.message
    assert "RUST_BACKTRACE" not in failure.message


GO_OUTPUT = """=== RUN   TestAdd
--- PASS: TestAdd (0.00s)
=== RUN   TestSub
    calc_test.go:14: Sub(3, 1) = 1, want 2
--- FAIL: TestSub (0.00s)
=== RUN   TestSkip
    calc_test.go:18: not yet
--- SKIP: TestSkip (0.00s)
FAIL
FAIL\texample.com/calc\t0.002s
"""


def test_reads_go_test_verbose_output(tmp_path):
    write(tmp_path, {"calc_test.go": "\n" * 30})
    results = parse_output(GO_OUTPUT, root=tmp_path, runner="go")
    assert (results.passed, results.failed, results.skipped) == (1, 1, 1)
    (failure,) = results.failures
    assert failure.name == "TestSub" and (failure.path, failure.line) == ("calc_test.go", 14)
    assert "want 2" in failure.message


def test_output_without_results_is_no_result(tmp_path):
    assert parse_output("make: *** No rule to make target", root=tmp_path, runner="cargo") is None
    assert parse_output("anything", root=tmp_path, runner="make") is None

"""POST /api/shell/test: small real projects run by their real runners (pytest, node's test runner
behind `npm test`, make with a test target that writes JUnit, cargo) through the real task runner."""

import json
import shutil
import uuid
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from accounts.models import Workspace
from secrets_app.masking import MASK
from secrets_app.services import secret_set
from shell.tests.test_commands import finished, make_project, personal, start, text_of
from streams.models import Job

pytestmark = pytest.mark.django_db(transaction=True)

CALC_TESTS = '''import os

import pytest


def check(value):
    assert value == 3, "value should be three"


def test_adds():
    assert 1 + 2 == 3


def test_subtracts():
    check(5 - 1)


@pytest.mark.skip(reason="not yet")
def test_later():
    pass


def test_needs_a_fixture(no_such_fixture):
    pass
'''


def make_tree(files: dict[str, str]) -> Path:
    root = Path(settings.KF_PROJECTS_ROOT) / f"tt-{uuid.uuid4().hex[:10]}"
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    root.mkdir(parents=True, exist_ok=True)
    return root


def run_tests(client: Any, project: Any, **body: Any) -> tuple[Job, dict[str, Any]]:
    job = finished(start(client, {"project_id": project.pk, **body}, path="/api/shell/test"), timeout=120)
    end = job.events.order_by("-seq").first()
    assert end.type == "end"
    return job, end.data


@pytest.fixture
def py_project(owner):
    return make_project(make_tree({"tests/test_calc.py": CALC_TESTS}), personal(owner), owner)


def test_pytest_project_reports_counts_and_failures(py_project, owner, client_for, task_runner):
    job, end = run_tests(client_for(owner), py_project)
    assert job.kind == "test" and job.params["runner"] == "pytest"
    assert job.params["command"] == "python3 -m pytest"  # the JUnit plumbing stays out of it
    assert end["status"] == "failed" and end["exit_code"] == 1 and isinstance(end["duration_ms"], int)
    assert end["runner"] == "pytest" and end["results_from"] == "junit"
    assert (end["passed"], end["failed"], end["skipped"], end["errors"]) == (1, 1, 1, 1)
    failures = {f["name"]: f for f in end["failures"]}
    sub = failures["tests.test_calc::test_subtracts"]
    assert sub["path"] == "tests/test_calc.py" and sub["line"] == 7  # the failing assert, in check()
    assert "value should be three" in sub["message"]
    fixture = failures["tests.test_calc::test_needs_a_fixture"]
    assert fixture["path"] == "tests/test_calc.py" and fixture["line"] == 23
    assert "1 failed, 1 passed, 1 skipped, 1 error" in text_of(job.pk)
    assert not list((Path(py_project.root)).glob("*.xml"))  # nothing written into the project


def test_args_narrow_the_run(py_project, owner, client_for, task_runner):
    job, end = run_tests(client_for(owner), py_project, args="-k adds")
    assert job.params["command"] == "python3 -m pytest -k adds" and job.params["args"] == ["-k", "adds"]
    assert end["status"] == "succeeded" and (end["passed"], end["failed"]) == (1, 0) and end["failures"] == []


def test_failure_messages_are_masked_too(owner, client_for, task_runner):
    value = f"sekret-{uuid.uuid4().hex}"
    tree = make_tree({"test_env.py": "import os\n\ndef test_token():\n    assert os.environ['TOKEN'] == 'x'\n"})
    project = make_project(tree, personal(owner), owner)
    secret_set(user=owner, workspace=project.workspace, name="TOKEN", value=value)
    job, end = run_tests(client_for(owner), project, secrets=["TOKEN"])
    assert end["failed"] == 1
    message = end["failures"][0]["message"]
    assert MASK in message and value not in message
    assert value not in json.dumps(job.result) and value not in text_of(job.pk)


@pytest.mark.skipif(shutil.which("node") is None or shutil.which("npm") is None, reason="node is not installed")
def test_npm_test_with_node_test_runner_reports_from_junit(owner, client_for, task_runner):
    tree = make_tree({
        "package.json": json.dumps({"name": "calc", "version": "1.0.0", "scripts": {"test": "node --test"}}),
        "test/math.test.js": "const test = require('node:test');\nconst assert = require('node:assert');\n"
                             "test('adds', () => assert.strictEqual(1 + 1, 2));\n"
                             "test('fails', () => assert.strictEqual(1 + 1, 3));\n"
                             "test('later', { skip: true }, () => {});\n",
    })
    project = make_project(tree, personal(owner), owner)
    job, end = run_tests(client_for(owner), project)
    assert job.params["command"] == "npm test" and end["runner"] == "npm" and end["results_from"] == "junit"
    assert (end["passed"], end["failed"], end["skipped"], end["errors"]) == (1, 1, 1, 0)
    (failure,) = end["failures"]
    assert failure["name"] == "fails" and failure["path"] == "test/math.test.js" and failure["line"] == 4
    assert "✔ adds" in text_of(job.pk)  # people still get the usual output


MAKEFILE = "build:\n\t@echo building\n\ntest: build\n\t@./run-checks.sh\n"
RUN_CHECKS = """#!/bin/sh
# A test target that writes JUnit where kf asks for it.
cat > "$KF_JUNIT_XML" <<'XML'
<testsuite name="checks">
  <testcase classname="checks" name="lint" />
  <testcase classname="checks" name="format" file="src/main.c" line="12">
    <failure message="line too long">src/main.c:12: line too long</failure>
  </testcase>
  <testcase classname="checks" name="docs"><skipped/></testcase>
</testsuite>
XML
echo "2 checks, 1 failure"
exit 2
"""


def test_make_test_target_that_writes_junit(owner, client_for, task_runner):
    tree = make_tree({"Makefile": MAKEFILE, "run-checks.sh": RUN_CHECKS, "src/main.c": "int main(){}\n" * 20})
    (tree / "run-checks.sh").chmod(0o755)
    project = make_project(tree, personal(owner), owner)
    job, end = run_tests(client_for(owner), project)
    assert job.params["command"] == "make test" and job.params["runner_reason"] == "Makefile test target"
    assert end["status"] == "failed" and end["exit_code"] == 2 and end["results_from"] == "junit"
    assert (end["passed"], end["failed"], end["skipped"], end["errors"]) == (1, 1, 1, 0)
    assert end["failures"] == [{"name": "checks.format", "message": "line too long", "path": "src/main.c",
                                "line": 12}]
    assert "building\n2 checks, 1 failure\n" in text_of(job.pk)


def test_runner_can_be_chosen_and_a_make_target_without_junit_has_no_counts(owner, client_for, task_runner):
    tree = make_tree({"Makefile": "test:\n\t@echo make ran\n", "conftest.py": ""})
    project = make_project(tree, personal(owner), owner)
    job, end = run_tests(client_for(owner), project, runner="make")
    assert end["runner"] == "make" and end["status"] == "succeeded"
    assert end["passed"] is None and end["results_from"] is None and end["failures"] == []
    assert text_of(job.pk) == "make ran\n"


@pytest.mark.skipif(shutil.which("cargo") is None, reason="cargo is not installed")
def test_cargo_test_reports_from_its_output(owner, client_for, task_runner):
    tree = make_tree({
        "Cargo.toml": '[package]\nname = "calc"\nversion = "0.1.0"\nedition = "2021"\n',
        "src/lib.rs": "pub fn add(a: i32, b: i32) -> i32 { a + b }\n\n#[cfg(test)]\nmod tests {\n"
                      "    use super::*;\n    #[test] fn ok() { assert_eq!(add(1, 1), 2); }\n"
                      "    #[test] fn bad() { assert_eq!(add(1, 1), 3); }\n"
                      "    #[test] #[ignore] fn later() {}\n}\n",
    })
    project = make_project(tree, personal(owner), owner)
    job, end = run_tests(client_for(owner), project)
    assert end["runner"] == "cargo" and end["results_from"] == "output", text_of(job.pk, "stderr")[-2000:]
    assert (end["passed"], end["failed"], end["skipped"]) == (1, 1, 1)
    (failure,) = end["failures"]
    assert failure["name"] == "tests::bad" and failure["path"] == "src/lib.rs" and failure["line"] == 7


def test_tests_in_a_subfolder_report_paths_from_the_project_root(owner, client_for, task_runner):
    tree = make_tree({"backend/tests/test_calc.py": CALC_TESTS, "frontend/readme.md": "x"})
    project = make_project(tree, personal(owner), owner)
    _, end = run_tests(client_for(owner), project, cwd="backend")
    sub = next(f for f in end["failures"] if f["name"].endswith("test_subtracts"))
    assert sub["path"] == "backend/tests/test_calc.py"


# --- bad input and access ------------------------------------------------------------------------

def test_no_runner_found_is_a_clear_400(owner, client_for):
    project = make_project(make_tree({"README.md": "nothing to test"}), personal(owner), owner)
    response = client_for(owner).post("/api/shell/test", {"project_id": project.pk}, format="json")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_request" and "runner" in error["details"] and "pytest" in error["message"]
    assert not Job.objects.exists()


@pytest.mark.parametrize("body,field", [
    ({"runner": "rake"}, "runner"),
    ({"args": {"k": "v"}}, "args"),
    ({"args": [1, 2]}, "args"),
    ({"args": "'unbalanced"}, "args"),
    ({"cwd": "../.."}, "cwd"),
    ({"cwd": "/tmp"}, "cwd"),
    ({"timeout_s": -5}, "timeout_s"),
    ({"timeout_s": 999999999}, "timeout_s"),
    ({"secrets": ["NOT_THERE"]}, "secrets"),
])
def test_test_bad_input(py_project, owner, client_for, body, field):
    response = client_for(owner).post("/api/shell/test", {"project_id": py_project.pk, **body}, format="json")
    assert response.status_code == 400, response.content
    assert field in response.json()["error"]["details"]
    assert not Job.objects.exists()


def test_outsiders_viewers_and_keys(py_project, owner, outsider, viewer, team, client_for, task_runner):
    response = client_for(outsider).post("/api/shell/test", {"project_id": py_project.pk}, format="json")
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    team_project = make_project(make_tree({"test_x.py": "def test_x():\n    pass\n"}), team, owner)
    response = client_for(viewer).post("/api/shell/test", {"project_id": team_project.pk}, format="json")
    assert response.status_code == 403
    assert not Job.objects.exists()
    from rest_framework.test import APIClient

    from accounts.services import api_key_create

    _, key = api_key_create(user=owner, name="ci", scopes=["write"], expires_in_days=None, ip=None)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    job, end = run_tests(client, team_project)
    assert end["status"] == "succeeded" and end["passed"] == 1
    assert Workspace.objects.get(pk=job.workspace_id) == team

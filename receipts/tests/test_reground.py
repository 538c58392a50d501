"""reground: a receipt's findings against the project's real files after they changed."""

import json
import subprocess
from pathlib import Path

import pytest

from receipts.selectors import receipt_reground
from receipts.services import receipt_append
from receipts.tests.conftest import APP_PY

pytestmark = pytest.mark.django_db

TODO_LINE = "    # TODO: cache the parsed config"
SECRET_LINE = '    password = "hunter2-hunter2-hunter2"'


def places(receipt) -> list[tuple[str, str | None, int | None]]:
    return [(item["status"], item["path"], item["line"]) for item in receipt_reground(receipt=receipt)]


@pytest.fixture
def receipt(facts_for):
    return receipt_append(facts=facts_for())


@pytest.fixture
def app(project) -> Path:
    return Path(project.root) / "app.py"


def test_unchanged_files_keep_every_finding_present(receipt):
    items = receipt_reground(receipt=receipt)
    assert [(i["status"], i["path"], i["line"]) for i in items] == [("present", "app.py", 5), ("present", "app.py", 11)]
    assert items[0]["finding"] == json.loads(bytes(receipt.body))["findings"][0]


def test_lines_moved_within_the_file(receipt, app):
    app.write_text('"""Config helpers."""\n\n\n' + APP_PY)
    assert places(receipt) == [("moved", "app.py", 8), ("moved", "app.py", 14)]


def test_reindented_and_blank_lines_around_still_match(receipt, app):
    # Blanks are normalised and blank neighbours skipped: the same code, re-indented, is the same finding.
    app.write_text(APP_PY.replace(TODO_LINE, "\n" + TODO_LINE.replace("    ", "\t")))
    assert places(receipt)[0] == ("moved", "app.py", 6)


def test_moved_to_another_file(receipt, app):
    load, save = APP_PY.split("\n\n\ndef save")
    app.write_text(load + "\n")
    (app.parent / "storage.py").write_text("import os\n\n\ndef save" + save)
    assert places(receipt) == [("present", "app.py", 5), ("moved", "storage.py", 5)]


def test_removed_code_is_resolved(receipt, app):
    app.write_text(APP_PY.replace(TODO_LINE + "\n", "").replace(SECRET_LINE, '    password = os.environ["PW"]'))
    assert places(receipt) == [("resolved", None, None), ("resolved", None, None)]


def test_a_deleted_file_is_resolved_or_found_elsewhere(receipt, app):
    (app.parent / "legacy.py").write_text(APP_PY)
    app.unlink()
    assert places(receipt) == [("moved", "legacy.py", 5), ("moved", "legacy.py", 11)]
    (app.parent / "legacy.py").unlink()
    assert places(receipt) == [("resolved", None, None), ("resolved", None, None)]


def test_the_context_tells_identical_lines_apart(receipt, app):
    # Another identical TODO line appears above, in other code: the finding is the one in load().
    app.write_text("def other():\n" + TODO_LINE + "\n    return 1\n\n\n" + APP_PY)
    assert places(receipt)[0] == ("moved", "app.py", 10)


def test_same_line_text_with_new_neighbours_is_still_present(receipt, app):
    app.write_text(APP_PY.replace("def load(path):", "def load_config(path):"))
    assert places(receipt)[0] == ("present", "app.py", 5)


def test_same_text_elsewhere_when_no_exact_match_exists(receipt, app):
    app.write_text(APP_PY.replace("def load(path):\n" + TODO_LINE, "def load(path):\n    pass\n\n\ndef x():\n" + TODO_LINE))
    assert places(receipt)[0] == ("moved", "app.py", 9)


def test_findings_without_a_fingerprint_are_resolved(facts_for):
    receipt = receipt_append(facts=facts_for(findings=[
        {"path": "nowhere.py", "line": 1, "rule": "todo", "severity": "info", "message": "m"}]))
    assert places(receipt) == [("resolved", None, None)]


def test_git_projects_search_tracked_files_only(receipt, app, project):
    root = Path(project.root)
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    (root / ".gitignore").write_text("ignored/\n")
    (root / "ignored").mkdir()
    (root / "ignored" / "copy.py").write_text(APP_PY)
    app.unlink()
    assert places(receipt) == [("resolved", None, None), ("resolved", None, None)]
    (root / "kept.py").write_text(APP_PY)
    assert places(receipt) == [("moved", "kept.py", 5), ("moved", "kept.py", 11)]

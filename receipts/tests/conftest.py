"""Fixtures of the receipts tests: a signing key per test, a project with real files, and the facts the
agent hands `receipt_append` at the end of a run."""

import base64
import hashlib
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from accounts.models import User, Workspace
from projects.models import Project

APP_PY = """import os


def load(path):
    # TODO: cache the parsed config
    with open(path) as fh:
        return fh.read()


def save(path, text):
    password = "hunter2-hunter2-hunter2"
    with open(path, "w") as fh:
        fh.write(text)
"""


def new_key_b64() -> str:
    return base64.b64encode(os.urandom(32)).decode()


@pytest.fixture
def signing_key_b64(settings: Any) -> str:
    """This test's own Ed25519 seed through KF_SIGNING_KEY (this process only)."""
    settings.KF_SIGNING_KEY = new_key_b64()
    return settings.KF_SIGNING_KEY


@pytest.fixture
def personal(owner: User, signing_key_b64: str) -> Workspace:
    return owner.workspaces.get(personal=True)


def make_project(root: Path, workspace: Workspace, user: User | None = None) -> Project:
    root.mkdir(parents=True, exist_ok=True)
    (root / "app.py").write_text(APP_PY)
    (root / "README.md").write_text("# demo\n\nA project for receipts.\n")
    return Project.objects.create(workspace=workspace, name=root.name, root=str(root.resolve()),
                                  source=Project.Source.PATH, created_by=user)


@pytest.fixture
def project(tmp_path: Path, personal: Workspace, owner: User) -> Project:
    return make_project(tmp_path / "demo", personal, owner)


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def run_facts(project: Project, *, user: User | None = None, run_id: str | None = None, **changes: Any) -> dict[str, Any]:
    """What agent/loop.py hands receipt_append when a run ends: a run that read, edited and tested."""
    facts: dict[str, Any] = {
        "run_id": run_id or f"run_{uuid.uuid4().hex[:22]}",
        "ws_id": project.workspace_id,
        "project_id": project.pk,
        "user_id": user.pk if user else None,
        "task": "Cache the parsed config in load() and add a test for it",
        "model": "gpt-4o-mini",
        "status": "succeeded",
        "input_tokens": 18234,
        "output_tokens": 1290,
        "usd": "0.003509",
        "tool_calls": [
            {"name": "read_file", "arguments": '{"path": "app.py"}', "result": APP_PY},
            {"name": "edit_file", "arguments": '{"path": "app.py", "old": "# TODO", "new": "# done"}',
             "result": "edited app.py (1 replacement)"},
            {"name": "run_tests", "arguments": "{}", "result": "3 passed in 0.12s"},
        ],
        "files": [
            {"path": "app.py", "before_sha256": sha(APP_PY), "after_sha256": sha(APP_PY + "\n")},
            {"path": "tests/test_app.py", "before_sha256": None, "after_sha256": sha("def test(): pass\n")},
        ],
        "snapshot_before": "4b825dc642cb6eb9a060e54bf8d69288fbee4904",
        "snapshot_after": "9c1185a5c5e9fc54612808977ee8f548b2258d31",
        "findings": [
            {"path": "app.py", "line": 5, "rule": "todo", "severity": "info", "message": "TODO: cache the parsed config"},
            {"path": "app.py", "line": 11, "rule": "secret-assignment", "severity": "error",
             "message": "Possible hard-coded password"},
        ],
        "started_at": "2026-03-01T10:00:00Z",
        "ended_at": "2026-03-01T10:02:31.250000Z",
    }
    facts.update(changes)
    return facts


@pytest.fixture
def facts_for(project: Project, owner: User) -> Callable[..., dict[str, Any]]:
    def build(**changes: Any) -> dict[str, Any]:
        return run_facts(project, user=owner, **changes)

    return build

"""POST /api/shell/suggest against the scripted OpenAI-compatible server (real HTTP on loopback)."""

import uuid
from pathlib import Path
from typing import Any

import pytest

from projects.models import Blob, File, Project
from projects.services import project_touch
from shell import suggest
from shell.suggest import parse_suggestion
from streams.services import job_create

pytestmark = pytest.mark.django_db

ANSWER = {"command": "pytest -q -x", "explanation": "Runs the tests and stops at the first failure."}


@pytest.fixture
def project(owner: Any, settings: Any) -> Project:
    root = Path(settings.KF_PROJECTS_ROOT) / f"sg-{uuid.uuid4().hex[:10]}"
    root.mkdir(parents=True)
    project = Project.objects.create(workspace=owner.workspaces.get(personal=True), name="shop-api", root=str(root),
                                     source="path")
    blob = Blob.objects.create(sha=uuid.uuid4().hex, size=1, content="x")
    for path, language in [("a.py", "Python"), ("b.py", "Python"), ("c.py", "Python"), ("web/app.ts", "TypeScript"),
                           ("README.md", "Markdown"), ("data.bin", "")]:
        File.objects.create(project=project, path=path, blob=blob, size=1, mtime_ns=0, language=language)
    for i in range(12):  # oldest first: "cmd-0" … "cmd-11"
        job_create(kind="shell", owner=owner, workspace=project.workspace, project_id=project.pk,
                   params={"command": f"cmd-{i}"})
    job_create(kind="ssh", owner=owner, workspace=project.workspace, project_id=project.pk,
               params={"command": "remote-only", "host": "x"})
    return project


def ask(client: Any, **body: Any) -> Any:
    return client.post("/api/shell/suggest", body, format="json")


def test_suggest_answers_command_and_explanation_from_the_model(llm_server, owner, client_for, project):
    llm_server.reply_json(ANSWER)
    response = ask(client_for(owner), prompt="run the failing tests", project_id=project.pk)
    assert response.status_code == 200, response.content
    assert response.json() == {**ANSWER, "model": llm_server.model, "project_id": project.pk}

    (request,) = llm_server.requests
    assert request.headers["authorization"] == f"Bearer {llm_server.api_key}"
    body = request.body
    assert body["model"] == llm_server.model and body["response_format"] == {"type": "json_object"}
    system, user = body["messages"]
    assert system["role"] == "system" and "JSON" in system["content"]
    text = user["content"]
    assert "run the failing tests" in text and "shop-api" in text
    assert "Python (3 files), Markdown (1 files), TypeScript (1 files)" in text
    recent = [line[2:] for line in text.splitlines() if line.startswith("- ")]
    assert recent == [f"cmd-{i}" for i in range(11, 1, -1)]  # newest first, ten, shell jobs only


def test_suggest_uses_the_last_loaded_project_or_none(llm_server, owner, client_for, project):
    client = client_for(owner)
    llm_server.reply_json(ANSWER)
    no_project = ask(client, prompt="list files")
    assert no_project.status_code == 200 and no_project.json()["project_id"] is None
    assert "No project is open." in llm_server.requests[0].body["messages"][1]["content"]

    project_touch(user=owner, project=project)
    llm_server.reply_json(ANSWER)
    assert ask(client, prompt="list files").json()["project_id"] == project.pk
    assert "shop-api" in llm_server.requests[1].body["messages"][1]["content"]


@pytest.mark.parametrize("reply", [
    '```json\n{"command": "ls -la", "explanation": "Lists files."}\n```',
    'Sure! Here it is: {"command": "ls -la", "explanation": "Lists files."} Hope that helps.',
    'Use this:\n```bash\n$ ls -la\n```\nLists files.',
])
def test_suggest_reads_fenced_or_embedded_answers(llm_server, owner, client_for, reply):
    llm_server.reply(reply)
    response = ask(client_for(owner), prompt="show files")
    assert response.status_code == 200 and response.json()["command"] == "ls -la"
    assert "Lists files." in response.json()["explanation"]


@pytest.mark.parametrize("reply", [
    "I am not sure what you mean.",
    '{"command": "", "explanation": "There is no command that can read minds."}',
    '{"explanation": "no command key"}',
    '{"command": ["ls"], "explanation": "a list"}',
    "",
    None,
])
def test_suggest_without_a_usable_command_is_a_clear_error(llm_server, owner, client_for, reply):
    llm_server.reply(reply)
    response = ask(client_for(owner), prompt="read my mind")
    assert response.status_code == 502 and response.json()["error"]["code"] == "model_error"


def test_suggest_passes_on_why_the_model_declined(llm_server, owner, client_for):
    llm_server.reply_json({"command": "", "explanation": "There is no command that can read minds."})
    response = ask(client_for(owner), prompt="read my mind")
    assert "read minds" in response.json()["error"]["message"]


def test_suggest_only_tool_calls_is_an_error(llm_server, owner, client_for):
    llm_server.reply(None, tool_calls=[{"name": "run", "arguments": {"command": "rm -rf /"}}])
    assert ask(client_for(owner), prompt="clean up").status_code == 502


def test_suggest_without_a_model_configured(owner, client_for, settings):
    settings.KF_LLM_BASE_URL = settings.KF_LLM_API_KEY = settings.KF_LLM_MODEL = ""
    response = ask(client_for(owner), prompt="list files")
    assert response.status_code == 503 and response.json()["error"]["code"] == "model_not_configured"


def test_suggest_upstream_failures_are_clear_errors(llm_server, owner, client_for, settings):
    client = client_for(owner)
    llm_server.fail(500, message="overloaded", times=2)
    failed = ask(client, prompt="x")
    assert failed.status_code == 502 and failed.json()["error"]["details"]["upstream_status"] == 500
    llm_server.garbage(b"<html>oops</html>")
    assert ask(client, prompt="x").status_code == 502
    settings.KF_LLM_TIMEOUT_SECONDS = 0.3
    llm_server.reply_json(ANSWER, delay=2)
    llm_server.reply_json(ANSWER, delay=2)
    slow = ask(client, prompt="x")
    assert slow.status_code == 502 and "did not answer within" in slow.json()["error"]["message"]
    assert llm_server.api_key not in slow.content.decode() + failed.content.decode()


def test_suggest_retries_without_response_format_when_the_server_rejects_it(llm_server, owner, client_for):
    llm_server.fail(400, message="response_format is not supported")
    llm_server.reply_json(ANSWER)
    response = ask(client_for(owner), prompt="run tests")
    assert response.status_code == 200 and response.json()["command"] == ANSWER["command"]
    first, second = llm_server.requests
    assert "response_format" in first.body and "response_format" not in second.body


@pytest.mark.parametrize("body", [{}, {"prompt": ""}, {"prompt": "x" * (suggest.PROMPT_MAX_CHARS + 1)},
                                  {"prompt": ["x"]}, {"prompt": "a\x00b"}])
def test_suggest_bad_input(llm_server, owner, client_for, body):
    response = client_for(owner).post("/api/shell/suggest", body, format="json")
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_request"
    assert llm_server.requests == []


def test_suggest_roles(llm_server, owner, team, viewer, outsider, client_for, project, anon):
    assert ask(client_for(outsider), prompt="x", project_id=project.pk).status_code == 404
    Project.objects.filter(pk=project.pk).update(workspace=team)
    llm_server.reply_json(ANSWER)
    assert ask(client_for(viewer), prompt="x", project_id=project.pk).status_code == 200  # it only reads
    assert anon.post("/api/shell/suggest", {"prompt": "x"}, format="json").status_code == 401
    assert len(llm_server.requests) == 1


def test_suggest_is_rate_limited(llm_server, owner, client_for, monkeypatch):
    monkeypatch.setattr(suggest, "RATE_LIMIT", 2)
    client = client_for(owner)
    for _ in range(2):
        llm_server.reply_json(ANSWER)
        assert ask(client, prompt="x").status_code == 200
    limited = ask(client, prompt="x")
    assert limited.status_code == 429 and limited.json()["error"]["code"] == "rate_limited"
    assert len(llm_server.requests) == 2


def test_parse_suggestion_unit_cases():
    assert parse_suggestion('{"command": " git status ", "explanation": 5}') == ("git status", "")
    assert parse_suggestion('{"suggestion": {"command": "make", "explanation": "Builds."}}') == ("make", "Builds.")
    assert parse_suggestion("```\nnpm test\n```") == ("npm test", "")
    assert parse_suggestion("```python\nprint(1)\n```") is None  # not a shell block
    assert parse_suggestion("{broken json") is None

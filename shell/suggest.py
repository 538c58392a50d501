"""Suggest one shell command for what a user describes, from the configured chat model.

The model gets the request, the project's languages (file counts from the index) and the project's
recent shell commands, and is asked for JSON `{command, explanation}`. Its reply is read robustly
(bare JSON, JSON in a fenced block or inside prose, or a fenced shell block); a reply without a usable
command is an error (502 `model_error`), never a command kf made up. The command is only shown,
never run.
"""

import json
import re
from dataclasses import dataclass
from typing import Any

from django.db.models import Count

from accounts import ratelimit
from accounts.models import User
from llm.client import ChatResult, ModelError, chat
from projects.models import File, Project
from streams.models import Job

PROMPT_MAX_CHARS = 4000
COMMAND_MAX_CHARS = 4000
EXPLANATION_MAX_CHARS = 2000
RECENT_COMMANDS = 10
LANGUAGES = 10
# The model costs money per call: a generous cap for a person, a brake for a runaway script.
RATE_LIMIT = 30
RATE_WINDOW_SECONDS = 60
# A person is waiting on the answer: one retry rides out a transient 429/5xx or dropped connection,
# more would multiply their wait.
MODEL_ATTEMPTS = 2

SYSTEM_PROMPT = """You suggest exactly ONE shell command for a developer working on a software project.
The command will be shown to them (never run automatically); they may run it with bash in the
project's root folder on a Linux server. Prefer safe, read-only commands unless they ask for a change,
and never suggest something destructive unless that is clearly what they asked for.
Answer with a single JSON object and nothing else:
{"command": "<one bash command line>", "explanation": "<one or two sentences: what it does and what to watch out for>"}
If no command can do what they ask, answer {"command": "", "explanation": "<why not>"}."""


@dataclass(frozen=True)
class Suggestion:
    command: str
    explanation: str
    model: str


def suggest_context(*, project: Project | None) -> dict[str, Any]:
    """What the model is told about the project: its name, languages by file count, recent commands."""
    if project is None:
        return {"project": None, "languages": [], "recent_commands": []}
    languages = list(File.objects.filter(project=project).exclude(language="").values("language")
                     .annotate(files=Count("id")).order_by("-files", "language")[:LANGUAGES])
    params = (Job.objects.filter(project_id=project.pk, kind="shell").order_by("-created_at")
              .values_list("params", flat=True)[:RECENT_COMMANDS])
    recent = [p["command"] for p in params if isinstance(p, dict) and isinstance(p.get("command"), str)]
    return {"project": project.name, "languages": [(row["language"], row["files"]) for row in languages],
            "recent_commands": recent}


def _user_message(prompt: str, context: dict[str, Any]) -> str:
    lines = [f"Request: {prompt}", ""]
    if context["project"] is None:
        lines.append("No project is open.")
    else:
        lines.append(f"Project: {context['project']}")
        languages = ", ".join(f"{name} ({files} files)" for name, files in context["languages"])
        lines.append(f"Languages: {languages or 'unknown (not indexed yet)'}")
        if context["recent_commands"]:
            lines.append("Recent commands in this project (newest first):")
            lines.extend(f"- {command}" for command in context["recent_commands"])
        else:
            lines.append("No commands have been run in this project yet.")
    return "\n".join(lines)


_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[ \t]*\n(.*?)```", re.DOTALL)
_SHELL_FENCES = {"", "sh", "bash", "shell", "zsh", "console", "shell-session"}


def _json_objects(text: str) -> list[dict[str, Any]]:
    """Every JSON object found in `text`, in order: the whole text, or objects embedded in prose."""
    decoder = json.JSONDecoder()
    found = []
    for start in [i for i, c in enumerate(text) if c == "{"]:
        try:
            value, _ = decoder.raw_decode(text, start)
        except ValueError:
            continue
        if isinstance(value, dict):
            found.append(value)
    return found


def parse_suggestion(text: str | None) -> tuple[str, str] | None:
    """(command, explanation) from a model's reply, or None when it holds no usable command."""
    if not text or not text.strip():
        return None
    text = text.strip()
    candidates: list[dict[str, Any]] = []
    for _, body in _FENCE.findall(text):
        candidates.extend(_json_objects(body))
    candidates.extend(_json_objects(text))
    for obj in candidates:
        if "command" in obj:
            command, explanation = obj.get("command"), obj.get("explanation", "")
            if isinstance(command, str) and command.strip():
                return command.strip(), explanation.strip() if isinstance(explanation, str) else ""
            return None  # the model answered in the format but gave no command (it declined)
    for language, body in _FENCE.findall(text):
        if language.lower() in _SHELL_FENCES and body.strip():
            command = "\n".join(line.removeprefix("$ ") for line in body.strip().splitlines())
            explanation = _FENCE.sub("", text).strip()
            return command.strip(), explanation
    return None


def _ask(messages: list[dict[str, Any]]) -> ChatResult:
    # No max_tokens or temperature: some models (reasoning ones) reject them, and the answer is short.
    try:
        return chat(messages=messages, response_format={"type": "json_object"}, max_attempts=MODEL_ATTEMPTS)
    except ModelError as exc:
        if exc.upstream_status not in (400, 422):
            raise
    # Some OpenAI-compatible servers reject response_format: ask again without it.
    return chat(messages=messages, max_attempts=MODEL_ATTEMPTS)


def command_suggest(*, user: User, prompt: str, project: Project | None) -> Suggestion:
    ratelimit.hit_and_check("shell_suggest", str(user.pk), limit=RATE_LIMIT, window=RATE_WINDOW_SECONDS,
                            message="Too many suggestions asked for; wait a moment.")
    context = suggest_context(project=project)
    messages = [{"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": _user_message(prompt, context)}]
    result = _ask(messages)
    parsed = parse_suggestion(result.text)
    if parsed is None:
        declined = ""
        for obj in _json_objects(result.text or ""):
            if isinstance(obj.get("explanation"), str) and obj["explanation"].strip():
                declined = obj["explanation"].strip()[:300]
                break
        raise ModelError("The model's answer holds no usable command" + (f": {declined}" if declined else ".")
                         + " Try rephrasing the request.", details={"finish_reason": result.finish_reason})
    command, explanation = parsed
    if len(command) > COMMAND_MAX_CHARS or "\x00" in command:
        raise ModelError("The model's answer holds no usable command (it is too long or not text).")
    return Suggestion(command=command, explanation=explanation[:EXPLANATION_MAX_CHARS], model=result.model)

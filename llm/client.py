"""The one chat-model client of kf: OpenAI-compatible chat completions through the `openai` SDK.

Configuration (kfsite/settings.py): KF_LLM_BASE_URL (e.g. `http://127.0.0.1:11434/v1`), KF_LLM_API_KEY
(optional for local servers), KF_LLM_MODEL, KF_LLM_TIMEOUT_SECONDS (per HTTP attempt). A model is
"configured" when KF_LLM_MODEL is set and so is KF_LLM_BASE_URL or KF_LLM_API_KEY (a key alone means
OpenAI's own endpoint). Anything less → `ModelNotConfigured` (503 `model_not_configured`): kf never
guesses a model or an endpoint.

Every failure of the model server (HTTP error, timeout, unreachable, a body that is not JSON or not
a chat completion) → `ModelError` (502 `model_error`) with a sentence a user can act on and
`details.upstream_status` where there was one. The API key never appears in a message, a detail or
a log line: upstream messages are passed on only after the key is scrubbed from them, and never for
401/403 (providers echo part of the key there).

`chat(...)` returns a `ChatResult` (text, tool_calls, usage, model, finish_reason) whose
`assistant_message()` is ready to append to `messages` for the next turn of a tool-calling loop.
With `on_delta`, the reply is streamed and `on_delta(text)` is called for each piece of content.
"""

import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import openai
from django.conf import settings
from rest_framework import status

from api.errors import ApiError

logger = logging.getLogger("kf.llm")

OPENAI_BASE_URL = "https://api.openai.com/v1"
# One retry (the SDK backs off first) rides out a transient 429/5xx or dropped connection; more
# would multiply the wait of a user whose request is waiting on the answer.
MAX_RETRIES = 1


class ModelNotConfigured(ApiError):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_code = "model_not_configured"
    default_detail = ("No chat model is configured on this server: the operator must set KF_LLM_MODEL and "
                      "KF_LLM_BASE_URL (and KF_LLM_API_KEY if the server needs one).")


class ModelError(ApiError):
    """The model server failed or answered something unusable."""

    status_code = status.HTTP_502_BAD_GATEWAY
    default_code = "model_error"
    default_detail = "The model server failed to answer."

    def __init__(self, message: str | None = None, *, upstream_status: int | None = None,
                 details: dict[str, Any] | None = None) -> None:
        details = dict(details or {})
        if upstream_status is not None:
            details["upstream_status"] = upstream_status
        super().__init__(message, details=details or None)
        self.upstream_status = upstream_status


@dataclass(frozen=True)
class LlmConfig:
    base_url: str
    api_key: str
    model: str
    timeout: float

    @property
    def server(self) -> str:
        """scheme://host[:port] only: safe to show (no credentials, path or query)."""
        parts = urlsplit(self.base_url)
        host = parts.hostname or "?"
        return f"{parts.scheme}://{host}{f':{parts.port}' if parts.port else ''}"


def llm_config() -> LlmConfig:
    model = settings.KF_LLM_MODEL.strip()
    base_url = settings.KF_LLM_BASE_URL.strip()
    api_key = settings.KF_LLM_API_KEY.strip()
    if not model or not (base_url or api_key):
        raise ModelNotConfigured()
    return LlmConfig(base_url=base_url or OPENAI_BASE_URL, api_key=api_key, model=model,
                     timeout=float(settings.KF_LLM_TIMEOUT_SECONDS))


def model_configured() -> bool:
    try:
        llm_config()
    except ModelNotConfigured:
        return False
    return True


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments_json: str  # as the model wrote it: it may not be valid JSON

    @property
    def arguments(self) -> dict[str, Any] | None:
        """The arguments as a dict, or None when the model wrote something that is not a JSON object."""
        try:
            value = json.loads(self.arguments_json or "{}")
        except ValueError:
            return None
        return value if isinstance(value, dict) else None


@dataclass(frozen=True)
class ChatResult:
    text: str | None
    tool_calls: list[ToolCall]
    usage: dict[str, int]  # {"prompt_tokens", "completion_tokens"}
    model: str
    finish_reason: str | None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def assistant_message(self) -> dict[str, Any]:
        """This reply as a message for the next request of the conversation."""
        message: dict[str, Any] = {"role": "assistant", "content": self.text}
        if self.tool_calls:
            message["tool_calls"] = [{"id": c.id, "type": "function",
                                      "function": {"name": c.name, "arguments": c.arguments_json}}
                                     for c in self.tool_calls]
        return message


def chat(*, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None, model: str | None = None,
         max_tokens: int | None = None, response_format: dict[str, Any] | None = None,
         temperature: float | None = None, tool_choice: str | dict[str, Any] | None = None,
         on_delta: Callable[[str], None] | None = None) -> ChatResult:
    """One chat completion. `tools` are OpenAI function tools ({"type": "function", "function": {…}})."""
    config = llm_config()
    params: dict[str, Any] = {"model": model or config.model, "messages": messages}
    if tools:
        params["tools"] = tools
        if tool_choice is not None:
            params["tool_choice"] = tool_choice
    if max_tokens is not None:
        params["max_tokens"] = max_tokens
    if response_format is not None:
        params["response_format"] = response_format
    if temperature is not None:
        params["temperature"] = temperature
    client = openai.OpenAI(base_url=config.base_url, api_key=config.api_key or "none", timeout=config.timeout,
                           max_retries=MAX_RETRIES)
    try:
        with client:
            if on_delta is None:
                raw = client.chat.completions.with_raw_response.create(**params)
                return _result_from_body(_json_body(raw.http_response.content, config), params["model"], config)
            stream = client.chat.completions.create(**params, stream=True, stream_options={"include_usage": True})
            return _result_from_stream((c.model_dump() for c in stream), params["model"], on_delta, config)
    except ModelError:
        raise
    except openai.APITimeoutError as exc:
        _log_failure(config, exc)
        raise ModelError(f"The model server ({config.server}) did not answer within {config.timeout:g} s.") from None
    except openai.APIConnectionError as exc:
        _log_failure(config, exc)
        raise ModelError(f"Could not reach the model server ({config.server}).") from None
    except openai.APIStatusError as exc:
        _log_failure(config, exc)
        raise _status_error(exc, config) from None
    except (openai.OpenAIError, ValueError) as exc:
        # The SDK failing on a body it cannot read (bad JSON in a stream, a chunk of the wrong shape).
        _log_failure(config, exc)
        raise ModelError(f"The model server ({config.server}) sent an answer that is not a chat completion.") from None


def _scrub(text: str, config: LlmConfig) -> str:
    if config.api_key:
        text = text.replace(config.api_key, "***")
    return text


def _log_failure(config: LlmConfig, exc: BaseException) -> None:
    # The exception's class and status only: its message or request could carry the key or prompts.
    logger.warning("model call to %s failed: %s%s", config.server, type(exc).__name__,
                   f" (HTTP {exc.status_code})" if isinstance(exc, openai.APIStatusError) else "")


def _status_error(exc: openai.APIStatusError, config: LlmConfig) -> ModelError:
    code = exc.status_code
    if code in (401, 403):
        return ModelError(f"The model server ({config.server}) refused kf's credentials (HTTP {code}): "
                          "check KF_LLM_API_KEY.", upstream_status=code)
    if code == 429:
        return ModelError(f"The model server ({config.server}) is rate limiting or out of quota (HTTP 429).",
                          upstream_status=code)
    upstream = ""
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        upstream = str(inner.get("message", "") if isinstance(inner, dict) else inner)
    elif isinstance(body, str):
        upstream = body
    upstream = _scrub(" ".join(upstream.split()), config)[:300]
    return ModelError(f"The model server ({config.server}) answered HTTP {code}" + (f": {upstream}" if upstream else "."),
                      upstream_status=code)


def _json_body(content: bytes, config: LlmConfig) -> dict[str, Any]:
    try:
        body = json.loads(content)
    except ValueError:
        raise ModelError(f"The model server ({config.server}) sent an answer that is not JSON.") from None
    if not isinstance(body, dict):
        raise ModelError(f"The model server ({config.server}) sent an answer that is not a chat completion.")
    return body


def _usage(raw: Any) -> dict[str, int]:
    usage = raw if isinstance(raw, dict) else {}

    def count(name: str) -> int:
        value = usage.get(name)
        return value if isinstance(value, int) and value >= 0 else 0

    return {"prompt_tokens": count("prompt_tokens"), "completion_tokens": count("completion_tokens")}


def _tool_calls(raw: Any, config: LlmConfig) -> list[ToolCall]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ModelError(f"The model server ({config.server}) sent malformed tool calls.")
    calls = []
    for item in raw:
        function = item.get("function") if isinstance(item, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
            raise ModelError(f"The model server ({config.server}) sent malformed tool calls.")
        arguments = function.get("arguments")
        calls.append(ToolCall(id=str(item.get("id") or ""), name=function["name"],
                              arguments_json=arguments if isinstance(arguments, str) else json.dumps(arguments or {})))
    return calls


def _result_from_body(body: dict[str, Any], requested_model: str, config: LlmConfig) -> ChatResult:
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise ModelError(f"The model server ({config.server}) sent an answer without choices.")
    message = choices[0].get("message")
    if not isinstance(message, dict):
        raise ModelError(f"The model server ({config.server}) sent an answer without a message.")
    content = message.get("content")
    if isinstance(content, list):  # content parts: keep the text ones
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict)) or None
    elif content is not None and not isinstance(content, str):
        raise ModelError(f"The model server ({config.server}) sent a message whose content is not text.")
    finish = choices[0].get("finish_reason")
    return ChatResult(text=content, tool_calls=_tool_calls(message.get("tool_calls"), config),
                      usage=_usage(body.get("usage")), model=str(body.get("model") or requested_model),
                      finish_reason=finish if isinstance(finish, str) else None, raw=body)


def _result_from_stream(chunks: Iterable[dict[str, Any]], requested_model: str,
                        on_delta: Callable[[str], None], config: LlmConfig) -> ChatResult:
    text: list[str] = []
    calls: dict[int, dict[str, Any]] = {}
    usage: Any = None
    model = ""
    finish: str | None = None
    for chunk in chunks:
        model = chunk.get("model") or model
        if chunk.get("usage"):
            usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            if delta.get("content"):
                text.append(delta["content"])
                on_delta(delta["content"])
            for part in delta.get("tool_calls") or []:
                call = calls.setdefault(part.get("index") or 0, {"id": "", "name": "", "arguments": ""})
                function = part.get("function") or {}
                call["id"] = part.get("id") or call["id"]
                call["name"] += function.get("name") or ""
                call["arguments"] += function.get("arguments") or ""
            finish = choice.get("finish_reason") or finish
    tool_calls = [{"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
                  for _, c in sorted(calls.items())]
    return ChatResult(text="".join(text) if text else None, tool_calls=_tool_calls(tool_calls or None, config),
                      usage=_usage(usage), model=model or requested_model, finish_reason=finish,
                      raw={"streamed": True})

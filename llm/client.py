"""The one chat-model client of kf: OpenAI-compatible chat completions through the `openai` SDK.

Configuration (kfsite/settings.py): KF_LLM_BASE_URL (e.g. `http://127.0.0.1:11434/v1`), KF_LLM_API_KEY
(optional for local servers), KF_LLM_MODEL, KF_LLM_TIMEOUT_SECONDS (per HTTP attempt). A model is
"configured" when KF_LLM_MODEL is set and so is KF_LLM_BASE_URL or KF_LLM_API_KEY (a key alone means
OpenAI's own endpoint). Anything less → `ModelNotConfigured` (503 `model_not_configured`): kf never
guesses a model or an endpoint.

Retries are kf's, not the SDK's (it is built with max_retries=0), so every wait is visible
(`on_retry`), configurable and interruptible: KF_LLM_MAX_ATTEMPTS attempts in all (default 4; the
`max_attempts` argument overrides it), exponential backoff with full jitter from
KF_LLM_RETRY_BASE_SECONDS (0.5), no single wait longer than KF_LLM_RETRY_MAX_WAIT_SECONDS (30), and
the server's `Retry-After` / `retry-after-ms` honoured within that cap. Retried: 408, 409, 429 (not
"insufficient_quota"), 5xx, timeouts, dropped connections. Never retried: other 4xx, an answer that
is not a chat completion, and a stream that breaks off after a piece of the answer reached `on_delta`
(a retry would repeat what the user has already seen).

Every failure of the model server → `ModelError` (502 `model_error`) with a sentence a user can act
on and `details.upstream_status` where there was one (`details.attempts` when more than one attempt
was made). The API key never appears in a message, a detail or a log line: upstream messages are
passed on only after the key is scrubbed from them, and never for 401/403 (providers echo part of
the key there).

`should_stop()` is asked before each attempt, between streamed chunks and every 0.1 s of a backoff
wait; when it says True the response is closed at once and `ModelCancelled` is raised. A call still
waiting for its first byte is not interrupted (the caller runs chat() in a thread of its own for
that); it stops when that attempt ends.

`chat(...)` returns a `ChatResult` (text, tool_calls, usage, model, finish_reason) whose
`assistant_message()` is ready to append to `messages` for the next turn of a tool-calling loop.
With `on_delta`, the reply is streamed and `on_delta(text)` is called for each piece of content.
"""

import email.utils
import json
import logging
import math
import random
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

import openai
from django.conf import settings
from rest_framework import status

from api.errors import ApiError

logger = logging.getLogger("kf.llm")

OPENAI_BASE_URL = "https://api.openai.com/v1"
# Statuses worth another attempt: the request may succeed unchanged a moment later.
RETRY_STATUSES = frozenset({408, 409, 429})
STOP_POLL_SECONDS = 0.1
# An upstream error that says the requested model does not exist (OpenAI, vLLM, Ollama, LiteLLM wordings).
_UNKNOWN_MODEL = re.compile(r"model_not_found|\bmodel\b.{0,120}\b(does not exist|doesn't exist|not found|unknown)"
                            r"|\b(unknown|no such|invalid) model\b", re.IGNORECASE | re.DOTALL)

StopCheck = Callable[[], bool]


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


class ModelCancelled(Exception):
    """`should_stop()` said stop: the call was abandoned and its connection closed. Not an ApiError:
    a cancel is the caller's decision, not a failure to report to a client."""


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
class RetryPolicy:
    max_attempts: int
    base_seconds: float
    max_wait_seconds: float

    def wait(self, failed_attempt: int, retry_after: float | None) -> float:
        """Seconds to wait after attempt `failed_attempt` (1-based): the server's Retry-After if it sent
        one, else full jitter over base·2^(n-1); never more than the cap."""
        if retry_after is not None:
            return min(retry_after, self.max_wait_seconds)
        ceiling = min(self.max_wait_seconds, self.base_seconds * 2 ** (failed_attempt - 1))
        return random.uniform(0, ceiling)


def retry_policy(max_attempts: int | None = None) -> RetryPolicy:
    attempts = max_attempts if max_attempts is not None else getattr(settings, "KF_LLM_MAX_ATTEMPTS", 4)
    return RetryPolicy(max_attempts=max(1, int(attempts)),
                       base_seconds=max(0.0, float(getattr(settings, "KF_LLM_RETRY_BASE_SECONDS", 0.5))),
                       max_wait_seconds=max(0.0, float(getattr(settings, "KF_LLM_RETRY_MAX_WAIT_SECONDS", 30.0))))


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


class _AttemptFailed(Exception):
    """One attempt's failure, already put into words, and whether another attempt may succeed."""

    def __init__(self, error: ModelError, *, retryable: bool, retry_after: float | None = None) -> None:
        super().__init__(error.message)
        self.error = error
        self.retryable = retryable
        self.retry_after = retry_after


@dataclass
class _StreamProgress:
    started: bool = False  # a piece of content or of a tool call has arrived


def chat(*, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None, model: str | None = None,
         max_tokens: int | None = None, response_format: dict[str, Any] | None = None,
         temperature: float | None = None, tool_choice: str | dict[str, Any] | None = None,
         on_delta: Callable[[str], None] | None = None, should_stop: StopCheck | None = None,
         on_retry: Callable[[int, float, ModelError], None] | None = None,
         max_attempts: int | None = None) -> ChatResult:
    """One chat completion, retried as the module docstring says. `tools` are OpenAI function tools
    ({"type": "function", "function": {…}}). `on_retry(attempt, wait_seconds, error)` is called before
    each wait, `attempt` being the 1-based number of the attempt that just failed."""
    config = llm_config()
    params = _request_params(messages=messages, tools=tools, model=model or config.model, max_tokens=max_tokens,
                             response_format=response_format, temperature=temperature, tool_choice=tool_choice)
    policy = retry_policy(max_attempts)
    client = _client(config)
    attempt = 0
    while True:
        attempt += 1
        _raise_if_stopped(should_stop)
        try:
            return _attempt(client, params, config, on_delta, should_stop)
        except _AttemptFailed as failed:
            _raise_if_stopped(should_stop)  # a cancelled caller wants neither a retry nor an error
            if not failed.retryable or attempt >= policy.max_attempts:
                raise _final_error(failed.error, attempt) from None
            wait = policy.wait(attempt, failed.retry_after)
            if on_retry is not None:
                on_retry(attempt, wait, failed.error)
            _sleep(wait, should_stop)


@lru_cache(maxsize=8)
def _client(config: LlmConfig) -> openai.OpenAI:
    """One SDK client per configuration, shared by every call and thread (its httpx pool is
    thread-safe): building one loads the CA bundle, ~35 ms, which would otherwise be paid per step of
    an agent run. Retries are kf's own (max_retries=0)."""
    return openai.OpenAI(base_url=config.base_url, api_key=config.api_key or "none", timeout=config.timeout,
                         max_retries=0)


def _request_params(*, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, model: str,
                    max_tokens: int | None, response_format: dict[str, Any] | None, temperature: float | None,
                    tool_choice: str | dict[str, Any] | None) -> dict[str, Any]:
    params: dict[str, Any] = {"model": model, "messages": messages}
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
    return params


def _raise_if_stopped(should_stop: StopCheck | None) -> None:
    if should_stop is not None and should_stop():
        raise ModelCancelled()


def _sleep(seconds: float, should_stop: StopCheck | None) -> None:
    """Sleep in slices short enough that a cancel is noticed within STOP_POLL_SECONDS."""
    deadline = time.monotonic() + seconds
    while (remaining := deadline - time.monotonic()) > 0:
        _raise_if_stopped(should_stop)
        time.sleep(min(STOP_POLL_SECONDS, remaining))
    _raise_if_stopped(should_stop)


def _final_error(error: ModelError, attempts: int) -> ModelError:
    if attempts == 1:
        return error
    details = dict(error.details or {}, attempts=attempts)
    return ModelError(f"{error.message.rstrip().rstrip('.')} (gave up after {attempts} attempts).",
                      upstream_status=error.upstream_status, details=details)


def _attempt(client: openai.OpenAI, params: dict[str, Any], config: LlmConfig,
             on_delta: Callable[[str], None] | None, should_stop: StopCheck | None) -> ChatResult:
    """One HTTP request. SDK failures become `_AttemptFailed`; ModelCancelled passes through."""
    if on_delta is None:
        try:
            raw = client.chat.completions.with_raw_response.create(**params)
        except (openai.OpenAIError, ValueError) as exc:
            raise _attempt_failure(exc, config, params["model"]) from None
        try:
            return _result_from_body(_json_body(raw.http_response.content, config), params["model"], config)
        except ModelError as exc:  # a 200 that is not a chat completion: the same again next time
            raise _AttemptFailed(exc, retryable=False) from None
    try:
        stream = client.chat.completions.create(**params, stream=True, stream_options={"include_usage": True})
    except (openai.OpenAIError, ValueError) as exc:
        raise _attempt_failure(exc, config, params["model"]) from None
    progress = _StreamProgress()
    with stream:  # closes the response (and its connection) however the reading ends, a cancel included
        chunks = _read_chunks(stream, config, params["model"], should_stop, progress)
        try:
            return _result_from_stream(chunks, params["model"], on_delta, config, progress)
        except ModelError as exc:
            raise _AttemptFailed(exc, retryable=False) from None


def _read_chunks(stream: Iterable[Any], config: LlmConfig, model: str, should_stop: StopCheck | None,
                 progress: _StreamProgress) -> Iterator[dict[str, Any]]:
    """The stream's chunks as dicts, asking should_stop() before each. A failure while reading is retried
    only while nothing of the answer has arrived."""
    iterator = iter(stream)
    while True:
        _raise_if_stopped(should_stop)
        try:
            chunk = next(iterator)
        except StopIteration:
            return
        except (openai.OpenAIError, ValueError) as exc:
            if not progress.started:
                raise _attempt_failure(exc, config, model) from None
            _log_failure(config, exc)
            raise _AttemptFailed(ModelError(
                f"The model server's stream ({config.server}) broke off in the middle of the answer; it is not "
                "retried, since the part already received would be repeated."), retryable=False) from None
        _raise_if_stopped(should_stop)
        yield chunk.model_dump()


def _attempt_failure(exc: BaseException, config: LlmConfig, model: str) -> _AttemptFailed:
    _log_failure(config, exc)
    if isinstance(exc, openai.APITimeoutError):
        return _AttemptFailed(ModelError(
            f"The model server ({config.server}) did not answer within {config.timeout:g} s."), retryable=True)
    if isinstance(exc, openai.APIConnectionError):
        return _AttemptFailed(ModelError(f"Could not reach the model server ({config.server})."), retryable=True)
    if isinstance(exc, openai.APIStatusError):
        code = exc.status_code
        retryable = (code in RETRY_STATUSES or code >= 500) and not _out_of_quota(exc)
        return _AttemptFailed(_status_error(exc, config, model), retryable=retryable,
                              retry_after=_retry_after(exc.response.headers) if retryable else None)
    if isinstance(exc, openai.APIError) and exc.message:  # an error event inside a stream
        return _AttemptFailed(ModelError(f"The model server ({config.server}) reported an error: "
                                         f"{_upstream_text(exc.message, config)}"), retryable=False)
    # The SDK failing on a body it cannot read (bad JSON in a stream, a chunk of the wrong shape).
    return _AttemptFailed(ModelError(
        f"The model server ({config.server}) sent an answer that is not a chat completion."), retryable=False)


def _scrub(text: str, config: LlmConfig) -> str:
    if config.api_key:
        text = text.replace(config.api_key, "***")
    return text


def _upstream_text(text: str, config: LlmConfig) -> str:
    return _scrub(" ".join(text.split()), config)[:300]


def _log_failure(config: LlmConfig, exc: BaseException) -> None:
    # The exception's class and status only: its message or request could carry the key or prompts.
    logger.warning("model call to %s failed: %s%s", config.server, type(exc).__name__,
                   f" (HTTP {exc.status_code})" if isinstance(exc, openai.APIStatusError) else "")


def _upstream_error(exc: openai.APIStatusError) -> tuple[str, str]:
    """(code, message) of the upstream error body, whichever of the usual shapes it has."""
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict):
            return str(inner.get("code") or inner.get("type") or ""), str(inner.get("message") or "")
        return "", str(inner)
    return "", body if isinstance(body, str) else ""


def _out_of_quota(exc: openai.APIStatusError) -> bool:
    """A 429 that no wait cures (OpenAI's "insufficient_quota": the account has no credit left)."""
    return exc.status_code == 429 and _upstream_error(exc)[0] == "insufficient_quota"


def _retry_after(headers: Any) -> float | None:
    """The server's requested wait: `retry-after-ms`, or `Retry-After` in seconds or as an HTTP date."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        try:
            value = float(headers.get(name, "")) * scale
        except ValueError:
            continue
        if math.isfinite(value) and value >= 0:
            return value
    try:
        when = email.utils.parsedate_to_datetime(headers.get("retry-after", ""))
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _status_error(exc: openai.APIStatusError, config: LlmConfig, model: str) -> ModelError:
    code = exc.status_code
    if code in (401, 403):
        return ModelError(f"The model server ({config.server}) refused kf's credentials (HTTP {code}): "
                          "check KF_LLM_API_KEY.", upstream_status=code)
    if code == 429:
        return ModelError(f"The model server ({config.server}) is rate limiting or out of quota (HTTP 429).",
                          upstream_status=code)
    upstream_code, upstream_message = _upstream_error(exc)
    says_unknown_model = bool(_UNKNOWN_MODEL.search(f"{upstream_code} {upstream_message}"))
    if (code == 404 and (says_unknown_model or "model" in upstream_message.lower())) or (code == 400 and says_unknown_model):
        return ModelError(f"The model server ({config.server}) does not know the model '{_scrub(model, config)}': "
                          "check KF_LLM_MODEL or the model in your agent prefs.", upstream_status=code)
    upstream = _upstream_text(upstream_message, config)
    if code == 404:
        return ModelError(f"The model server ({config.server}) answered HTTP 404 for the chat completions path"
                          + (f" ({upstream})" if upstream else "") + ": check KF_LLM_BASE_URL (OpenAI-compatible "
                          "servers usually serve it under …/v1).", upstream_status=code)
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


def _add_tool_call_piece(calls: dict[int, dict[str, str]], part: dict[str, Any]) -> None:
    """Fold one streamed piece of a tool call into the call with its index: the id and name come in the
    first piece, the arguments in many."""
    index = part.get("index")
    call = calls.setdefault(index if isinstance(index, int) else 0, {"id": "", "name": "", "arguments": ""})
    function = part.get("function") or {}
    call["id"] = part.get("id") or call["id"]
    name = function.get("name") or ""
    # Some servers repeat the whole name in every piece; OpenAI sends it once.
    if name and name != call["name"]:
        call["name"] += name
    call["arguments"] += function.get("arguments") or ""


def _result_from_stream(chunks: Iterable[dict[str, Any]], requested_model: str,
                        on_delta: Callable[[str], None], config: LlmConfig,
                        progress: _StreamProgress | None = None) -> ChatResult:
    progress = progress or _StreamProgress()
    text: list[str] = []
    calls: dict[int, dict[str, str]] = {}
    usage: Any = None
    model = ""
    finish: str | None = None
    for chunk in chunks:
        model = chunk.get("model") or model
        if chunk.get("usage"):
            usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            if delta.get("tool_calls"):
                progress.started = True
                for part in delta["tool_calls"]:
                    _add_tool_call_piece(calls, part)
            if delta.get("content"):
                progress.started = True
                text.append(delta["content"])
                on_delta(delta["content"])
            finish = choice.get("finish_reason") or finish
    tool_calls = [{"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
                  for _, c in sorted(calls.items())]
    return ChatResult(text="".join(text) if text else None, tool_calls=_tool_calls(tool_calls or None, config),
                      usage=_usage(usage), model=model or requested_model, finish_reason=finish,
                      raw={"streamed": True})

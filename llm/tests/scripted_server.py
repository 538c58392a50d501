"""A scripted OpenAI-compatible chat server on loopback, for tests of anything that talks to a model.

Tests queue the replies the "model" gives, in order, and afterwards read what kf actually sent:

    server = ScriptedModelServer().start()
    server.reply("hello", usage=(12, 3))                       # plain text
    server.reply(tool_calls=[{"name": "read_file", "arguments": {"path": "a.py"}}])
    server.fail(500)                                             # an upstream error (JSON error body)
    server.garbage(b"<html>oops")                                # 200 with a body that is not JSON
    server.reply_raw({"id": "x", "object": "chat.completion"})   # valid JSON of the wrong shape
    server.reply("late", delay=5)                                # answers after 5 s (timeouts)
    ...
    server.requests[0].body["messages"], server.requests[0].headers["authorization"]
    server.stop()

`POST /v1/chat/completions` pops the next scripted step; with nothing queued it answers 500 with a
message saying so (a test that forgot to script a reply fails loudly instead of hanging). Requests
with `"stream": true` are answered as Server-Sent Events chunks (content in pieces, tool calls,
usage when `stream_options.include_usage`, then `[DONE]`), as OpenAI does. `GET /v1/models` lists
the one model. Plain `http.server` in a daemon thread: no dependency beyond the standard library.
"""

import json
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]  # lower-cased names
    body: Any  # the parsed JSON body (None when it was not JSON)
    raw: bytes


@dataclass
class _Step:
    kind: str  # "reply" | "error" | "raw"
    delay: float = 0.0
    status: int = 200
    payload: Any = None  # "reply": dict of the message; "error": JSON body; "raw": bytes or JSON-able
    usage: tuple[int, int] = (0, 0)
    finish_reason: str | None = None
    model: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class ScriptedModelServer:
    def __init__(self, *, model: str = "scripted-model-1", api_key: str | None = None) -> None:
        self.model = model
        self.api_key = api_key or f"sk-test-{secrets.token_hex(12)}"
        self.requests: list[RecordedRequest] = []
        self._steps: deque[_Step] = deque()
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self) -> "ScriptedModelServer":
        server = self

        class Handler(_Handler):
            scripted = server

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="scripted-model", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    @property
    def port(self) -> int:
        assert self._httpd is not None, "start() the server first"
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        """The base URL an OpenAI client takes (`…/v1`)."""
        return f"http://127.0.0.1:{self.port}/v1"

    # --- scripting -------------------------------------------------------------------------------

    def reply(self, content: str | None = None, *, tool_calls: list[dict[str, Any]] | None = None,
              usage: tuple[int, int] = (10, 5), finish_reason: str | None = None, model: str | None = None,
              delay: float = 0.0) -> None:
        """Queue an assistant message. tool_calls: [{"name", "arguments" (dict or raw str), "id"?}]."""
        calls = []
        for i, call in enumerate(tool_calls or []):
            arguments = call.get("arguments", {})
            calls.append({
                "id": call.get("id") or f"call_{i}_{secrets.token_hex(4)}",
                "type": "function",
                "function": {"name": call["name"],
                             "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments)},
            })
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if calls:
            message["tool_calls"] = calls
        self._push(_Step("reply", delay=delay, payload=message, usage=usage, model=model,
                         finish_reason=finish_reason or ("tool_calls" if calls else "stop")))

    def reply_json(self, obj: Any, **kwargs: Any) -> None:
        """Queue an assistant message whose content is `obj` as JSON text."""
        self.reply(json.dumps(obj), **kwargs)

    def fail(self, status: int = 500, *, message: str = "scripted failure", times: int = 1,
             delay: float = 0.0) -> None:
        """Queue `times` error answers with an OpenAI-style error body."""
        body = {"error": {"message": message, "type": "server_error" if status >= 500 else "invalid_request_error",
                          "code": None}}
        for _ in range(times):
            self._push(_Step("error", status=status, payload=body, delay=delay))

    def garbage(self, body: bytes = b"this is not json", *, status: int = 200,
                content_type: str = "application/json") -> None:
        """Queue a raw answer (by default a 200 whose body is not JSON)."""
        self._push(_Step("raw", status=status, payload=body, extra={"content_type": content_type}))

    def reply_raw(self, obj: Any, *, status: int = 200) -> None:
        """Queue a JSON answer sent as is (e.g. valid JSON of the wrong shape)."""
        self.garbage(json.dumps(obj).encode(), status=status)

    def pending(self) -> int:
        with self._lock:
            return len(self._steps)

    def _push(self, step: _Step) -> None:
        with self._lock:
            self._steps.append(step)

    def _next(self) -> _Step | None:
        with self._lock:
            return self._steps.popleft() if self._steps else None

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)


class _Handler(BaseHTTPRequestHandler):
    scripted: ScriptedModelServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass

    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout test)

    def do_GET(self) -> None:
        if self.path.rstrip("/") == "/v1/models":
            body = {"object": "list", "data": [{"id": self.scripted.model, "object": "model", "created": 0,
                                                "owned_by": "kf-tests"}]}
            self._send(200, json.dumps(body).encode())
        else:
            self._send(404, b'{"error": {"message": "not found"}}')

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        self.scripted._record(RecordedRequest(
            method="POST", path=self.path, headers={k.lower(): v for k, v in self.headers.items()},
            body=body, raw=raw))
        if self.path.rstrip("/") != "/v1/chat/completions":
            self._send(404, b'{"error": {"message": "not found"}}')
            return
        step = self.scripted._next()
        if step is None:
            self._send(500, json.dumps({"error": {"message": "scripted server: no response queued"}}).encode())
            return
        if step.delay:
            time.sleep(step.delay)
        if step.kind == "error":
            self._send(step.status, json.dumps(step.payload).encode())
        elif step.kind == "raw":
            self._send(step.status, step.payload, step.extra.get("content_type", "application/json"))
        elif isinstance(body, dict) and body.get("stream"):
            self._stream(step, body)
        else:
            self._send(200, json.dumps(self._completion(step, body)).encode())

    def _completion(self, step: _Step, body: Any) -> dict[str, Any]:
        prompt, completion = step.usage
        return {
            "id": f"chatcmpl-{secrets.token_hex(8)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": step.model or self.scripted.model,
            "choices": [{"index": 0, "message": step.payload, "finish_reason": step.finish_reason,
                         "logprobs": None}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                      "total_tokens": prompt + completion},
        }

    def _stream(self, step: _Step, body: dict[str, Any]) -> None:
        """Chunked SSE as OpenAI streams it: the role, the content in pieces, each tool call's name
        then its arguments in two pieces, the finish reason, the usage (if asked for), [DONE]."""
        cid, created, model = f"chatcmpl-{secrets.token_hex(8)}", int(time.time()), step.model or self.scripted.model

        def chunk(delta: dict[str, Any], finish: str | None = None, usage: dict[str, int] | None = None,
                  choices: bool = True) -> bytes:
            data: dict[str, Any] = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}] if choices else []}
            if usage is not None:
                data["usage"] = usage
            return f"data: {json.dumps(data)}\n\n".encode()

        parts = [chunk({"role": "assistant", "content": ""})]
        content = step.payload.get("content") or ""
        for i in range(0, len(content), 7):
            parts.append(chunk({"content": content[i:i + 7]}))
        for index, call in enumerate(step.payload.get("tool_calls") or []):
            arguments = call["function"]["arguments"]
            half = len(arguments) // 2
            parts.append(chunk({"tool_calls": [{"index": index, "id": call["id"], "type": "function",
                                                "function": {"name": call["function"]["name"],
                                                             "arguments": arguments[:half]}}]}))
            parts.append(chunk({"tool_calls": [{"index": index, "function": {"arguments": arguments[half:]}}]}))
        parts.append(chunk({}, finish=step.finish_reason))
        if (body.get("stream_options") or {}).get("include_usage"):
            prompt, completion = step.usage
            parts.append(chunk({}, usage={"prompt_tokens": prompt, "completion_tokens": completion,
                                          "total_tokens": prompt + completion}, choices=False))
        parts.append(b"data: [DONE]\n\n")
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        try:
            for part in parts:
                self.wfile.write(part)
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass

"""A scripted OpenAI-compatible chat server on loopback, for tests of anything that talks to a model.

Tests queue the replies the "model" gives, in order, and afterwards read what kf actually sent:

    server = ScriptedModelServer().start()
    server.reply("hello", usage=(12, 3))                       # plain text
    server.reply(tool_calls=[{"name": "read_file", "arguments": {"path": "a.py"}}])
    server.fail(500)                                             # an upstream error (JSON error body)
    server.fail(429, retry_after="1")                            # … with a Retry-After header
    server.fail(404, message="The model `x` does not exist", code="model_not_found")
    server.garbage(b"<html>oops")                                # 200 with a body that is not JSON
    server.reply_raw({"id": "x", "object": "chat.completion"})   # valid JSON of the wrong shape
    server.reply("late", delay=5)                                # answers after 5 s (timeouts)
    server.reply("slow words", chunk_delay=0.2)                  # streamed: a pause between chunks
    server.reply("cut short", break_after=3)                     # streamed: the connection drops after 3 chunks
    server.reply_stream({"choices": [...]}, ...)                 # streamed: exactly these chunks, then [DONE]
    server.hang(30)                                              # reads the request, answers nothing for 30 s
    ...
    server.requests[0].body["messages"], server.requests[0].headers["authorization"]
    server.requests[0].received_at                               # time.monotonic() when it arrived
    server.requests[0].client_gone.wait(5)                       # kf closed the connection before the end
    server.reset()                                               # forget queued steps and requests
    server.stop()

`POST /v1/chat/completions` pops the next scripted step; with nothing queued it answers 500 with a
message saying so (a test that forgot to script a reply fails loudly instead of hanging). Requests
with `"stream": true` are answered as Server-Sent Events chunks in chunked transfer encoding (so a
dropped connection is visibly incomplete): the role, the content in pieces, the tool calls (parallel
calls interleaved: every call's name and first half of its arguments, then every second half), the
finish reason, usage when `stream_options.include_usage`, then `[DONE]`, as OpenAI does.
`GET /v1/models` lists the one model.

Waits (`delay`, `chunk_delay`, `hang`) end early when kf closes the connection (recorded in
`client_gone`) or when the server stops, so `stop()` returns promptly. The server speaks plain HTTP
on 127.0.0.1, so another process (a Celery worker) can use it through its `url`. Plain `http.server`
in daemon threads: no dependency beyond the standard library.
"""

import json
import secrets
import select
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# How often a wait looks for a closed connection or a stopping server.
POLL_SECONDS = 0.05


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]  # lower-cased names
    body: Any  # the parsed JSON body (None when it was not JSON)
    raw: bytes
    received_at: float = 0.0  # time.monotonic() when the request had been read
    client_gone: threading.Event = field(default_factory=threading.Event, repr=False)


@dataclass
class _Step:
    kind: str  # "reply" | "error" | "raw" | "stream" | "hang"
    delay: float = 0.0
    status: int = 200
    payload: Any = None  # "reply": the message; "error": JSON body; "raw": bytes; "stream": chunk dicts
    usage: tuple[int, int] = (0, 0)
    finish_reason: str | None = None
    model: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    chunk_delay: float = 0.0
    break_after: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class ScriptedModelServer:
    def __init__(self, *, model: str = "scripted-model-1", api_key: str | None = None) -> None:
        self.model = model
        self._initial_model = model
        self.api_key = api_key or f"sk-test-{secrets.token_hex(12)}"
        self.requests: list[RecordedRequest] = []
        self._steps: deque[_Step] = deque()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self) -> "ScriptedModelServer":
        server = self

        class Handler(_Handler):
            scripted = server

        self._stopping.clear()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True  # stop() must not wait for a handler that is hanging
        # A short poll so that stop() (shutdown() waits for the loop to look) is quick.
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": POLL_SECONDS},
                                        name="scripted-model", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # ends every wait of every handler
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def reset(self) -> None:
        """Forget queued steps and recorded requests, and serve the initial model again: a server shared
        by many tests starts each one clean."""
        with self._lock:
            self._steps.clear()
            self.requests = []
            self.model = self._initial_model

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
              delay: float = 0.0, chunk_delay: float = 0.0, break_after: int | None = None) -> None:
        """Queue an assistant message. tool_calls: [{"name", "arguments" (dict or raw str), "id"?}].
        Streamed only: `chunk_delay` pauses between chunks, `break_after` drops the connection after
        that many chunks (the role chunk is the first)."""
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
                         finish_reason=finish_reason or ("tool_calls" if calls else "stop"),
                         chunk_delay=chunk_delay, break_after=break_after))

    def reply_json(self, obj: Any, **kwargs: Any) -> None:
        """Queue an assistant message whose content is `obj` as JSON text."""
        self.reply(json.dumps(obj), **kwargs)

    def reply_stream(self, *chunks: dict[str, Any], chunk_delay: float = 0.0, break_after: int | None = None) -> None:
        """Queue a streamed answer of exactly these chunks (each the `data:` object; id, object, created
        and model are filled in where missing), then `[DONE]`: for shapes `reply` does not make."""
        self._push(_Step("stream", payload=list(chunks), chunk_delay=chunk_delay, break_after=break_after))

    def fail(self, status: int = 500, *, message: str = "scripted failure", times: int = 1,
             delay: float = 0.0, code: str | None = None, retry_after: str | None = None,
             headers: dict[str, str] | None = None) -> None:
        """Queue `times` error answers with an OpenAI-style error body (and `Retry-After: retry_after`)."""
        body = {"error": {"message": message, "type": "server_error" if status >= 500 else "invalid_request_error",
                          "code": code}}
        extra_headers = dict(headers or {})
        if retry_after is not None:
            extra_headers["Retry-After"] = retry_after
        for _ in range(times):
            self._push(_Step("error", status=status, payload=body, delay=delay, headers=extra_headers))

    def garbage(self, body: bytes = b"this is not json", *, status: int = 200,
                content_type: str = "application/json") -> None:
        """Queue a raw answer (by default a 200 whose body is not JSON)."""
        self._push(_Step("raw", status=status, payload=body, extra={"content_type": content_type}))

    def reply_raw(self, obj: Any, *, status: int = 200) -> None:
        """Queue a JSON answer sent as is (e.g. valid JSON of the wrong shape)."""
        self.garbage(json.dumps(obj).encode(), status=status)

    def hang(self, seconds: float) -> None:
        """Queue a request that is read and then answered with nothing for `seconds` (a model that hangs
        before its first byte); afterwards the connection is closed without an answer."""
        self._push(_Step("hang", delay=seconds))

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
    recorded: RecordedRequest | None = None

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass

    def _client_closed(self) -> bool:
        """True when kf has closed its end: the socket reads as end-of-file (it sends nothing while it
        waits for an answer, so readable means closed)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    def _wait(self, seconds: float) -> bool:
        """Wait up to `seconds`; False (and the request marked `client_gone`) as soon as kf hangs up,
        False too when the server stops."""
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            if self._client_closed():
                self._gone()
                return False
            if self.scripted._stopping.wait(min(POLL_SECONDS, remaining)):
                self.close_connection = True
                return False
        return True

    def _gone(self) -> None:
        self.close_connection = True
        if self.recorded is not None:
            self.recorded.client_gone.set()

    def _send(self, status: int, body: bytes, content_type: str = "application/json",
              headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            self._gone()  # the client gave up (a timeout test)

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
        self.recorded = RecordedRequest(
            method="POST", path=self.path, headers={k.lower(): v for k, v in self.headers.items()},
            body=body, raw=raw, received_at=time.monotonic())
        self.scripted._record(self.recorded)
        if self.path.rstrip("/") != "/v1/chat/completions":
            self._send(404, b'{"error": {"message": "not found"}}')
            return
        step = self.scripted._next()
        if step is None:
            self._send(500, json.dumps({"error": {"message": "scripted server: no response queued"}}).encode())
            return
        if step.delay and not self._wait(step.delay):
            return
        if step.kind == "hang":
            self.close_connection = True
        elif step.kind == "error":
            self._send(step.status, json.dumps(step.payload).encode(), headers=step.headers)
        elif step.kind == "raw":
            self._send(step.status, step.payload, step.extra.get("content_type", "application/json"))
        elif step.kind == "stream":
            self._stream(step, [self._chunk_bytes(c, step) for c in step.payload] + [b"data: [DONE]\n\n"])
        elif isinstance(body, dict) and body.get("stream"):
            self._stream(step, self._reply_chunks(step, body))
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

    def _chunk_bytes(self, data: dict[str, Any], step: _Step) -> bytes:
        full = {"id": "chatcmpl-scripted", "object": "chat.completion.chunk", "created": int(time.time()),
                "model": step.model or self.scripted.model, **data}
        return f"data: {json.dumps(full)}\n\n".encode()

    def _reply_chunks(self, step: _Step, body: dict[str, Any]) -> list[bytes]:
        """A message as OpenAI streams it: the role, the content in pieces, the tool calls (id and name
        in the first piece only; parallel calls interleaved), the finish reason, the usage (if asked
        for), [DONE]."""
        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            return self._chunk_bytes({"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}, step)

        parts = [chunk({"role": "assistant", "content": ""})]
        content = step.payload.get("content") or ""
        for i in range(0, len(content), 7):
            parts.append(chunk({"content": content[i:i + 7]}))
        calls = step.payload.get("tool_calls") or []
        for index, call in enumerate(calls):
            arguments = call["function"]["arguments"]
            parts.append(chunk({"tool_calls": [{"index": index, "id": call["id"], "type": "function",
                                                "function": {"name": call["function"]["name"],
                                                             "arguments": arguments[:len(arguments) // 2]}}]}))
        for index, call in enumerate(calls):
            arguments = call["function"]["arguments"]
            parts.append(chunk({"tool_calls": [{"index": index,
                                                "function": {"arguments": arguments[len(arguments) // 2:]}}]}))
        parts.append(chunk({}, finish=step.finish_reason))
        if (body.get("stream_options") or {}).get("include_usage"):
            prompt, completion = step.usage
            parts.append(self._chunk_bytes({"choices": [], "usage": {
                "prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}}, step))
        parts.append(b"data: [DONE]\n\n")
        return parts

    def _stream(self, step: _Step, parts: list[bytes]) -> None:
        """Send `parts` as SSE in chunked encoding; with `break_after`, close after that many parts
        without the final empty chunk, so the client sees a body cut short."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        try:
            for n, part in enumerate(parts):
                if step.break_after is not None and n >= step.break_after:
                    return
                if n and step.chunk_delay and not self._wait(step.chunk_delay):
                    return
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            self._gone()

"""A local HTTP server that speaks enough of the OpenAI chat-completions API for tests.

Usage::

    with FakeChatServer(script=[...], default=fn) as srv:
        client_base_url = srv.base_url          # http://127.0.0.1:<port>/v1
        ...
        srv.requests                           # every request received (path, headers, body)

Each POST /v1/chat/completions consumes the next step of ``script``; when the script is used up,
``default(body)`` (a callable returning a step) answers. A step is a dict:

- ``{"content": str | dict}``: 200 with that message content (a dict is JSON-encoded);
  optional ``usage`` {"prompt_tokens", "completion_tokens"} (default: 100 / 20), ``finish_reason``.
- ``{"status": 429 | 500 | ..., "body": {...}, "headers": {...}}``: an error answer.
- ``{"status": 401, "echo_auth": True}``: an error whose body echoes the Authorization header
  (a hostile server; the client must not leak it).
- ``{"sleep": seconds, ...}``: wait first (to go past the client's timeout), then answer the rest.
- a callable: ``step(body) -> step``.

``reject_response_format``: a set of response_format types ("json_schema", "json_object") the
server answers with HTTP 400 *without* consuming a script step, like servers that lack the feature.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler

try:
    from tests.loopback_server import LoopbackServer
except ImportError:  # run from inside tests/
    from loopback_server import LoopbackServer
from typing import Any, Callable


class FakeChatServer(LoopbackServer):
    def __init__(self, script: list[Any] | None = None, default: Callable[[dict], Any] | None = None,
                 reject_response_format: set[str] | None = None):
        self.script = list(script or [])
        self.default = default
        self.reject_response_format = set(reject_response_format or ())
        self.requests: list[dict[str, Any]] = []
        self.responses: list[dict[str, Any]] = []  # what was sent back: status + body text
        self._lock = threading.Lock()

    # -- lifecycle -----------------------------------------------------------------------------

    def handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server naming
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw or b"{}")
                except json.JSONDecodeError:
                    body = {"_raw": raw.decode("utf-8", "replace")}
                server._handle(self, body)

        return Handler





    @property
    def chat_requests(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["path"].endswith("/chat/completions")]

    # -- answering -----------------------------------------------------------------------------

    def _next_step(self, body: dict[str, Any]) -> Any:
        with self._lock:
            if self.script:
                step = self.script.pop(0)
            elif self.default is not None:
                step = self.default
            else:
                step = {"status": 500, "body": {"error": {"message": "fake server: script exhausted"}}}
        if callable(step):
            step = step(body)
        return step

    def _handle(self, h: BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
        with self._lock:
            self.requests.append({"path": h.path, "headers": {k.lower(): v for k, v in h.headers.items()}, "body": body,
                                  "time": time.monotonic()})
        if not h.path.endswith("/chat/completions"):
            return self._reply(h, 404, {"error": {"message": f"no route {h.path}"}})
        rf = (body.get("response_format") or {}).get("type")
        if rf and rf in self.reject_response_format:
            return self._reply(h, 400, {"error": {"message": f"response_format {rf} is not supported",
                                                  "type": "invalid_request_error", "param": "response_format"}})
        step = dict(self._next_step(body))
        if step.get("sleep"):
            time.sleep(float(step["sleep"]))
        if "status" in step and step["status"] != 200:
            payload = step.get("body") or {"error": {"message": f"fake error {step['status']}", "type": "server_error"}}
            if step.get("echo_auth"):
                payload = {"error": {"message": f"bad key {h.headers.get('Authorization')}", "type": "invalid_request_error"}}
            return self._reply(h, int(step["status"]), payload, step.get("headers"))
        content = step.get("content", "")
        if not isinstance(content, str):
            content = json.dumps(content, ensure_ascii=False)
        usage = step.get("usage") or {"prompt_tokens": 100, "completion_tokens": 20}
        payload = {
            "id": f"chatcmpl-fake-{len(self.requests)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "fake"),
            "choices": [{"index": 0, "finish_reason": step.get("finish_reason", "stop"),
                         "message": {"role": "assistant", "content": content}}],
            "usage": {**usage, "total_tokens": usage["prompt_tokens"] + usage["completion_tokens"]},
        }
        return self._reply(h, 200, payload)

    def _reply(self, h: BaseHTTPRequestHandler, status: int, payload: dict[str, Any],
               headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        with self._lock:
            self.responses.append({"status": status, "body": data.decode("utf-8")})
        try:
            h.send_response(status)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                h.send_header(k, v)
            h.end_headers()
            h.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout test)

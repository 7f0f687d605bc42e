"""A tiny local server that speaks the OpenAI embeddings API, for tests.

``POST /v1/embeddings`` answers in the OpenAI shape (``data[i].embedding``/``index``, ``model``,
``usage``), with deterministic vectors derived from a hash of each input text, in ``float`` or
``base64`` encoding. Failures are scriptable: ``server.script(["429", "500", "sleep:2", "400"])``
makes the next requests fail in that order (``sleep:S`` sleeps S seconds before answering normally,
to trigger client timeouts); after the script runs out requests succeed.

Usage::

    with FakeEmbeddingsServer(dim=32) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="x")
        ...
        server.requests  # every request body received, in order
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler

try:
    from tests.loopback_server import LoopbackServer
except ImportError:  # run from inside tests/
    from loopback_server import LoopbackServer

import numpy as np


def fake_vector(text: str, dim: int) -> np.ndarray:
    """Deterministic unit vector for a text (the same text always gets the same vector)."""
    seed = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")
    v = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


class FakeEmbeddingsServer(LoopbackServer):
    def __init__(self, dim: int = 32, api_key: str | None = None):
        self.dim = dim
        self.api_key = api_key  # when set, requests without "Bearer <api_key>" get 401
        self.requests: list[dict] = []
        self.auth_headers: list[str] = []
        self._script: list[str] = []
        self._lock = threading.Lock()

    # -- control -------------------------------------------------------------------------------
    def script(self, steps: list[str]) -> None:
        with self._lock:
            self._script = list(steps)

    def _next_step(self) -> str | None:
        with self._lock:
            return self._script.pop(0) if self._script else None


    def handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output quiet
                pass

            def _send(self, status: int, body: dict, headers: dict | None = None) -> None:
                raw = json.dumps(body).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(raw)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(raw)
                except (BrokenPipeError, ConnectionResetError):  # client gave up (timeout test)
                    pass

            def do_POST(self):  # noqa: N802 (http.server naming)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                if self.path.rstrip("/") != "/v1/embeddings":
                    return self._send(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
                try:
                    body = json.loads(raw)
                except json.JSONDecodeError:
                    return self._send(400, {"error": {"message": "body is not JSON", "type": "invalid_request_error"}})
                with server._lock:
                    server.requests.append(body)
                    server.auth_headers.append(self.headers.get("Authorization", ""))
                if server.api_key is not None and self.headers.get("Authorization") != f"Bearer {server.api_key}":
                    return self._send(401, {"error": {"message": "Incorrect API key provided",
                                                      "type": "invalid_request_error", "code": "invalid_api_key"}})
                step = server._next_step()
                if step == "429":
                    return self._send(429, {"error": {"message": "Rate limit reached", "type": "rate_limit_error"}},
                                      {"Retry-After": "0"})
                if step in ("500", "502", "503"):
                    return self._send(int(step), {"error": {"message": "upstream hiccup", "type": "server_error"}})
                if step == "400":
                    return self._send(400, {"error": {"message": "bad input", "type": "invalid_request_error"}})
                if step and step.startswith("sleep:"):
                    time.sleep(float(step.split(":", 1)[1]))
                inputs = body.get("input")
                if isinstance(inputs, str):
                    inputs = [inputs]
                if not isinstance(inputs, list) or any((not isinstance(t, str)) or t == "" for t in inputs):
                    return self._send(400, {"error": {"message": "'$.input' is invalid", "type": "invalid_request_error"}})
                dim = int(body.get("dimensions") or server.dim)
                fmt = body.get("encoding_format") or "float"
                data = []
                for i, text in enumerate(inputs):
                    v = fake_vector(text, dim)
                    emb = base64.b64encode(v.tobytes()).decode() if fmt == "base64" else v.tolist()
                    data.append({"object": "embedding", "index": i, "embedding": emb})
                data.reverse()  # real servers do not promise order; clients must sort by index
                tokens = sum(max(1, len(t) // 4) for t in inputs)
                return self._send(200, {"object": "list", "data": data, "model": body.get("model"),
                                        "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

        return Handler




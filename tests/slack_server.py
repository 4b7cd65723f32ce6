"""A real local HTTP server that behaves like Slack's incoming webhooks, for delivery tests.

Answers 200 "ok" by default; a test can queue other answers (429 with Retry-After, 500,
a slow answer), change the answer to every request from now on (``answer_all``; ``hang=True``
reads the request and closes the connection unanswered after ``delay``, as a receiver that times
out does), or stop it entirely (connection refused) and start it again on the same port.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class SlackLikeServer:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.accepted: list[dict[str, Any]] = []
        self.script: list[tuple[int, dict[str, str], float]] = []  # (status, headers, delay)
        self.default: tuple[int, dict[str, str], float] = (200, {}, 0.0)
        self.hang = False
        self.lock = threading.Lock()
        self.port = 0
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/services/T000/B000/s3cr3t-token"

    def respond(
        self, status: int, headers: dict[str, str] | None = None, delay: float = 0.0, times: int = 1
    ) -> None:
        with self.lock:
            self.script += [(status, headers or {}, delay)] * times

    def answer_all(
        self, status: int, headers: dict[str, str] | None = None, *, delay: float = 0.0, hang: bool = False
    ) -> None:
        """Answer every request that the script does not cover this way (or hang), from now on."""
        with self.lock:
            self.default = (status, headers or {}, delay)
            self.hang = hang

    def start(self) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with outer.lock:
                    hang = outer.hang and not outer.script
                    status, headers, delay = outer.script.pop(0) if outer.script else outer.default
                    record = {
                        "path": self.path,
                        "headers": dict(self.headers),
                        "body": body,
                        "json": json.loads(body),
                        "status": "hung" if hang else status,
                        "at": time.time(),
                    }
                    outer.requests.append(record)
                if delay:
                    time.sleep(delay)
                if hang:
                    self.close_connection = True
                    return
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(b"ok" if status == 200 else b"rate_limited" if status == 429 else b"error")
                if status == 200:
                    with outer.lock:
                        outer.accepted.append(record)

        class Server(ThreadingHTTPServer):
            def handle_error(
                self, request: Any, client_address: Any
            ) -> None:  # a client that gave up: expected
                import sys

                if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
                    super().handle_error(request, client_address)

        self._server = Server(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def texts(self) -> list[str]:
        with self.lock:
            return [r["json"].get("text", "") for r in self.accepted]

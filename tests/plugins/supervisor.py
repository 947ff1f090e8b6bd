"""A fake Home Assistant Supervisor: a real HTTP server on loopback answering ``/services/mqtt``.

It speaks the Supervisor's v1 envelopes (``{"result": "ok", "data": {...}}`` and
``{"result": "error", "message": ...}``) and checks the bearer token like the real one, so the
gateway's own HTTP client is exercised end to end. It runs in a thread, so it serves sync tests,
async tests and gateway subprocesses alike::

    def test_x(fake_supervisor):
        fake_supervisor.mqtt = {"host": "127.0.0.1", "port": 1883, "ssl": False, ...}
        fake_supervisor.queue(400, 400)        # "not registered yet" twice, then .status
        env = fake_supervisor.env()            # SUPERVISOR_TOKEN + BLUPOW_SUPERVISOR_URL
        ...
        assert fake_supervisor.requests[0].authorization == f"Bearer {fake_supervisor.token}"
"""

from __future__ import annotations

import json
import secrets
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

ERROR_MESSAGES = {
    400: "Service not enabled",
    401: "Unauthorized",
    403: "No access to mqtt service!",
    404: "Not found",
    500: "Internal server error",
}


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]

    @property
    def authorization(self) -> str | None:
        return self.headers.get("authorization")


@dataclass
class FakeSupervisor:
    """State of the fake; change ``mqtt``/``status`` or :meth:`queue` answers at any time."""

    url: str = ""
    token: str = field(default_factory=lambda: secrets.token_hex(16))
    # The service data a 200 returns (the shape Mosquitto registers).
    mqtt: dict[str, Any] = field(
        default_factory=lambda: {
            "host": "core-mosquitto",
            "port": 1883,
            "ssl": False,
            "protocol": "3.1.1",
            "username": "addons",
            "password": secrets.token_hex(32),
            "addon": "core_mosquitto",
        }
    )
    status: int = 200
    requests: list[RecordedRequest] = field(default_factory=list)
    _queued: deque[int] = field(default_factory=deque)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def queue(self, *statuses: int) -> None:
        """Answer the next requests with these statuses (then fall back to ``status``)."""
        with self._lock:
            self._queued.extend(statuses)

    def env(self) -> dict[str, str]:
        """The environment an add-on container would see."""
        return {"SUPERVISOR_TOKEN": self.token, "BLUPOW_SUPERVISOR_URL": self.url}

    def set_broker(
        self, host: str, port: int, username: str | None = None, password: str | None = None, *, ssl: bool = False
    ) -> None:
        """Register a (real) broker the way Mosquitto's discovery script does."""
        data: dict[str, Any] = {"host": host, "port": port, "ssl": ssl, "protocol": "3.1.1", "addon": "core_mosquitto"}
        if username is not None:
            data["username"] = username
        if password is not None:
            data["password"] = password
        self.mqtt = data

    def _answer(self, request: RecordedRequest) -> tuple[int, dict[str, Any]]:
        with self._lock:
            self.requests.append(request)
            status = self._queued.popleft() if self._queued else self.status
        if request.authorization != f"Bearer {self.token}":
            status = 401
        elif request.method != "GET" or request.path.rstrip("/") != "/services/mqtt":
            status = 404
        if status == 200:
            return 200, {"result": "ok", "data": dict(self.mqtt)}
        return status, {"result": "error", "message": ERROR_MESSAGES.get(status, "error")}


def _handler_for(fake: FakeSupervisor) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            self._reply()

        def do_POST(self) -> None:
            self._reply()

        def _reply(self) -> None:
            headers = {k.lower(): v for k, v in self.headers.items()}
            status, body = fake._answer(RecordedRequest(self.command, self.path, headers))
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(payload)
            self.close_connection = True

        def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
            return

    return Handler


@pytest.fixture
def fake_supervisor() -> Iterator[FakeSupervisor]:
    fake = FakeSupervisor()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(fake))
    server.daemon_threads = True
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    # A short poll interval keeps shutdown() (and so every test teardown) fast.
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), name="fake-supervisor", daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

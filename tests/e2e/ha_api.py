"""A small client for a running Home Assistant: the REST and WebSocket calls its own frontend makes.

Synchronous on purpose (stdlib ``urllib`` and ``websockets.sync``): the end-to-end tests and the
demo drive Home Assistant step by step, like a user clicking through the UI, and every call has a
timeout.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from websockets.exceptions import WebSocketException
from websockets.sync.client import ClientConnection, connect

from .procs import StackError, wait_until

HTTP_TIMEOUT = 20.0
WS_TIMEOUT = 20.0
# Flows whose steps wait for the gateway (add/remove device) show progress for at most the
# integration's command timeout (10 s); allow that plus Home Assistant's own scheduling.
FLOW_PROGRESS_TIMEOUT = 75.0  # an add waits up to 60 s for the first contact (config_flow.FIRST_CONTACT_TIMEOUT)


class HAError(StackError):
    """Home Assistant answered a call with an unexpected status or payload."""


@dataclass(frozen=True)
class Tokens:
    access_token: str
    refresh_token: str | None
    expires_in: int
    client_id: str

    @classmethod
    def from_answer(cls, answer: Mapping[str, Any], client_id: str) -> Tokens:
        return cls(answer["access_token"], answer.get("refresh_token"), int(answer["expires_in"]), client_id)


class HomeAssistantAPI:
    """REST calls against one Home Assistant; ``token`` is sent as the bearer token once set."""

    def __init__(self, base_url: str, token: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token

    # -- plumbing ---------------------------------------------------------------------------------

    @property
    def client_id(self) -> str:
        """The OAuth client id the frontend served from this address uses."""
        return f"{self.base_url}/"

    def call(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        *,
        form: bool = False,
        auth: bool = True,
        expect: tuple[int, ...] = (200, 201),
        timeout: float = HTTP_TIMEOUT,
    ) -> Any:
        """One request; the decoded JSON answer (None for an empty one). HAError on another status."""
        status, answer = self.raw_call(method, path, body, form=form, auth=auth, timeout=timeout)
        if status not in expect:
            raise HAError(f"{method} {path} answered {status}: {answer!r}")
        return answer

    def raw_call(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        *,
        form: bool = False,
        auth: bool = True,
        timeout: float = HTTP_TIMEOUT,
    ) -> tuple[int, Any]:
        headers = {"Accept": "application/json"}
        data: bytes | None = None
        if body is not None:
            if form:
                data = urllib.parse.urlencode(body).encode()
                headers["Content-Type"] = "application/x-www-form-urlencoded"
            else:
                data = json.dumps(body).encode()
                headers["Content-Type"] = "application/json"
        if auth and self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(f"{self.base_url}{path}", data=data, headers=headers, method=method)  # noqa: S310 - http only
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
                return response.status, _decode(response.read())
        except urllib.error.HTTPError as err:
            return err.code, _decode(err.read())

    # -- onboarding and login ---------------------------------------------------------------------

    def onboarding_steps(self) -> dict[str, bool]:
        """``{"user": False, "core_config": False, ...}``; raises while Home Assistant is starting."""
        answer = self.call("GET", "/api/onboarding", auth=False, timeout=5)
        return {step["step"]: bool(step["done"]) for step in answer}

    def onboard(self, name: str, username: str, password: str, language: str = "en") -> Tokens:
        """Every onboarding step, in the order the frontend's wizard makes the calls."""
        answer = self.call(
            "POST",
            "/api/onboarding/users",
            {
                "client_id": self.client_id,
                "name": name,
                "username": username,
                "password": password,
                "language": language,
            },
            auth=False,
        )
        tokens = self.exchange_code(answer["auth_code"])
        self.token = tokens.access_token
        self.call("POST", "/api/onboarding/core_config", {})
        self.call("POST", "/api/onboarding/analytics", {})
        self.call(
            "POST",
            "/api/onboarding/integration",
            {"client_id": self.client_id, "redirect_uri": f"{self.base_url}/?auth_callback=1"},
        )
        return tokens

    def exchange_code(self, code: str) -> Tokens:
        answer = self.call(
            "POST",
            "/auth/token",
            {"grant_type": "authorization_code", "code": code, "client_id": self.client_id},
            form=True,
            auth=False,
        )
        return Tokens.from_answer(answer, self.client_id)

    def login(self, username: str, password: str) -> Tokens:
        """The login page's calls: start a login flow, post the credentials, trade the code for tokens."""
        flow = self.call(
            "POST",
            "/auth/login_flow",
            {
                "client_id": self.client_id,
                "handler": ["homeassistant", None],
                "redirect_uri": f"{self.base_url}/?auth_callback=1",
            },
            auth=False,
        )
        result = self.call(
            "POST",
            f"/auth/login_flow/{flow['flow_id']}",
            {"client_id": self.client_id, "username": username, "password": password},
            auth=False,
        )
        if result.get("type") != "create_entry":
            raise HAError(f"login as {username!r} failed: {result!r}")
        return self.exchange_code(result["result"])

    # -- config entries and flows -----------------------------------------------------------------

    def config_entries(self, domain: str | None = None) -> list[dict[str, Any]]:
        query = f"?domain={urllib.parse.quote(domain)}" if domain else ""
        entries: list[dict[str, Any]] = self.call("GET", f"/api/config/config_entries/entry{query}")
        return entries

    def start_flow(self, handler: str) -> dict[str, Any]:
        result: dict[str, Any] = self.call(
            "POST", "/api/config/config_entries/flow", {"handler": handler, "show_advanced_options": False}
        )
        return result

    def configure_flow(self, flow_id: str, data: Mapping[str, Any], *, options: bool = False) -> dict[str, Any]:
        result: dict[str, Any] = self.call("POST", f"{_flow_base(options)}/{flow_id}", dict(data))
        return result

    def start_options_flow(self, entry_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.call(
            "POST", "/api/config/config_entries/options/flow", {"handler": entry_id, "show_advanced_options": False}
        )
        return result

    def finish_progress(
        self, result: dict[str, Any], *, options: bool = False, timeout: float = FLOW_PROGRESS_TIMEOUT
    ) -> dict[str, Any]:
        """While a flow shows progress, re-read it (as the frontend does on "progressed") until it ends."""
        flow_id = result["flow_id"]
        deadline = time.monotonic() + timeout
        while result.get("type") in ("progress", "progress_done"):
            if time.monotonic() > deadline:
                raise HAError(f"flow {flow_id} still shows progress after {timeout:g} s: {result!r}")
            time.sleep(0.2)
            result = self.call("GET", f"{_flow_base(options)}/{flow_id}")
        return result

    # -- states and services ----------------------------------------------------------------------

    def states(self) -> dict[str, dict[str, Any]]:
        return {state["entity_id"]: state for state in self.call("GET", "/api/states")}

    def state(self, entity_id: str) -> dict[str, Any] | None:
        status, answer = self.raw_call("GET", f"/api/states/{entity_id}")
        if status == 404:
            return None
        if status != 200:
            raise HAError(f"GET /api/states/{entity_id} answered {status}: {answer!r}")
        result: dict[str, Any] = answer
        return result

    def call_service(self, domain: str, service: str, data: Mapping[str, Any]) -> Any:
        return self.call("POST", f"/api/services/{domain}/{service}", dict(data))

    def error_log(self) -> str:
        status, answer = self.raw_call("GET", "/api/error_log")
        return answer if status == 200 and isinstance(answer, str) else ""

    @contextlib.contextmanager
    def websocket(self) -> Iterator[HAWebSocket]:
        socket = HAWebSocket(self.base_url, self._require_token())
        try:
            yield socket
        finally:
            socket.close()

    def ws(self, command: str, **payload: Any) -> Any:
        """One WebSocket command on a fresh connection."""
        with self.websocket() as socket:
            return socket.call(command, **payload)

    def _require_token(self) -> str:
        if not self.token:
            raise HAError("not logged in")
        return self.token

    # -- waiting ----------------------------------------------------------------------------------

    def wait_started(self, timeout: float) -> dict[str, bool]:
        """Until the HTTP API answers (onboarding status needs no login)."""
        return wait_until(self.onboarding_steps, timeout, "Home Assistant's HTTP API")

    def wait_running(self, timeout: float) -> None:
        """Until Home Assistant reports it finished starting (``RUNNING``)."""
        wait_until(
            lambda: self.call("GET", "/api/config", timeout=5).get("state") == "RUNNING",
            timeout,
            "Home Assistant to finish starting",
        )


class HAWebSocket:
    """An authenticated WebSocket API connection; ``call`` sends one command and returns its result."""

    def __init__(self, base_url: str, token: str) -> None:
        url = base_url.replace("http://", "ws://", 1).replace("https://", "wss://", 1) + "/api/websocket"
        self._ids = itertools.count(1)
        self._exit = contextlib.ExitStack()
        try:
            self.conn: ClientConnection = self._exit.enter_context(
                connect(url, open_timeout=WS_TIMEOUT, close_timeout=2, max_size=2**26)
            )
            self._expect("auth_required")
            self._send({"type": "auth", "access_token": token})
            self._expect("auth_ok")
        except (OSError, WebSocketException, TimeoutError) as exc:
            self.close()
            raise HAError(f"WebSocket connection to {url} failed: {exc}") from exc

    def call(self, command: str, timeout: float = WS_TIMEOUT, **payload: Any) -> Any:
        message_id = next(self._ids)
        self._send({"id": message_id, "type": command, **payload})
        deadline = time.monotonic() + timeout
        while True:
            answer = self._receive(max(0.1, deadline - time.monotonic()))
            if answer.get("id") != message_id or answer.get("type") != "result":
                continue  # an event of an earlier subscription
            if not answer.get("success"):
                raise HAError(f"WebSocket {command} failed: {answer.get('error')!r}")
            return answer.get("result")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._exit.close()

    def _send(self, message: Mapping[str, Any]) -> None:
        self.conn.send(json.dumps(message))

    def _receive(self, timeout: float) -> dict[str, Any]:
        try:
            raw = self.conn.recv(timeout=timeout)
        except TimeoutError as exc:
            raise HAError(f"no WebSocket answer within {timeout:.0f} s") from exc
        answer: dict[str, Any] = json.loads(raw)
        return answer

    def _expect(self, kind: str) -> None:
        answer = self._receive(WS_TIMEOUT)
        if answer.get("type") != kind:
            raise HAError(f"WebSocket: expected {kind}, got {answer!r}")


def _flow_base(options: bool) -> str:
    return "/api/config/config_entries/options/flow" if options else "/api/config/config_entries/flow"


def _decode(raw: bytes) -> Any:
    if not raw:
        return None
    text = raw.decode("utf-8", errors="replace")
    try:
        return json.loads(text)
    except ValueError:
        return text

"""Headless Chromium driven over the DevTools protocol: open a Home Assistant page logged in, screenshot it.

Logging in without clicking: before any page script runs, a script registered with
``Page.addScriptToEvaluateOnNewDocument`` puts the tokens into ``localStorage.hassTokens`` (where
the frontend keeps them after a normal login), so the frontend starts authenticated.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from websockets.sync.client import ClientConnection, connect

from .ha_api import Tokens
from .procs import Process, StackError, wait_until

CHROMIUM = "/usr/bin/chromium"
START_TIMEOUT = 30.0
CALL_TIMEOUT = 30.0
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-quic",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--remote-debugging-port=0",
)

# Every text node of the page, shadow roots included (the frontend is web components all the way down).
_DEEP_TEXT = """
(() => {
  const out = [];
  const walk = (root) => {
    const it = document.createTreeWalker(root, NodeFilter.SHOW_ELEMENT | NodeFilter.SHOW_TEXT);
    for (let n = it.currentNode; n; n = it.nextNode()) {
      if (n.nodeType === Node.TEXT_NODE) { const t = n.textContent.trim(); if (t) out.push(t); }
      else if (n.shadowRoot) walk(n.shadowRoot);
    }
  };
  walk(document);
  return out.join("\\n");
})()
"""


def hass_tokens(base_url: str, tokens: Tokens) -> dict[str, Any]:
    """What the frontend stores in ``localStorage.hassTokens`` after a login."""
    return {
        "hassUrl": base_url,
        "clientId": tokens.client_id,
        "access_token": tokens.access_token,
        "refresh_token": tokens.refresh_token,
        "token_type": "Bearer",
        "expires_in": tokens.expires_in,
        "expires": int(time.time() * 1000) + tokens.expires_in * 1000,
    }


class DevTools:
    """One page target of a Chromium, attached in flat mode."""

    def __init__(self, ws_url: str) -> None:
        self._exit = contextlib.ExitStack()
        self.conn: ClientConnection = self._exit.enter_context(
            connect(ws_url, open_timeout=CALL_TIMEOUT, max_size=2**27)
        )
        self._ids = itertools.count(1)
        self.session: str | None = None
        self.events: list[dict[str, Any]] = []

    def call(self, method: str, params: Mapping[str, Any] | None = None, *, browser: bool = False) -> Any:
        message_id = next(self._ids)
        message: dict[str, Any] = {"id": message_id, "method": method, "params": dict(params or {})}
        if self.session and not browser:
            message["sessionId"] = self.session
        self.conn.send(json.dumps(message))
        deadline = time.monotonic() + CALL_TIMEOUT
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise StackError(f"Chromium did not answer {method} within {CALL_TIMEOUT:g} s")
            answer = json.loads(self.conn.recv(timeout=remaining))
            if answer.get("id") != message_id:
                self.events.append(answer)
                continue
            if "error" in answer:
                raise StackError(f"Chromium {method} failed: {answer['error']}")
            return answer.get("result", {})

    def open_page(self) -> None:
        target = self.call("Target.createTarget", {"url": "about:blank"}, browser=True)
        attached = self.call("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}, browser=True)
        self.session = attached["sessionId"]
        self.call("Page.enable")
        self.call("Runtime.enable")

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        return result.get("result", {}).get("value")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._exit.close()


@contextlib.contextmanager
def chromium(log_path: Path, width: int = 1280, height: int = 1500) -> Iterator[DevTools]:
    """A fresh headless Chromium (own profile dir) and a DevTools connection to a new page."""
    if not Path(CHROMIUM).exists():
        raise StackError(f"{CHROMIUM} is not installed (scripts/setup system)")
    profile = Path(tempfile.mkdtemp(prefix="blupow-chromium-"))
    process = Process(
        "chromium",
        [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}", "about:blank"],
        log_path,
        stop_timeout=10,
    )
    devtools: DevTools | None = None
    try:
        process.start()
        port_file = profile / "DevToolsActivePort"

        def endpoint() -> str | None:
            if failure := process.exited_early():
                raise StackError(failure)
            lines = port_file.read_text().splitlines() if port_file.exists() else []
            return f"ws://127.0.0.1:{lines[0]}{lines[1]}" if len(lines) >= 2 else None

        devtools = DevTools(wait_until(endpoint, START_TIMEOUT, "Chromium's DevTools endpoint", 0.1))
        devtools.open_page()
        devtools.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )
        yield devtools
    finally:
        if devtools is not None:
            devtools.close()
        process.stop()
        shutil.rmtree(profile, ignore_errors=True)


def screenshot_logged_in(
    base_url: str,
    tokens: Tokens,
    path: str,
    dest: Path,
    expect_texts: tuple[str, ...],
    log_path: Path,
    timeout: float = 60.0,
) -> str:
    """Open ``base_url + path`` logged in, wait until every text in ``expect_texts`` shows, save a PNG.

    Returns the page's visible text. StackError (after saving what the page showed) if the texts
    never appear.
    """
    stored = json.dumps(json.dumps(hass_tokens(base_url, tokens)))  # a JS string literal of the JSON
    inject = f"if (location.origin === {json.dumps(base_url)}) {{ localStorage.setItem('hassTokens', {stored}); }}"
    with chromium(log_path) as page:
        page.call("Page.addScriptToEvaluateOnNewDocument", {"source": inject})
        page.call("Page.navigate", {"url": base_url + path})
        text = ""

        def rendered() -> bool:
            nonlocal text
            text = page.evaluate(_DEEP_TEXT) or ""
            return all(want in text for want in expect_texts)

        try:
            wait_until(rendered, timeout, f"the page to show {expect_texts}", interval=1.0)
            time.sleep(1.5)  # let the last values and icons paint
        finally:
            shot = page.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": False})
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(base64.b64decode(shot["data"]))
        return text

"""Headless Chromium driven over the DevTools protocol: open a Home Assistant page logged in, click and
type like a person, screenshot it.

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
CLICK_TIMEOUT = 30.0  # an element to appear and be uncovered (a dialog opening, a menu unfolding)
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

# Helpers for frontend pages, as one JS expression (an object of functions). The frontend is web
# components all the way down, so every query walks shadow roots too.
#   all(selector, root)  every matching element under root, in document order
#   text(root)           every text node's text (not CSS or scripts), one per line
#   find(spec)           the first visible element a spec describes (see DevTools.click)
#   point(spec)          where a person would click it: its centre, scrolled into view; or why not
_HELPERS = r"""
(() => {
  const SKIP = new Set(["STYLE", "SCRIPT", "TEMPLATE"]);
  const all = (selector, root = document) => {
    const out = [];
    const walk = (node) => {
      const it = document.createTreeWalker(node, NodeFilter.SHOW_ELEMENT);
      for (let n = it.currentNode; n; n = it.nextNode()) {
        if (n.nodeType === Node.ELEMENT_NODE && n.matches(selector)) out.push(n);
        if (n.shadowRoot) walk(n.shadowRoot);
      }
    };
    walk(root);
    return out;
  };
  const text = (root = document) => {
    const out = [];
    const filter = { acceptNode: (n) => (SKIP.has(n.nodeName) ? NodeFilter.FILTER_REJECT : NodeFilter.FILTER_ACCEPT) };
    const walk = (node) => {
      const it = document.createTreeWalker(node, NodeFilter.SHOW_ELEMENT | NodeFilter.SHOW_TEXT, filter);
      for (let n = it.currentNode; n; n = it.nextNode()) {
        if (n.nodeType === Node.TEXT_NODE) { const t = n.textContent.trim(); if (t) out.push(t); }
        else if (n.shadowRoot) walk(n.shadowRoot);
      }
    };
    walk(root);
    return out.join("\n");
  };
  const visible = (el) => { const r = el.getBoundingClientRect(); return r.width > 0 && r.height > 0; };
  const find = (spec) => {
    const scopes = spec.scope ? all(spec.scope) : [document];
    let found = scopes.flatMap((scope) => all(spec.selector, scope)).filter(visible);
    if (spec.label != null) found = found.filter((el) => [].concat(spec.label).includes(el.label));
    if (spec.text != null) found = found.filter((el) => text(el).includes(spec.text));
    let el = found[0] || null;
    if (el && spec.pick) el = all(spec.pick, el).filter((inner) => inner !== el && visible(inner))[0] || null;
    return el;
  };
  // The innermost element at a point: elementFromPoint stops at shadow hosts.
  const deepest = (x, y) => {
    let el = document.elementFromPoint(x, y);
    while (el && el.shadowRoot) {
      const inner = el.shadowRoot.elementFromPoint(x, y);
      if (!inner || inner === el) break;
      el = inner;
    }
    return el;
  };
  const within = (node, ancestor) => {
    for (let n = node; n; n = n.parentNode || n.host) if (n === ancestor) return true;
    return false;
  };
  const point = (spec) => {
    const el = find(spec);
    if (!el) return { error: "not on the page (or not visible)" };
    el.scrollIntoView({ block: "center", inline: "nearest" });
    const r = el.getBoundingClientRect();
    const x = r.left + r.width / 2, y = r.top + r.height / 2;
    const hit = deepest(x, y);  // a click lands on whatever is on top: a scrim, a menu, the element
    if (!within(hit, el)) return { error: `covered by <${hit ? hit.localName : "nothing"}>` };
    return { x, y };
  };
  return { all, text, find, point };
})()
"""

# Every text node of the page, shadow roots included (self-contained: works before the helpers are installed).
_DEEP_TEXT = f"{_HELPERS}.text(document)"


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
        """The expression's value (JSON-like); StackError when it throws, so a broken query is not a None."""
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise StackError(f"page script failed: {details.get('exception', {}).get('description') or details}")
        return result.get("result", {}).get("value")

    def add_init_script(self, source: str) -> None:
        """Run ``source`` in every document this page loads from now on, before the page's own scripts."""
        self.call("Page.addScriptToEvaluateOnNewDocument", {"source": source})

    def navigate(self, url: str) -> None:
        self.call("Page.navigate", {"url": url})

    def text(self) -> str:
        """Every text the page shows, shadow roots included."""
        return str(self.evaluate(_DEEP_TEXT) or "")

    def click(self, spec: Mapping[str, Any], timeout: float = CLICK_TIMEOUT) -> None:
        """Click an element like a person: mouse events at its centre, once nothing covers it.

        ``spec``: ``selector`` (CSS, matched in every shadow root), optionally ``scope`` (a selector
        the element must be inside), ``label`` (its ``label`` property, exactly; a list: any of
        them), ``text`` (a part of its text) and ``pick`` (a selector for the part to click inside
        the element found).
        Needs the helpers of :func:`log_in`. StackError when it is not clickable within ``timeout``.
        """
        query = f"window.__e2e.point({json.dumps(dict(spec))})"
        last: dict[str, Any] = {}

        def clickable() -> dict[str, Any] | None:
            nonlocal last
            last = self.evaluate(query) or {}
            return last if "x" in last else None

        where = wait_until(clickable, timeout, f"{dict(spec)} to be clickable", 0.2, lambda: str(last.get("error")))
        self.click_at(where["x"], where["y"])

    def click_at(self, x: float, y: float) -> None:
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1})

    def type_text(self, text: str) -> None:
        """Type into the focused field (as an input method would: one input event)."""
        self.call("Input.insertText", {"text": text})

    def screenshot(self, dest: Path) -> Path:
        shot = self.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": False})
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(base64.b64decode(shot["data"]))
        return dest

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


def log_in(page: DevTools, base_url: str, tokens: Tokens) -> None:
    """Every page of ``base_url`` opened from now on starts logged in, with the helpers as ``window.__e2e``."""
    stored = json.dumps(json.dumps(hass_tokens(base_url, tokens)))  # a JS string literal of the JSON
    page.add_init_script(
        f"if (location.origin === {json.dumps(base_url)}) {{ localStorage.setItem('hassTokens', {stored}); }}"
    )
    page.add_init_script(f"window.__e2e = {_HELPERS};")


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
    with chromium(log_path) as page:
        log_in(page, base_url, tokens)
        page.navigate(base_url + path)
        text = ""

        def rendered() -> bool:
            nonlocal text
            text = page.text()
            return all(want in text for want in expect_texts)

        try:
            wait_until(rendered, timeout, f"the page to show {expect_texts}", interval=1.0)
            time.sleep(1.5)  # let the last values and icons paint
        finally:
            page.screenshot(dest)
        return text

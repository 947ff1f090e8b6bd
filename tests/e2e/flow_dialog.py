"""Home Assistant's data entry flow dialog (config and options flows), driven in Chromium like a person.

The dialog (``dialog-data-entry-flow``) shows one step at a time, each its own element inside the
dialog's shadow root: ``step-flow-menu``, ``step-flow-form`` (an ``ha-form``), ``step-flow-progress``
(a spinner), ``step-flow-abort``, ``step-flow-create-entry``, or ``step-flow-loading`` in between.

What it showed is recorded in the page itself, every 50 ms: a step shown only for a moment (the
progress of a quick batch) is checked too, not only the steps a test waits for. Any "Translation
Error" (a missing text or an unfilled placeholder, as the frontend renders it) fails at once, and
so does a spinner that does not end.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from .browser import DevTools
from .procs import StackError

TRANSLATION_ERROR = "Translation Error"
PAGE_TIMEOUT = 60.0  # the integration page to load (the frontend compiles its scripts first)
STEP_TIMEOUT = 30.0  # a step to render after a click (the frontend's round trip to Home Assistant)
PROGRESS_TIMEOUT = 70.0  # the longest spinner: a probe (the integration gives up after 60 s)
POLL_INTERVAL = 0.2
OPEN_TIMEOUT = 5.0  # the dialog to open after Configure (it opens within a second when the click lands)

# The flow dialog's state, as one JS expression: {open, kind, text}. Uses the helpers (window.__e2e).
_FLOW_STATE = """
(() => {
  const { all, text } = window.__e2e;
  const open = (host) => host.shadowRoot && all("ha-dialog", host.shadowRoot).some((d) => d.open);
  // The frontend keeps the dialog element once created: look for it in the whole page only until then.
  let host = window.__e2eFlowHost;
  if (!host || !host.isConnected) host = window.__e2eFlowHost = all("dialog-data-entry-flow")[0] || null;
  if (!host || !open(host)) return { open: false, kind: null, text: "" };
  const step = all("*", host.shadowRoot).find((el) => el.localName.startsWith("step-flow-"));
  return { open: true, kind: step ? step.localName.slice("step-flow-".length) : null, text: text(host) };
})()
"""

# Installed in every document: records each distinct state of the open dialog (read into FlowDialog.seen).
_RECORDER = f"""
window.__e2eFlowSeen = [];
(() => {{
  let last = "";
  setInterval(() => {{
    if (!window.__e2e) return;
    const state = {_FLOW_STATE};
    const key = state.kind + "\\n" + state.text;
    if (state.open && key !== last) window.__e2eFlowSeen.push(state);
    last = state.open ? key : "";
  }}, 50);
}})();
"""
_DRAIN = "window.__e2eFlowSeen.splice(0)"

_FORM = "step-flow-form"
_BUTTONS = "mwc-button, ha-button"  # 2024.3 uses mwc-button; later frontends ha-button


class FlowError(AssertionError):
    """The dialog showed something wrong (or nothing in time); a screenshot of it was saved."""


@dataclass
class FlowDialog:
    """The flow dialog of one page; screenshots go to ``shots`` (named after the step they show)."""

    page: DevTools
    shots: Path
    seen: list[dict[str, Any]] = field(default_factory=list)  # every state shown so far, in order
    waiting_for: str = "start"  # what the test waits for now: names the screenshot of a failure

    @staticmethod
    def install(page: DevTools) -> None:
        """Before the first navigation (after browser.log_in): start recording in every document."""
        page.add_init_script(_RECORDER)

    # -- reading ---------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """What the dialog shows now; fails if anything it showed since the last look was untranslated."""
        state: dict[str, Any] = self.page.evaluate(_FLOW_STATE)
        new: list[dict[str, Any]] = self.page.evaluate(_DRAIN) or []
        self.seen += new
        for shown in [*new, state]:
            if TRANSLATION_ERROR in shown["text"]:
                self.fail(
                    f"{self.waiting_for}-translation-error", f"the {shown['kind']} step showed: {shown['text']!r}"
                )
        return state

    def expect(self, kind: str, *texts: str, shot: str | None = None, timeout: float = STEP_TIMEOUT) -> str:
        """Wait until the dialog shows a ``kind`` step (menu, form, progress, abort) with every text;
        its text. A spinner on the way may last up to PROGRESS_TIMEOUT, on top of ``timeout``.
        ``shot``: save a screenshot of it as ``<shot>.png``."""
        self.waiting_for = shot or kind
        deadline = time.monotonic() + timeout
        spinning_since: float | None = None
        state: dict[str, Any] = {}
        while True:
            state = self.state()
            if state["kind"] == kind and all(text in state["text"] for text in texts):
                break
            now = time.monotonic()
            if state["kind"] == "progress":  # the spinner has its own bound; the step's clock waits
                spinning_since = spinning_since or now
                if now - spinning_since > PROGRESS_TIMEOUT:
                    self.fail(shot or kind, f"the spinner did not end within {PROGRESS_TIMEOUT:g} s: {state['text']!r}")
                deadline = max(deadline, now + timeout)
            elif state["kind"] == "abort" and kind != "abort":  # the flow ended: waiting cannot help
                self.fail(shot or kind, f"expected a {kind} step showing {texts}, the flow ended: {state['text']!r}")
            if now > deadline:
                shown = f"a {state['kind']} step: {state['text']!r}" if state["open"] else "no dialog"
                self.fail(
                    shot or kind, f"expected a {kind} step showing {texts} within {timeout:g} s; it shows {shown}"
                )
            time.sleep(POLL_INTERVAL)
        if shot:
            time.sleep(0.5)  # the dialog resizes and its ripple fades after a step change
            self.page.screenshot(self.shots / f"{shot}.png")
        return str(state["text"])

    def options(self) -> list[dict[str, Any]]:
        """The current form's choices (radio buttons, check boxes): [{label, checked}]."""
        query = """window.__e2e.all("ha-formfield", window.__e2e.all("dialog-data-entry-flow")[0])
            .map((f) => ({ label: f.label, checked: !!(f.querySelector("ha-checkbox, ha-radio") || {}).checked }))"""
        found: list[dict[str, Any]] = self.page.evaluate(query) or []
        return found

    def field_value(self, label: str) -> str:
        """What the text field labelled ``label`` holds."""
        query = f"""window.__e2e.find({{scope: "{_FORM}", selector: "ha-textfield", label: {json.dumps(label)}}})"""
        return str(self.page.evaluate(f"({query} || {{}}).value") or "")

    def fail(self, name: str, message: str) -> NoReturn:
        shot = self.page.screenshot(self.shots / f"{name}-FAILED.png")
        recent = "\n".join(f"  {s['kind']}: {s['text'][:300]!r}" for s in self.seen[-6:])
        raise FlowError(f"{message}\nscreenshot: {shot}\nthe dialog's last states:\n{recent}")

    # -- acting ----------------------------------------------------------------------------------

    def open_options(self, base_url: str, domain: str) -> None:
        """Settings → Devices & services → the integration → Configure (its single entry).

        The page is reused from the last flow; loaded afresh when elsewhere, or when a failed test
        left a dialog open (so one failure does not fail the next test too).
        """
        # Always a fresh page: after a flow ended, the 2024.3 frontend sometimes ignores clicks on
        # Configure for good (no request reaches Home Assistant); a person would reload too.
        self.page.navigate(f"{base_url}/config/integrations/integration/{domain}")
        self.waiting_for = "configure"
        configure = {"scope": "ha-config-integration-page", "selector": _BUTTONS, "text": "Configure"}
        # Right after a flow ends the page re-renders its entry card: a click in that moment lands on
        # a button that is being replaced and opens nothing. A person clicks again; so does the test
        # (a dialog that never opens still fails, in expect()).
        for _ in range(3):
            self._click(configure, PAGE_TIMEOUT)
            deadline = time.monotonic() + OPEN_TIMEOUT
            while time.monotonic() < deadline:
                if self.page.evaluate(_FLOW_STATE)["open"]:
                    return
                time.sleep(POLL_INTERVAL)

    def choose_menu(self, label: str) -> None:
        self._click({"scope": "step-flow-menu", "selector": "mwc-list-item, ha-list-item", "text": label})

    def choose(self, label_part: str) -> None:
        """Click the radio button or check box whose label contains ``label_part``."""
        self._click({"scope": _FORM, "selector": "ha-formfield", "text": label_part, "pick": "ha-radio, ha-checkbox"})

    def fill(self, label: str, text: str) -> None:
        """Click into the text field labelled ``label`` and type ``text``."""
        self._click({"scope": _FORM, "selector": "ha-textfield", "label": label, "pick": "input, textarea"})
        self.page.type_text(text)

    def select(self, label: str, option: str) -> None:
        """Open the drop-down labelled ``label`` and click ``option``; again, as a person would, if
        the drop-down did not take it (a click while its menu still opens is lost)."""
        item = {"scope": _FORM, "selector": "mwc-list-item", "text": option}
        for _ in range(3):
            if not self.page.evaluate(f"!!window.__e2e.find({json.dumps(item)})"):  # the menu is closed
                self._click({"scope": _FORM, "selector": "ha-select", "label": label})
            self._click(item)
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline:
                if option in self.select_text(label):
                    return
                time.sleep(POLL_INTERVAL)
        self.fail("select", f"the drop-down {label!r} did not take {option!r}; it shows {self.select_text(label)!r}")

    def select_text(self, label: str) -> str:
        """What the drop-down labelled ``label`` shows as chosen."""
        query = f"""window.__e2e.find({{scope: "{_FORM}", selector: "ha-select", label: {json.dumps(label)}}})"""
        return str(self.page.evaluate(f"(({query} || {{}}).selectedText || '')") or "")

    def submit(self) -> None:
        self._click({"scope": _FORM, "selector": _BUTTONS, "text": "Submit"})

    def close(self) -> None:
        """Close the dialog: its Close button after the flow ended, else the X. Waits until it is gone."""
        kind = self.state()["kind"]
        if kind in ("abort", "create-entry"):
            self._click({"scope": f"step-flow-{kind}", "selector": _BUTTONS, "text": "Close"})
        else:
            # the X: "Dismiss dialog" up to Home Assistant 2024.x, "Close" from 2025
            x = {"scope": "dialog-data-entry-flow", "selector": "ha-icon-button", "label": ["Dismiss dialog", "Close"]}
            self._click(x)
        deadline = time.monotonic() + STEP_TIMEOUT
        while self.state()["open"]:
            if time.monotonic() > deadline:
                self.fail("close", f"the dialog did not close within {STEP_TIMEOUT:g} s")
            time.sleep(POLL_INTERVAL)

    def _click(self, spec: dict[str, Any], timeout: float = STEP_TIMEOUT) -> None:
        """page.click, failing with a screenshot of what covered or lacked the element."""
        try:
            self.page.click(spec, timeout)
        except StackError as err:
            self.fail(f"{self.waiting_for}-click", str(err))

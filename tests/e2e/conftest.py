"""The e2e stack, brought up once per session, and log dumps when something fails.

Run with the gateway venv (it has the gateway package, paho-mqtt 2 and websockets):
``.venv/gateway/bin/python -m pytest -c tests/e2e/pytest.ini tests/e2e``. Home Assistant itself
runs from ``.venv/ha`` as a separate process.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.plugins.mosquitto import MOSQUITTO

from .procs import tail
from .stack import HA_PYTHON, HA_VENV, ROOT, Stack, StackOptions

# artifacts/e2e on Home Assistant 2024.3.3, artifacts/e2e-2025 on 2025.4.4 (BLUPOW_E2E_HA=ha-2025)
ARTIFACTS = Path(os.environ.get("ARTIFACTS") or ROOT / "artifacts") / (
    "e2e" if HA_VENV == "ha" else f"e2e-{HA_VENV.removeprefix('ha-')}"
)
LOG_TAIL_LINES = 120

_state: dict[str, Any] = {"stack": None, "timings": {}}


# An hour ends on Home Assistant's clock (moved ahead, stack.py) this long after the stack starts,
# so the Energy dashboard has a completed hour to draw (test_energy_dashboard_in_the_browser).
# BLUPOW_E2E_HOUR_ENDS_IN=off keeps the machine's clock (the dashboard may then have no hour yet).
_HOUR_SETTING = os.environ.get("BLUPOW_E2E_HOUR_ENDS_IN") or "300"
HOUR_ENDS_IN = None if _HOUR_SETTING == "off" else float(_HOUR_SETTING)


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory, artifacts: Path) -> Iterator[Stack]:
    """Mosquitto, blupow-sim, fake Supervisor, gateway and Home Assistant, configured through its APIs."""
    for needed in (MOSQUITTO, "/usr/bin/dbus-daemon"):
        if not Path(needed).exists():
            pytest.skip(f"{needed} is not installed (scripts/setup system)")
    if not HA_PYTHON.exists():
        pytest.fail(f"the .venv/{HA_VENV} venv is missing: run scripts/setup {HA_VENV}")
    options = StackOptions(
        state_dir=tmp_path_factory.mktemp("stack"), poll_interval=5, frozen=True, ha_hour_ends_in=HOUR_ENDS_IN
    )
    stack = Stack(options)
    _state["stack"] = stack
    started = time.monotonic()
    try:
        stack.start()
        stack.configure_home_assistant()
        _state["timings"]["stack_start_s"] = round(time.monotonic() - started, 1)
        yield stack
    finally:
        stack.stop()
        _state["timings"].update({f"{k}_s": round(v, 1) for k, v in stack.timings.items()})
        _state["stack"] = None
        # Keep the logs of the last run (small), whatever the outcome.
        stack.save_logs(artifacts / "logs")


@pytest.fixture(scope="session")
def added(stack: Stack) -> dict[str, dict[str, Any]]:
    """Every simulated device added through the BluPow options flow: {mac: the flow's final result}."""
    started = time.monotonic()
    results = stack.add_all_devices()
    _state["timings"]["add_devices_s"] = round(time.monotonic() - started, 1)
    return results


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    stack: Stack | None = _state["stack"]
    if report.failed and stack is not None:
        dest = ARTIFACTS / "failures" / item.name
        saved = stack.save_logs(dest)
        for name in ("gateway.log", "home-assistant.log"):
            path = stack.log_files().get(name)
            if path is not None:
                text = "\n".join(important_lines(tail(path, 20 * LOG_TAIL_LINES))[-LOG_TAIL_LINES:])
                report.sections.append((f"{name} (last {LOG_TAIL_LINES} lines above debug)", text))
        report.sections.append(("e2e logs saved", "\n".join(str(p) for p in saved)))
    return report


def important_lines(text: str) -> list[str]:
    """Log lines above DEBUG (both logs' formats), with the traceback lines that follow them."""
    kept: list[str] = []
    keep_continuation = False
    for line in text.splitlines():
        stamped = line[:1] == "[" or line[:4].isdigit()  # "[07:29:09] INFO: ..." / "2026-11-21 07:29:09 INFO ..."
        if stamped:
            keep_continuation = "DEBUG" not in line[:40]
        if keep_continuation:
            kept.append(line)
    return kept


def pytest_terminal_summary(terminalreporter: Any) -> None:
    timings = _state["timings"]
    if not timings:
        return
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "timings.json").write_text(json.dumps(timings, indent=2) + "\n")
    terminalreporter.section("e2e stack timings (s)")
    for key, value in timings.items():
        terminalreporter.line(f"{key:<24} {value}")


def pytest_sessionstart(session: pytest.Session) -> None:
    """Start from a clean artifacts/e2e (screenshot, logs) so nothing stale is mistaken for this run's."""
    if ARTIFACTS.exists():
        shutil.rmtree(ARTIFACTS)

"""``scripts/develop``: the whole system as a demo on http://127.0.0.1:8123, until Ctrl-C.

Private Mosquitto (auth) + simulated devices of every family (fake BlueZ) + the gateway (broker
credentials from a fake Supervisor, the add-on's code path) + Home Assistant 2024.3.3, onboarded,
with MQTT and BluPow configured and every simulated device added through the BluPow options flow.
Everything lives in ``.develop/`` (recreated at each start); Ctrl-C stops every process.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from .procs import StackError, port_open
from .stack import HA_PYTHON, HA_VENV, ROOT, Stack, StackOptions

STATE_DIR = ROOT / ".develop"
FIRST_HOUR_ENDS_IN = 300  # s after the start: the demo's Energy dashboard has an hour of numbers
MARKER = ".blupow-develop"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scripts/develop",
        description="The whole BluPow system as a demo: Home Assistant on http://127.0.0.1:8123 until Ctrl-C.",
    )
    parser.add_argument("--port", type=int, default=8123, help="Home Assistant's port (default 8123)")
    parser.add_argument("--poll-interval", type=int, default=10, help="gateway poll interval, s (default 10)")
    parser.add_argument("--username", default="blupow", help="Home Assistant login (default blupow)")
    parser.add_argument("--password", help="Home Assistant password (default: a new random one)")
    parser.add_argument("--frozen", action="store_true", help="simulated values stay constant")
    parser.add_argument(
        "--ha-2024",
        action="store_true",
        help="run Home Assistant 2024.3.3, the oldest supported (default: 2025.4.4; scripts/develop picks the venv)",
    )
    parser.add_argument(
        "--real-clock",
        action="store_true",
        help="keep Home Assistant on the machine's clock; by default it runs up to an hour ahead so that an "
        f"hour ends {FIRST_HOUR_ENDS_IN // 60} minutes after the start (the Energy dashboard draws completed "
        "hours only)",
    )
    parser.add_argument("--state-dir", type=Path, default=STATE_DIR, help="where everything is kept (.develop)")
    return parser


def _stop_on_signal(signum: int, _frame: FrameType | None) -> None:
    """The first Ctrl-C (or SIGTERM/SIGHUP) starts the shutdown; later ones must not interrupt it."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    raise KeyboardInterrupt(f"signal {signum}")


def _shown(path: Path) -> str:
    """A path relative to the repository when it is inside it."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _clock_lines(stack: Stack) -> list[str]:
    if stack.hour_ends is None:
        return []
    ends = time.strftime("%H:%M", time.localtime(stack.hour_ends - stack.ha_ahead))
    return [
        f"  Energy:          Home Assistant's clock runs {stack.ha_ahead / 60:.0f} min ahead, so the Energy dashboard",
        f"                   shows its first hour at {ends} (it draws completed hours; --real-clock: no)",
    ]


def _ha_version() -> str:
    """The version of the Home Assistant the demo runs, from its package's metadata."""
    found = next(HA_PYTHON.parent.parent.glob("lib/python3*/site-packages/homeassistant-*.dist-info"), None)
    return "Home Assistant " + found.name.removesuffix(".dist-info").split("-")[1] if found else "Home Assistant"


def _banner(stack: Stack, password_file: Path) -> str:
    assert stack.sim is not None and stack.broker is not None
    lines = [
        "",
        "=" * 72,
        f"  Home Assistant:  {stack.ha_url}   ({HA_VENV}: {_ha_version()})",
        f"  Login:           {stack.options.username} / {stack.options.password}   (also in {_shown(password_file)})",
        f"  MQTT broker:     127.0.0.1:{stack.broker.port} (user homeassistant / {stack.ha_mqtt_password})",
        "  Devices (simulated, added through Settings -> BluPow -> Configure):",
    ]
    lines += [f"    {d.mac}  {d.type:<26} {d.name}" for d in stack.sim.devices]
    for module in stack.sim.modules:  # one Bluetooth module, several units, and their battery bank
        units = ", ".join(f"{t} #{i}" for i, t in module.units.items())
        lines.append(f"    {module.mac}  one Communication Hub carrying {units} (and a Battery bank device)")
    lines += [
        *_clock_lines(stack),
        f"  Logs:            {_shown(stack.logs_dir)}/ and {_shown(stack.ha_log)}",
        f"  Simulator:       control socket {_shown(stack.sim.socket_path)} (JSON lines, see blupow-sim --help)",
        "  Ctrl-C stops everything.",
        "=" * 72,
        "",
    ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if port_open("127.0.0.1", args.port):
        print(f"develop: port {args.port} is in use (another Home Assistant or demo?); try --port", file=sys.stderr)
        return 1
    state_dir: Path = args.state_dir.resolve()
    if state_dir.exists() and any(state_dir.iterdir()):
        if not (state_dir / MARKER).exists():  # never wipe a directory this script did not make
            print(f"develop: {state_dir} exists and was not made by scripts/develop; choose another", file=sys.stderr)
            return 1
        shutil.rmtree(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / MARKER).write_text("made by scripts/develop; recreated at every start\n")
    options = StackOptions(
        state_dir=state_dir,
        ha_port=args.port,
        poll_interval=args.poll_interval,
        frozen=args.frozen,
        ha_hour_ends_in=None if args.real_clock else FIRST_HOUR_ENDS_IN,
        gateway_log_level="info",
        username=args.username,
        **({"password": args.password} if args.password else {}),
    )
    stack = Stack(options)
    started = time.monotonic()
    try:
        print("develop: starting Mosquitto, the simulated devices, the gateway and Home Assistant ...", flush=True)
        stack.start()
        print(f"develop: Home Assistant answers on {stack.ha_url}; onboarding and config flows ...", flush=True)
        stack.configure_home_assistant()
        for device in stack.sim.devices if stack.sim else []:
            result = stack.add_device(device)
            found = result.get("description_placeholders", {}).get("found")
            outcome = f"added: found {found}" if result.get("reason") == "device_found" else f"NOT added: {result}"
            print(f"develop: {device.type} {device.mac} {outcome}", flush=True)
        for module in stack.sim.modules if stack.sim else []:  # a hub: scanned, probed, all of it added
            found, result = stack.probe_and_add(module.mac)
            summary = found["description_placeholders"]["summary"]
            outcome = "added" if result.get("reason") == "add_done" else f"NOT added: {result}"
            print(f"develop: {module.mac} carries {summary}: {outcome}", flush=True)
        kinds = {d.type for d in stack.sim.devices} if stack.sim else set()
        if {"renogy_charge_controller", "renogy_battery"} <= kinds:  # the demo's Energy dashboard
            stack.energy_sensors()  # wait for the counters' entities (discovery)
            result = stack.add_energy_dashboard()  # the options flow's one step, as a user would
            outcome = "set" if result.get("reason") == "energy_done" else f"NOT set: {result}"
            print(f"develop: Energy dashboard: solar, battery and loads {outcome}", flush=True)
        password_file = state_dir / "login.txt"
        password_file.write_text(f"{stack.ha_url}\nusername: {options.username}\npassword: {options.password}\n")
        password_file.chmod(0o600)
        print(_banner(stack, password_file), flush=True)
        print(f"develop: ready in {time.monotonic() - started:.0f} s", flush=True)
        return _watch(stack)
    except KeyboardInterrupt:
        return 0
    except StackError as exc:
        print(f"develop: {exc}", file=sys.stderr)
        print(f"develop: logs are in {stack.logs_dir} and {stack.ha_log}", file=sys.stderr)
        return 1
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # nothing may interrupt the clean-up
            signal.signal(sig, signal.SIG_IGN)
        print("develop: stopping ...", flush=True)
        stack.stop()
        print("develop: stopped; nothing left running", flush=True)


def _watch(stack: Stack) -> int:
    """Until Ctrl-C; a part that dies ends the demo (with its log tail) rather than leaving it half up."""
    while True:
        time.sleep(1)
        for process in (stack.home_assistant, stack.gateway, stack.sim.process if stack.sim else None):
            if process is not None and (failure := process.exited_early()):
                print(f"develop: {failure}", file=sys.stderr)
                return 1
        if stack.broker is not None and not stack.broker.running:
            print(f"develop: mosquitto stopped: {stack.broker.log()}", file=sys.stderr)
            return 1


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _stop_on_signal)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())

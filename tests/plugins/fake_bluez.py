"""pytest fixtures: a private D-Bus, a fake BlueZ on it, and ``blupow-sim`` as a subprocess.

* ``private_dbus`` (session): a private ``dbus-daemon``; ``DBUS_SYSTEM_BUS_ADDRESS``
  points at it for the whole run and is restored afterwards.
* ``fake_bluez`` (function, async): a fresh :class:`FakeBlueZ` on that bus in the
  test's event loop. ``fake_bluez.add("controller", latency=0.01, failures={...})``
  returns the simulated device; ``fake_bluez.add("hub:battery*4,controller@97")``
  a :class:`~blupow_gateway.simulator.SimulatedModule` (``.mac``, ``.units`` by
  Modbus ID); ``fake_bluez.peripheral(mac)`` gives failures/stats,
  ``fake_bluez.drop(mac)`` loses the link, ``fake_bluez.stats`` counts connections.
* ``sim_process`` (function): a factory ``sim_process("controller,dcc", ...)`` (or
  ``sim_process(["hub:battery*2,controller@97", "inverter"])``) that runs
  ``blupow-sim`` with its own bus and control socket and returns a
  :class:`SimProcess` (``.address``, ``.devices``, ``.modules``, ``.env()``,
  ``.control(op, ...)``).

Nothing outlives the run: every process is stopped in the fixture's ``finally``,
again by ``atexit``, and the simulator itself exits when its stdin closes or its
parent dies (``setpriv --pdeathsig``), taking its ``dbus-daemon`` with it.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from blupow_gateway.simulator.bus import ENV_VAR, PrivateBus, pdeathsig_prefix
from blupow_gateway.simulator.fake_bluez import FakeBlueZ

SIM_START_TIMEOUT = 15.0
CONTROL_TIMEOUT = 5.0


@dataclass(frozen=True)
class SimDevice:
    mac: str
    type_name: str
    name: str


@dataclass(frozen=True)
class SimUnit:
    """One unit of a module as blupow-sim printed it: ``48=renogy_battery/legacy+silent``."""

    modbus_id: int
    type_name: str
    variant: str | None = None
    faults: tuple[str, ...] = ()

    @classmethod
    def parse(cls, token: str) -> SimUnit:
        modbus_id, _, label = token.partition("=")
        label, *faults = label.split("+")
        type_name, _, variant = label.partition("/")
        return cls(int(modbus_id), type_name, variant or None, tuple(faults))


@dataclass(frozen=True)
class SimModule:
    """A module line: ``MAC module NAME 48=renogy_battery/legacy,97=renogy_charge_controller``."""

    mac: str
    name: str
    units: dict[int, SimUnit]

    @classmethod
    def parse(cls, line: str) -> SimModule:
        mac, _module, rest = line.split(" ", 2)
        name, units = rest.rsplit(" ", 1)  # a configured name may contain spaces, the units never
        return cls(mac, name, {u.modbus_id: u for u in map(SimUnit.parse, units.split(","))})


def parse_banner_line(line: str) -> SimDevice | SimModule:
    """One device or module line of blupow-sim's banner."""
    if line.split(" ", 2)[1:2] == ["module"]:
        return SimModule.parse(line)
    return SimDevice(*line.split(" ", 2))


class SimProcess:
    """A running ``blupow-sim``; stop() (or the fixture) kills its whole process group."""

    def __init__(self, args: Sequence[str], *, start_timeout: float = SIM_START_TIMEOUT) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="blupow-sim-"))
        self.control_path = self._dir / "control.sock"
        self.stderr_path = self._dir / "stderr.log"
        self.address = ""
        self.devices: list[SimDevice] = []  # standalone devices, in the order printed
        self.modules: list[SimModule] = []  # hub:/chain: modules, in the order printed
        command = [
            *pdeathsig_prefix("TERM"),
            sys.executable,
            "-m",
            "blupow_gateway.simulator.cli",
            "--watch-stdin",
            "--control-socket",
            str(self.control_path),
            "--bus-dir",  # inside our dir: removed even if the simulator is killed
            str(self._dir / "bus"),
            *args,
        ]
        with self.stderr_path.open("wb") as stderr:
            # Own session: stop() can kill the simulator and its dbus-daemon as a group.
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                start_new_session=True,
            )
        _LIVE.add(self)
        try:
            self._read_banner(start_timeout)
        except BaseException:
            self.stop()
            raise

    def _read_banner(self, timeout: float) -> None:
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        deadline = time.monotonic() + timeout
        buf = b""
        while b"READY\n" not in buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError(f"blupow-sim not READY within {timeout:g} s: {buf!r} {self.stderr()}")
            ready, _, _ = select.select([fd], [], [], remaining)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise RuntimeError(f"blupow-sim exited with {self.process.wait(5)}: {self.stderr()}")
                buf += chunk
        lines = buf.decode().splitlines()
        self.address = lines[0].split("=", 1)[1]
        for entry in map(parse_banner_line, lines[1 : lines.index("READY")]):
            if isinstance(entry, SimModule):
                self.modules.append(entry)
            else:
                self.devices.append(entry)

    def stderr(self) -> str:
        with contextlib.suppress(OSError):
            return self.stderr_path.read_text(errors="replace")[-2000:]
        return ""

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """An environment for a gateway subprocess that talks to this simulator."""
        env = dict(os.environ if base is None else base)
        env[ENV_VAR] = self.address
        return env

    def device(self, type_name: str) -> SimDevice:
        return next(d for d in self.devices if d.type_name == type_name)

    def control(self, op: str, timeout: float = CONTROL_TIMEOUT, **fields: Any) -> dict[str, Any]:
        """One control request; raises on ``ok: false`` so tests fail loudly."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(self.control_path))
            sock.sendall(json.dumps({"op": op, **fields}).encode() + b"\n")
            reply = b""
            while not reply.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                reply += chunk
        data: dict[str, Any] = json.loads(reply)
        if not data.get("ok"):
            raise RuntimeError(f"blupow-sim {op}: {data.get('error')}")
        return data

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM the group (clean bus shutdown), SIGKILL what is left; returns the exit code."""
        _LIVE.discard(self)
        proc = self.process
        if proc.stdin is not None and not proc.stdin.closed:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout)
        # The group may still hold a dbus-daemon if the simulator died abruptly.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout)
        if proc.stdout is not None:
            proc.stdout.close()
        shutil.rmtree(self._dir, ignore_errors=True)
        return proc.returncode


_LIVE: set[SimProcess] = set()


@atexit.register
def _stop_live() -> None:
    for sim in list(_LIVE):
        sim.stop(timeout=2)


@pytest.fixture(scope="session")
def private_dbus() -> Iterator[PrivateBus]:
    bus = PrivateBus()
    bus.start()
    previous = os.environ.get(ENV_VAR)
    os.environ[ENV_VAR] = bus.address
    try:
        yield bus
    finally:
        if previous is None:
            os.environ.pop(ENV_VAR, None)
        else:
            os.environ[ENV_VAR] = previous
        bus.stop()


@pytest.fixture
async def fake_bluez(private_dbus: PrivateBus) -> AsyncIterator[FakeBlueZ]:
    fake = FakeBlueZ(private_dbus.address)
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


@pytest.fixture
def sim_process() -> Iterator[Callable[..., SimProcess]]:
    """Factory: ``sim_process("controller,dcc")`` or ``sim_process(config=path, extra=[...])``."""
    started: list[SimProcess] = []

    def start(
        devices: str | Sequence[str] = (),
        *,
        config: Path | None = None,
        bus_address: str | None = None,
        extra: Sequence[str] = (),
    ) -> SimProcess:
        args: list[str] = []
        for kinds in [devices] if isinstance(devices, str) else devices:
            args += ["--devices", kinds]
        if config is not None:
            args += ["--config", str(config)]
        if bus_address is not None:
            args += ["--bus-address", bus_address]
        sim = SimProcess([*args, *extra])
        started.append(sim)
        return sim

    try:
        yield start
    finally:
        for sim in started:
            sim.stop()

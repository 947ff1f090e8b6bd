"""Shared pieces of the benchmarks: results, CPU and memory probes, links with BLE-like timing.

Every figure is a :class:`Figure` with a value, a unit, a target and whether
the target is met. Ratios are always taken against a baseline measured in the
same run, never against a number written down earlier.
"""

from __future__ import annotations

import asyncio
import math
import os
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from blupow_gateway.simulator.base import SimulatedDevice
from blupow_gateway.simulator.link import SimulatedLink
from blupow_gateway.transport import LinkLost

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Figure:
    """One line of the table and one entry of results.json."""

    name: str
    value: float | None
    unit: str
    target: str  # human-readable, e.g. "<= 5 ms"; "info" for figures without a target
    met: bool | None  # None: informational
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.value, "unit": self.unit, "target": self.target, "met": self.met}


def at_most(name: str, value: float, unit: str, limit: float, note: str = "", fmt: str = "g") -> Figure:
    return Figure(name, value, unit, f"<= {limit:{fmt}} {unit}".rstrip(), value <= limit, note)


def at_least(name: str, value: float, unit: str, limit: float, note: str = "", fmt: str = "g") -> Figure:
    return Figure(name, value, unit, f">= {limit:{fmt}} {unit}".rstrip(), value >= limit, note)


def info(name: str, value: float | None, unit: str, note: str = "") -> Figure:
    return Figure(name, value, unit, "info", None, note)


def percentile(values: Iterable[float], pct: float) -> float:
    """Nearest-rank percentile (p50 of 100 samples is the 50th smallest)."""
    data = sorted(values)
    if not data:
        raise ValueError("no samples")
    rank = max(1, math.ceil(pct / 100 * len(data)))
    return data[rank - 1]


# --- process probes ---------------------------------------------------------------------


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU of every thread of ``pid`` so far (from /proc/<pid>/stat)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    # the command name may contain spaces and parentheses: fields start after the last ')'
    fields = text[text.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / CLOCK_TICKS


def proc_memory_kib(pid: int) -> dict[str, int]:
    """VmRSS (resident now) and VmHWM (peak resident) of ``pid`` in KiB."""
    found: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(rest.split()[0])
    return found


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    import platform

    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


# --- simulated devices with CPU accounting ----------------------------------------------


class SimCpu:
    """CPU spent inside simulated devices (answering requests), to subtract from the gateway's.

    In-process benchmarks run the simulator in the gateway's own process; its
    work (register model, reply frames) is not the gateway's cost. The wrapper
    measures it with the calling thread's CPU clock.
    """

    def __init__(self) -> None:
        self.seconds = 0.0
        self.inside = False  # a simulated device is answering right now (see CallCounter)

    def wrap(self, sim: SimulatedDevice) -> SimulatedDevice:
        handle = sim.handle

        def timed(frame: bytes) -> bytes | None:
            started = time.thread_time()
            self.inside = True
            try:
                return handle(frame)
            finally:
                self.inside = False
                self.seconds += time.thread_time() - started

        sim.handle = timed  # type: ignore[method-assign]
        return sim


class CallCounter:
    """Python and C function calls made by the gateway on this thread (the event loop's).

    Unlike CPU time this count does not depend on the machine or on what else runs, so it shows
    how the work per poll grows with the number of devices exactly. Calls made while a simulated
    device answers are left out.
    """

    def __init__(self, sim_cpu: SimCpu) -> None:
        self.sim_cpu = sim_cpu
        self.calls = 0

    def _event(self, _frame: Any, event: str, _arg: Any) -> None:
        if event in ("call", "c_call") and not self.sim_cpu.inside:
            self.calls += 1

    def __enter__(self) -> CallCounter:
        sys.setprofile(self._event)
        return self

    def __exit__(self, *exc: object) -> None:
        sys.setprofile(None)


@dataclass
class TimedLink:
    """A link with BLE-like timing: connecting takes ``connect_delay``, each request ``latency``.

    Requests go through :class:`SimulatedLink` (real Modbus frames, chunked
    notifications, the real ResponseAssembler). ``world`` counts connections
    so a benchmark can check what the scheduler did.
    """

    sim: SimulatedDevice
    connect_delay: float
    latency: float
    world: LinkWorld
    _connected: bool = False
    inner: SimulatedLink = field(init=False)

    def __post_init__(self) -> None:
        self.inner = SimulatedLink(self.sim, timeout=max(2.0, self.latency * 4), latency=self.latency)

    @property
    def connected(self) -> bool:
        return self._connected

    async def connect(self) -> None:
        self.world.connecting += 1
        self.world.max_connecting = max(self.world.max_connecting, self.world.connecting)
        try:
            await asyncio.sleep(self.connect_delay)
        finally:
            self.world.connecting -= 1
        self._connected = True
        self.world.connects += 1
        self.world.open += 1
        self.world.max_open = max(self.world.max_open, self.world.open)

    async def disconnect(self) -> None:
        if self._connected:
            self._connected = False
            self.world.open -= 1

    async def read_registers(self, slave_id: int, start: int, count: int) -> list[int]:
        if not self._connected:
            raise LinkLost(f"{self.sim.mac} is not connected")
        self.world.requests += 1
        return await self.inner.read_registers(slave_id, start, count)

    async def write_register(self, slave_id: int, register: int, value: int) -> None:
        if not self._connected:
            raise LinkLost(f"{self.sim.mac} is not connected")
        await self.inner.write_register(slave_id, register, value)


@dataclass
class LinkWorld:
    """Counters over every :class:`TimedLink` of one run."""

    connects: int = 0
    requests: int = 0
    open: int = 0
    max_open: int = 0
    connecting: int = 0
    max_connecting: int = 0


async def wait_until(predicate: Callable[[], bool], seconds: float, what: str) -> None:
    """Check ``predicate`` every 5 ms for at most ``seconds``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not predicate():
        if loop.time() > deadline:
            raise TimeoutError(f"{what} not reached within {seconds:g} s")
        await asyncio.sleep(0.005)

"""Figure 8: N units behind one Bluetooth module (a battery bank on one BT-2, a hub).

One simulated module carries N batteries (``hub:battery*N``) behind a link with
BLE-like timing (:class:`~bench.common.TimedLink`: a connect takes ``CONNECT``
seconds, each request ``REQUEST``). The scheduler polls the module in one
session per cycle (connect, read every unit, disconnect: ``keep_connected`` off,
so every cycle pays the connect it is compared with).

The baseline is measured in the same run, without the scheduler: one connect of
the same link, plus each unit's read done on its own (``device.read`` over the
connected link). Target: a scheduled cycle takes at most 1.10 × (connect + Σ
unit reads), for N = 1, 4 and 8. CPU per unit poll (the process's CPU time over
the measured cycles, divided by the unit polls) must stay flat: at 8 units at
most 1.25 × what it is at 1.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

from blupow_gateway.devices import create_device
from blupow_gateway.modules import Module, Status, Unit
from blupow_gateway.scheduler import Scheduler
from blupow_gateway.simulator.module import create_module
from blupow_gateway.store import DeviceRecord, unit_id_for

from .common import Figure, LinkWorld, TimedLink, at_most, info, wait_until

CONNECT = 0.4  # seconds: a BT-2's LE connect and service resolution, shortened
REQUEST = 0.03  # seconds per Modbus request (real modules: 70-350 ms; shortened to keep the run short)
SIZES = (1, 4, 8)


class _Listener:
    def __init__(self) -> None:
        self.polled = 0
        self.failures: list[str] = []
        self.done = asyncio.Event()  # set after each module poll: no busy waiting in the CPU figure

    def on_values(self, unit: Unit) -> None:
        pass

    def on_failure(self, unit: Unit, error: str) -> None:
        self.failures.append(f"{unit.key}: {error}")

    def on_status(self, unit: Unit, old: Status, new: Status) -> None:
        pass

    def on_module_polled(self, module: Module) -> None:
        self.polled += 1
        self.done.set()

    def on_cycle(self, seconds: float) -> None:
        pass


def _records(mac: str, ids: list[int]) -> list[DeviceRecord]:
    return [
        DeviceRecord(
            mac_address=mac,
            type="renogy_battery",
            name=f"bench battery {modbus_id}",
            modbus_id=modbus_id,
            variant="legacy",
            unit_id=None if index == 0 else unit_id_for(mac, modbus_id),
        )
        for index, modbus_id in enumerate(ids)
    ]


async def _baseline(count: int) -> float:
    """One connect plus each unit's steady read on its own (static blocks already read once)."""
    module = create_module(f"hub:battery*{count}", frozen=True)
    link = TimedLink(module, CONNECT, REQUEST, LinkWorld())  # type: ignore[arg-type]
    devices = [create_device("renogy_battery", modbus_id=i, variant="legacy") for i in module.units]
    await link.connect()
    for device in devices:
        await device.read(link)  # the first read also fetches the static blocks; not timed
    await link.disconnect()
    started = time.monotonic()
    await link.connect()
    for device in devices:
        await device.read(link)
    return time.monotonic() - started


async def _scheduled(count: int, cycles: int) -> dict[str, Any]:
    module = create_module(f"hub:battery*{count}", frozen=True)
    world = LinkWorld()
    link = TimedLink(module, CONNECT, REQUEST, world)  # type: ignore[arg-type]
    listener = _Listener()
    scheduler = Scheduler(
        listener=listener,
        link_factory=lambda _record, _device: link,
        poll_interval=3600.0,  # cycles are started by poll_now below
        max_connections=1,
        keep_connected=False,
        request_timeout=2.0,
    )
    for record in _records(module.mac, list(module.units)):
        scheduler.add(record, create_device("renogy_battery", modbus_id=record.modbus_id, variant="legacy"))
    await scheduler.start()
    try:
        lock = scheduler.modules[module.mac].lock
        await wait_until(lambda: listener.polled >= 1 and not lock.locked(), 30, "first poll")
        times: list[float] = []
        cpu_started = time.process_time()
        for _ in range(cycles):
            listener.done.clear()
            started = time.monotonic()
            scheduler.poll_now()
            async with asyncio.timeout(30):
                await listener.done.wait()  # after the link was closed again (keep_connected off)
            times.append(time.monotonic() - started)
            await asyncio.sleep(0)  # the loop leaves its cycle
        cpu = time.process_time() - cpu_started
    finally:
        await scheduler.stop()
    if listener.failures:
        raise RuntimeError(f"unit polls failed: {listener.failures[:3]}")
    return {"cycle": statistics.median(times), "cpu_per_unit_poll": cpu / (cycles * count), "connects": world.connects}


async def hub_figures(quick: bool) -> list[Figure]:
    cycles = 5 if quick else 15
    figures: list[Figure] = []
    cpu: dict[int, float] = {}
    for count in SIZES:
        ideal = await _baseline(count)
        measured = await _scheduled(count, cycles)
        cpu[count] = measured["cpu_per_unit_poll"]
        note = f"{cycles} cycles; connect {CONNECT * 1000:g} ms, {REQUEST * 1000:g} ms per request"
        figures += [
            info(f"hub {count} unit(s): connect + sum of unit reads (baseline)", round(ideal, 3), "s", note),
            info(f"hub {count} unit(s): scheduled cycle, one session", round(measured["cycle"], 3), "s"),
            at_most(f"hub {count} unit(s): cycle / baseline", round(measured["cycle"] / ideal, 3), "x", 1.10),
            info(f"hub {count} unit(s): CPU per unit poll", round(cpu[count] * 1000, 3), "ms"),
        ]
    flat = round(cpu[8] / cpu[1], 3)
    figures.append(at_most("hub: CPU per unit poll at 8 / at 1 unit (flat = 1.0)", flat, "x", 1.25))
    return figures


def run(quick: bool) -> list[Figure]:
    return asyncio.run(hub_figures(quick))

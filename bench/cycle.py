"""Figures 1 and 6: poll cycle time against the BLE limit, and keep-connected against reconnecting.

The real :class:`~blupow_gateway.scheduler.Scheduler` polls simulated devices
through :class:`~bench.common.TimedLink`: connecting takes ``connect`` seconds,
each Modbus request ``request`` seconds, and every device is read with exactly
``requests`` requests (a ``generic_modbus`` driver with that many blocks over
a simulated Rover's 0x0100 block, decoded by the real driver code).

What "ideal" means
------------------
One device takes ``T = connect + requests x request`` from connect to
disconnect. With ``k`` connection slots and free parallelism the cycle would
take ``ceil(N/k) x T``. But the scheduler serialises connection *attempts*
(BlueZ aborts an LE connect while another is in flight, so that rule is
physics of the adapter, not a choice), and the connect part then runs one
device at a time: no cycle can finish before ``N x connect`` (every connect,
back to back) plus the reads of the last device. The BLE limit is therefore

    limit(k) = max(ceil(N/k) x T, N x connect + requests x request)

and that is what the cycle is measured against. ``ceil(N/k) x T`` is reported
beside it for reference.
"""

from __future__ import annotations

import asyncio
import math
import statistics
import time
from dataclasses import dataclass
from typing import Any

from blupow_gateway.devices import BaseDevice, create_device
from blupow_gateway.modules import Module, Status, Unit
from blupow_gateway.scheduler import Scheduler
from blupow_gateway.simulator import create_simulated
from blupow_gateway.store import ORIGIN_OPTIONS, DeviceRecord

from .common import Figure, LinkWorld, TimedLink, at_least, at_most, info, wait_until

BLOCK = 8  # registers per block


def bench_config(requests: int) -> dict[str, Any]:
    """A generic_modbus description that reads ``requests`` blocks of the Rover's 0x0100 area."""
    start = 0x0100
    return {
        "modbus_id": 255,
        "manufacturer": "BluPow bench",
        "model": f"{requests}-block device",
        "blocks": [{"start": start + BLOCK * i, "count": BLOCK, "name": f"block {i}"} for i in range(requests)],
        "fields": [
            {"key": f"reg_{reg:04x}", "register": reg, "type": "u16"} for reg in range(start, start + BLOCK * requests)
        ],
    }


@dataclass
class Timing:
    connect: float
    request: float
    requests: int

    @property
    def device(self) -> float:
        return self.connect + self.requests * self.request


class _Listener:
    """The scheduler's listener: only cycle ends matter here."""

    def __init__(self) -> None:
        self.cycle_done = asyncio.Event()
        self.cycles: list[float] = []
        self.failures: list[str] = []

    def on_values(self, worker: Unit) -> None:
        pass

    def on_failure(self, worker: Unit, error: str) -> None:
        self.failures.append(f"{worker.mac}: {error}")

    def on_status(self, worker: Unit, old: Status, new: Status) -> None:
        pass

    def on_module_polled(self, module: Module) -> None:
        pass

    def on_cycle(self, seconds: float) -> None:
        self.cycles.append(seconds)
        self.cycle_done.set()


def _devices(count: int, timing: Timing, world: LinkWorld) -> tuple[list[DeviceRecord], dict[str, TimedLink]]:
    records, links = [], {}
    for index in range(count):
        sim = create_simulated("controller", mac=f"C4:64:E3:00:00:{index:02X}", frozen=True)
        sim.behaviour.chunk_size = 20
        records.append(
            DeviceRecord(
                mac_address=sim.mac,
                type="generic_modbus",
                name=f"bench {index}",
                config=bench_config(timing.requests),
                origin=ORIGIN_OPTIONS,
            )
        )
        links[sim.mac] = TimedLink(sim, timing.connect, timing.request, world)
    return records, links


def _driver(record: DeviceRecord) -> BaseDevice:
    return create_device(record.type, config=dict(record.config or {}))


async def sequential_baseline(count: int, timing: Timing) -> float:
    """The original design: one device after the other, connect, read, disconnect."""
    world = LinkWorld()
    records, links = _devices(count, timing, world)
    started = time.monotonic()
    for record in records:
        link, device = links[record.mac_address], _driver(record)
        await link.connect()
        await device.read(link)
        await link.disconnect()
    return time.monotonic() - started


async def scheduled_cycles(count: int, slots: int, timing: Timing, cycles: int, *, keep: bool = True) -> dict[str, Any]:
    """Start a scheduler, let it do its first round, then time ``cycles`` full cycles."""
    world = LinkWorld()
    records, links = _devices(count, timing, world)
    listener = _Listener()
    scheduler = Scheduler(
        listener=listener,
        link_factory=lambda record, _device: links[record.mac_address],
        poll_interval=3600.0,  # cycles are started by poll_now below, not by the ticker
        max_connections=slots,
        keep_connected=keep,
        connect_timeout=timing.connect * 4 + 5,
        request_timeout=timing.request * 4 + 1,
    )
    for record in records:
        scheduler.add(record, _driver(record))
    limit = (timing.device * count + 10) * 2
    try:
        started = time.monotonic()
        await scheduler.start()  # every device is polled at once: round 0
        await wait_until(
            lambda: all(w.stats.successes >= 1 and not w.module.lock.locked() for w in scheduler.units.values()),
            limit,
            "first round",
        )
        rounds = [time.monotonic() - started]
        latencies: list[int] = []  # per poll after round 0 (steady state)
        for _ in range(cycles):
            listener.cycle_done.clear()
            scheduler.poll_now()
            await asyncio.wait_for(listener.cycle_done.wait(), limit)
            rounds.append(listener.cycles[-1])
            latencies += [w.stats.last_latency_ms or 0 for w in scheduler.units.values()]
    finally:
        await scheduler.stop(grace=1.0)
    if listener.failures:
        raise RuntimeError(f"polls failed during the cycle benchmark: {listener.failures[:3]}")
    return {
        "rounds": rounds,
        "cycle": sorted(rounds)[len(rounds) // 2],  # median round
        "max_open": world.max_open,
        "max_connecting": world.max_connecting,
        "requests_per_poll": world.requests / max(1, sum(w.stats.successes for w in scheduler.units.values())),
        "latencies_ms": latencies,
    }


def ble_limit(count: int, slots: int, timing: Timing) -> float:
    free = math.ceil(count / slots) * timing.device
    serial_connects = count * timing.connect + timing.requests * timing.request
    return max(free, serial_connects)


async def cycle_figures(quick: bool) -> list[Figure]:
    """Figure 1. Quick: timings scaled to a quarter (ratios do not depend on the scale) and no extra cycles."""
    scale = 0.25 if quick else 1.0
    timing = Timing(connect=1.5 * scale, request=0.1 * scale, requests=4)
    count, cycles = 8, (0 if quick else 2)
    figures: list[Figure] = []
    baseline = await sequential_baseline(count, timing)
    note = f"{count} devices, connect {timing.connect:g} s, {timing.requests} x {timing.request:g} s requests" + (
        " (quick: timings x0.25)" if quick else ""
    )
    figures.append(info("cycle: sequential baseline (one device after the other)", round(baseline, 3), "s", note))
    for slots in (1, 2, 3):
        run = await scheduled_cycles(count, slots, timing, cycles)
        cycle = run["cycle"]
        if run["max_open"] > slots or run["max_connecting"] > 1:
            raise RuntimeError(f"scheduler broke its limits: {run}")
        if round(run["requests_per_poll"]) != timing.requests:
            raise RuntimeError(f"expected {timing.requests} requests per poll, saw {run['requests_per_poll']:.2f}")
        limit = ble_limit(count, slots, timing)
        free = math.ceil(count / slots) * timing.device
        figures.append(info(f"cycle k={slots}: cycle time", round(cycle, 3), "s", f"rounds {run['rounds']}"))
        figures.append(
            at_most(
                f"cycle k={slots}: / BLE limit max(ceil(N/k)*T, N*connect+reads) = {limit:.2f} s",
                round(cycle / limit, 3),
                "x",
                1.10,
            )
        )
        figures.append(
            info(
                f"cycle k={slots}: / ceil(N/k)*T = {free:.2f} s (ignores serialised connects)",
                round(cycle / free, 3),
                "x",
            )
        )
        figures.append(info(f"cycle k={slots}: speed-up over sequential", round(baseline / cycle, 3), "x"))
    return figures


async def keep_connected_figures(quick: bool) -> list[Figure]:
    """Figure 6: steady-state poll time with links kept open against reconnecting for every poll."""
    scale = 0.25 if quick else 1.0
    timing = Timing(connect=1.5 * scale, request=0.1 * scale, requests=4)
    cycles = 2 if quick else 5
    # one device, one slot: with keep_connected the link stays open between polls
    kept = await scheduled_cycles(1, 1, timing, cycles, keep=True)
    fresh = await scheduled_cycles(1, 1, timing, cycles, keep=False)
    kept_ms = statistics.median(kept["latencies_ms"])
    fresh_ms = statistics.median(fresh["latencies_ms"])
    reads_ms = timing.requests * timing.request * 1000
    return [
        at_most(
            "keep-connected: steady-state poll time",
            kept_ms,
            "ms",
            round(reads_ms * 1.10),
            f"reads alone take {reads_ms:.0f} ms; target: no connect cost once connected",
        ),
        info("reconnect-per-poll: steady-state poll time", fresh_ms, "ms", f"connect {timing.connect:g} s + reads"),
        at_least("keep-connected: poll time advantage", round(fresh_ms / kept_ms, 2), "x", 2.0),
    ]

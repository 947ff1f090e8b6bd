"""Polling rules: connection limit, serialised connects, keep-connected, backoff, availability.

In-process gateway, simulated BLE links (``SimWorld`` counts simultaneous
connections, connection attempts and reads), real broker.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from pathlib import Path
from typing import Any

from blupow_gateway.devices import create_device
from blupow_gateway.scheduler import Scheduler
from blupow_gateway.settings import DeviceOption
from blupow_gateway.store import DeviceRecord
from tests.plugins.gateway import GatewayFactory, SimWorld, wait_until
from tests.plugins.mosquitto import Mosquitto, aretained

EVENT = "blupow/gateway/event"


def options_for(world: SimWorld, kinds: list[str]) -> tuple[DeviceOption, ...]:
    from blupow_gateway.simulator import KINDS

    sims = [world.add(kind, mac=f"C4:64:E3:00:00:{i:02X}") for i, kind in enumerate(kinds)]
    return tuple(
        DeviceOption(s.mac, KINDS[k].type_name, variant=KINDS[k].variant) for s, k in zip(sims, kinds, strict=True)
    )


async def test_never_more_than_max_connections_and_one_connect_at_a_time(
    gateway_factory: GatewayFactory, sim_world: SimWorld
) -> None:
    sim_world.connect_delay = 0.05
    sim_world.latency = 0.01
    devices = options_for(sim_world, ["controller", "dcc", "battery", "battery_pro", "controller"])
    gateway = await gateway_factory(devices, max_connections=2, keep_connected=True, poll_interval=0.3)
    for _ in range(4):
        gateway.scheduler.poll_now(None)
        await asyncio.sleep(0.25)
    await wait_until(lambda: all(w.stats.successes >= 3 for w in gateway.scheduler.units.values()), 10)
    assert sim_world.max_connected == 2  # the limit is reached, and never passed
    assert gateway.scheduler.max_slots_in_use == 2
    assert sim_world.max_connecting == 1  # BlueZ-style: one connection attempt at a time
    assert sim_world.max_reading == 2  # reads on connected links do run side by side
    # five devices over two slots: links are not kept, every poll reconnects
    assert all(sim_world.connects[d.mac_address] >= 3 for d in devices)
    await wait_until(lambda: sim_world.connected == 0, 2, "links closed between polls")


async def test_keep_connected_keeps_links_open_while_slots_suffice(
    gateway_factory: GatewayFactory, sim_world: SimWorld
) -> None:
    devices = options_for(sim_world, ["controller", "dcc"])
    gateway = await gateway_factory(devices, max_connections=2, keep_connected=True, poll_interval=0.2)
    await wait_until(lambda: all(w.stats.successes >= 4 for w in gateway.scheduler.units.values()), 10)
    assert all(sim_world.connects[d.mac_address] == 1 for d in devices)
    assert sim_world.connected == 2
    # a third device: three devices, two slots, so links may no longer stay open
    third = sim_world.add("inverter", mac="C4:64:E3:00:00:10")
    gateway.scheduler.add(DeviceRecord(third.mac, "renogy_inverter", "Inv"), create_device("renogy_inverter"))
    await wait_until(lambda: gateway.scheduler.unit(third.mac).stats.successes >= 2, 10)
    before = dict(sim_world.connects)
    await wait_until(lambda: all(sim_world.connects[d.mac_address] > before[d.mac_address] for d in devices), 10)
    assert sim_world.max_connected <= 2


async def test_without_keep_connected_every_poll_connects_and_disconnects(
    gateway_factory: GatewayFactory, sim_world: SimWorld
) -> None:
    (device,) = options_for(sim_world, ["controller"])
    gateway = await gateway_factory((device,), max_connections=2, keep_connected=False, poll_interval=0.2)
    worker = gateway.scheduler.unit(device.mac_address)
    await wait_until(lambda: worker.stats.successes >= 4, 10)
    await wait_until(lambda: not worker.module.lock.locked(), 2)
    assert sim_world.connects[device.mac_address] >= 4
    assert sim_world.connected == 0
    assert gateway.scheduler.slots_in_use == 0


async def test_link_loss_goes_unavailable_after_three_failures_and_comes_back(
    gateway_factory: GatewayFactory, sim_world: SimWorld, mqtt_recorder: Any, mosquitto: Mosquitto
) -> None:
    recorder = mqtt_recorder()
    (device,) = options_for(sim_world, ["dcc"])
    mac = device.mac_address
    mac_id = mac.replace(":", "")
    gateway = await gateway_factory((device,), poll_interval=0.3)
    worker = gateway.scheduler.unit(mac)
    await recorder.await_topic(f"blupow/{mac_id}/availability", 5, match=lambda m: m.text == "online")
    await recorder.await_topic(EVENT, 5, match=lambda m: m.json()["type"] == "device_connected")

    since = recorder.mark()
    sim_world.out_of_range.add(mac)
    sim_world.drop(mac)
    offline = await recorder.await_topic(f"blupow/{mac_id}/availability", 10, since)
    assert offline.text == "offline"
    await recorder.await_topic(EVENT, 5, since, lambda m: m.json()["type"] == "device_unavailable")
    events = [m.json() for m in recorder.on(EVENT, since) if m.json()["mac_address"] == mac]
    kinds = [e["type"] for e in events]
    assert kinds[:4] == ["device_failed", "device_failed", "device_failed", "device_unavailable"]
    assert events[0]["data"]["error"] == f"{mac} not found: it is out of range or powered off"
    assert worker.status == "offline"
    assert worker.stats.consecutive_failures >= 3
    await gateway.mqtt.flush()
    retained = await aretained(mosquitto, f"blupow/{mac_id}/#")
    assert retained[f"blupow/{mac_id}/availability"] == b"offline"
    assert "battery_voltage" in json.loads(retained[f"blupow/{mac_id}/state"])  # last values stay

    since = recorder.mark()
    sim_world.out_of_range.discard(mac)
    back = await recorder.await_topic(f"blupow/{mac_id}/availability", 10, since)
    assert back.text == "online"
    connected = await recorder.await_topic(EVENT, 5, since, lambda m: m.json()["type"] == "device_connected")
    assert connected.json()["mac_address"] == mac
    assert worker.stats.consecutive_failures == 0
    assert worker.stats.last_error is None


async def test_two_failures_do_not_make_a_device_unavailable(
    gateway_factory: GatewayFactory, sim_world: SimWorld, mqtt_recorder: Any
) -> None:
    recorder = mqtt_recorder()
    (device,) = options_for(sim_world, ["controller"])
    mac_id = device.mac_address.replace(":", "")
    gateway = await gateway_factory((device,), poll_interval=0.3)
    worker = gateway.scheduler.unit(device.mac_address)
    await recorder.await_topic(f"blupow/{mac_id}/availability", 5, match=lambda m: m.text == "online")
    await recorder.await_topic(EVENT, 5, match=lambda m: m.json()["type"] == "device_connected")
    since = recorder.mark()
    sim_world.held.add(device.mac_address)
    sim_world.drop(device.mac_address)
    await wait_until(lambda: worker.stats.consecutive_failures == 2, 5)
    sim_world.held.discard(device.mac_address)
    await wait_until(lambda: worker.stats.consecutive_failures == 0, 5)
    assert worker.stats.failures == 2
    assert worker.status == "online"
    assert recorder.on(f"blupow/{mac_id}/availability", since) == []
    events = [m.json() for m in recorder.on(EVENT, since)]
    assert [e["type"] for e in events] == ["device_failed", "device_failed"]
    assert events[0]["data"]["error"] == f"could not connect to {device.mac_address}: held by another central"


def test_backoff_is_exponential_capped_and_jittered() -> None:
    scheduler = Scheduler(
        listener=None,  # type: ignore[arg-type]
        link_factory=lambda r, d: None,
        poll_interval=30,
        backoff_base=2.0,
        backoff_cap=20.0,
        jitter=0.2,
        rng=random.Random(1),
    )
    for failures, nominal in ((1, 2.0), (2, 4.0), (3, 8.0), (4, 16.0), (5, 20.0), (9, 20.0)):
        delays = [scheduler.backoff(failures) for _ in range(200)]
        assert nominal * 0.8 <= min(delays) and max(delays) <= nominal * 1.2, failures
        assert max(delays) - min(delays) > nominal * 0.2  # jitter spreads retries
    defaults = Scheduler(listener=None, link_factory=lambda r, d: None, poll_interval=30)  # type: ignore[arg-type]
    assert (defaults.backoff_base, defaults.backoff_cap) == (10.0, 300.0)


async def test_a_failing_device_is_retried_less_and_less_often(
    gateway_factory: GatewayFactory, sim_world: SimWorld
) -> None:
    healthy, broken = options_for(sim_world, ["controller", "dcc"])
    sim_world.out_of_range.add(broken.mac_address)
    gateway = await gateway_factory(
        (healthy, broken), poll_interval=0.1, scheduler={"backoff_base": 0.1, "backoff_cap": 10.0, "jitter": 0.1}
    )
    started = time.monotonic()
    await asyncio.sleep(2.0)
    ok = gateway.scheduler.unit(healthy.mac_address).stats.attempts
    failed = gateway.scheduler.unit(broken.mac_address).stats.attempts
    elapsed = time.monotonic() - started
    # 0.1, 0.2, 0.4, 0.8 s apart: about 5 tries in 2 s, while the healthy one is polled ~every 0.1 s
    assert 3 <= failed <= 6, failed
    assert ok >= 10 * failed / 3, (ok, failed, elapsed)


async def test_newly_added_device_is_polled_at_once(gateway_factory: GatewayFactory, sim_world: SimWorld) -> None:
    gateway = await gateway_factory(poll_interval=60)
    sim = sim_world.add("controller")
    started = time.monotonic()
    await gateway.registry.add_device(
        DeviceRecord(sim.mac, "renogy_charge_controller", "x"), create_device("renogy_charge_controller")
    )
    await wait_until(lambda: gateway.scheduler.unit(sim.mac).stats.successes == 1, 2)
    print(f"first poll of a new device done {1000 * (time.monotonic() - started):.0f} ms after add_device")


async def test_cycle_time_is_published_and_heartbeat_touched(
    gateway_factory: GatewayFactory, sim_world: SimWorld, mqtt_recorder: Any, tmp_path: Path
) -> None:
    recorder = mqtt_recorder()
    sim_world.connect_delay = 0.05
    devices = options_for(sim_world, ["controller", "dcc", "battery"])
    heartbeat = tmp_path / "heartbeat"
    gateway = await gateway_factory(devices, poll_interval=0.4, max_connections=1)
    health = await recorder.await_topic("blupow/gateway/health", 5, match=lambda m: (m.json()["last_cycle_s"] or 0) > 0)
    cycle = health.json()["last_cycle_s"]
    # three devices through one connection at >= 50 ms connect each: the cycle takes that long
    assert 0.15 <= cycle < 0.4 + 1.0
    assert gateway.health()["healthy"] is True
    assert heartbeat.exists()
    first = heartbeat.stat().st_mtime_ns
    await wait_until(lambda: heartbeat.stat().st_mtime_ns > first, 3, "heartbeat touched again")
    await gateway.stop()
    os.utime(heartbeat, (0, 0))
    await asyncio.sleep(0.5)
    assert heartbeat.stat().st_mtime_ns == 0  # a stopped gateway no longer claims to be alive

"""Device searches (``BleLink._find``) and the ``scan`` command take turns on the adapter.

bleak shares one D-Bus connection per event loop and BlueZ allows one discovery
session per connection: without ``transport.discovery_lock`` a scan started while
a device is being searched for (or the reverse) fails with
``org.bluez.Error.InProgress``. Real bleak against the fake BlueZ, which refuses a
second StartDiscovery from the same connection like BlueZ does.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from blupow_gateway.devices import create_device
from blupow_gateway.simulator import KINDS, SimulatedDevice
from blupow_gateway.simulator.fake_bluez import FakeBlueZ
from blupow_gateway.transport import BleLink, ConnectFailed, DeviceNotFound, LinkOptions, TransportError, scan
from blupow_gateway.transport import discovery_lock as _discovery_lock
from tests.plugins.gateway import wait_until

FAST = 0.005


def link_for(sim: SimulatedDevice, kind: str, **options: Any) -> BleLink:
    spec = KINDS[kind]
    device = create_device(spec.type_name, variant=spec.variant)
    return BleLink(sim.mac, device, LinkOptions(**{"connect_timeout": 2.0, "request_timeout": 0.5, **options}))


async def discovering(fake: FakeBlueZ) -> None:
    await wait_until(lambda: bool(fake.discovery_sessions), 2, "a discovery session")


async def test_scan_waits_for_a_device_search_that_then_succeeds(fake_bluez: FakeBlueZ) -> None:
    late = fake_bluez.add("controller", latency=FAST, failures={"advertising": False})
    other = fake_bluez.add("dcc")
    link = link_for(late, "controller")
    search = asyncio.create_task(link.connect())
    try:
        await discovering(fake_bluez)
        scanning = asyncio.create_task(scan(0.2))
        await asyncio.sleep(0.3)
        assert not scanning.done()  # waiting its turn, not failed with InProgress
        searched_until = time.monotonic()
        fake_bluez.failures(late.mac).advertising = True  # comes into range
        await search
        results = await scanning
        assert link.connected
        assert await link.read_registers(0xFF, 0x0100, 2) == [late.registers[0x100], late.registers[0x101]]
    finally:
        search.cancel()
        await link.disconnect()
    assert other.mac in {r.address for r in results}
    assert fake_bluez.stats.discovery_refusals == 0
    assert fake_bluez.stats.discovery_starts == 2  # one after the other
    assert time.monotonic() - searched_until >= 0.2  # the scan listened its full time after the search
    assert not fake_bluez.discovery_sessions and not _discovery_lock().locked()


async def test_scan_waits_for_a_device_search_that_then_fails(fake_bluez: FakeBlueZ) -> None:
    absent = fake_bluez.add("controller", failures={"advertising": False})
    other = fake_bluez.add("dcc")
    link = link_for(absent, "controller", connect_timeout=0.4)
    search = asyncio.create_task(link.connect())
    await discovering(fake_bluez)
    results = await scan(0.2)
    with pytest.raises(DeviceNotFound, match=r"not found within 0\.4 s"):
        await search
    assert search.done()  # the scan came after the search
    assert {r.address for r in results} == {other.mac}
    assert fake_bluez.stats.discovery_refusals == 0
    assert not fake_bluez.discovery_sessions and not _discovery_lock().locked()


async def test_device_search_waits_for_a_running_scan_then_connects(fake_bluez: FakeBlueZ) -> None:
    sim = fake_bluez.add("controller", latency=FAST)
    other = fake_bluez.add("dcc")
    scanning = asyncio.create_task(scan(1.0))
    await discovering(fake_bluez)
    # The find timeout (0.3 s) is shorter than the rest of the scan: the search
    # succeeds only because it counts from when the search gets the adapter.
    link = link_for(sim, "controller", connect_timeout=0.3)
    started = time.monotonic()
    try:
        await link.connect()
        waited = time.monotonic() - started
        assert link.connected
        assert await link.read_registers(0xFF, 0x0100, 1) == [sim.registers[0x100]]
    finally:
        await link.disconnect()
    assert scanning.done() and waited > 0.3
    assert {sim.mac, other.mac} <= {r.address for r in scanning.result()}
    assert fake_bluez.stats.discovery_refusals == 0
    assert fake_bluez.stats.discovery_starts == 2


@pytest.mark.parametrize("who", ["search", "scan"])
@pytest.mark.parametrize("when", ["starting", "listening"])
async def test_cancelled_discovery_leaves_the_adapter_free(fake_bluez: FakeBlueZ, who: str, when: str) -> None:
    """Cancelled while StartDiscovery is pending or while listening: the lock and BlueZ's session both go.

    An abandoned StartDiscovery would leave a session on bleak's shared connection
    that nothing stops, and every later scan would get InProgress.
    """
    absent = fake_bluez.add("controller", failures={"advertising": False})
    other = fake_bluez.add("dcc")
    if when == "starting":
        fake_bluez.discovery_start_delay = 0.3
    link = link_for(absent, "controller", connect_timeout=5)
    task = asyncio.create_task(link.connect() if who == "search" else scan(5))
    await discovering(fake_bluez)  # the session exists from the call on; its reply may still be pending
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not fake_bluez.discovery_sessions and not _discovery_lock().locked()
    fake_bluez.discovery_start_delay = 0.0
    assert other.mac in {r.address for r in await scan(0.1)}
    assert fake_bluez.stats.discovery_refusals == 0


async def test_failed_discovery_start_releases_the_lock(fake_bluez: FakeBlueZ) -> None:
    sim = fake_bluez.add("controller")
    fake_bluez.set_powered(False)
    with pytest.raises(ConnectFailed, match="could not scan on hci0"):
        await link_for(sim, "controller").connect()
    assert not _discovery_lock().locked()
    with pytest.raises(TransportError, match="scan failed on hci0"):
        await scan(0.1)
    assert not _discovery_lock().locked()
    fake_bluez.set_powered(True)
    assert sim.mac in {r.address for r in await scan(0.1)}

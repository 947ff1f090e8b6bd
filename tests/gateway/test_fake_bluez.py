"""Real bleak 3 (BlueZ D-Bus backend) against the fake org.bluez on a private dbus-daemon.

Layers, bottom up: the private bus; bleak alone (discovery, GATT, notifications,
every injected failure); the gateway transport (BleLink, scan); the
``blupow-gateway`` CLI in-process and as a subprocess against ``blupow-sim``;
``blupow-sim`` itself (config errors, control socket, no orphan processes).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from bleak import BleakClient, BleakScanner
from bleak.backends.device import BLEDevice
from bleak.exc import BleakDBusError, BleakError, BleakGATTProtocolError
from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from blupow_gateway import cli as gateway_cli
from blupow_gateway import modbus
from blupow_gateway.devices import create_device, driver
from blupow_gateway.simulator import KINDS, SimulatedDevice, SimulatedModule, default_mac
from blupow_gateway.simulator import cli as sim_cli
from blupow_gateway.simulator.bus import ENV_VAR, PrivateBus
from blupow_gateway.simulator.cli import SimControl
from blupow_gateway.simulator.fake_bluez import (
    ABSENT_MESSAGE,
    CHAR_FFD1,
    CHAR_FFD4,
    CHAR_FFF1,
    HELD_MESSAGE,
    SERVICE_FFD0,
    SERVICE_FFF0,
    VENDOR_CHAR,
    Failures,
    FakeBlueZ,
)
from blupow_gateway.simulator.module import valid_frame_end
from blupow_gateway.transport import (
    BleLink,
    ConnectFailed,
    DeviceNotFound,
    LinkLost,
    LinkOptions,
    ReplyTimeout,
    scan,
)
from tests.plugins.fake_bluez import SimDevice, SimModule, SimProcess, SimUnit, parse_banner_line

FAST = 0.005  # simulated module latency for most tests (real modules: 70-120 ms)
ALL_KINDS = list(KINDS)
# Kinds that answer Modbus (the shunt streams notifications instead: tests/gateway/test_shunt.py)
MODBUS_KINDS = [k for k in KINDS if KINDS[k].type_name != "renogy_shunt"]


def first_block(sim: SimulatedDevice, limit: int = 34) -> tuple[int, int]:
    """The first run of consecutive registers the simulated device answers (≤ limit words)."""

    def in_gap(register: int) -> bool:  # a read starting in a model gap gets no reply
        return any(g <= register < g + n for g, n in sim.missing_blocks)

    start = next(r for r in sorted(sim.registers) if not in_gap(r))
    count = 1
    while count < limit and start + count in sim.registers:
        count += 1
    return start, count


class Notifications:
    """Collects notifications and reassembles one Modbus reply."""

    def __init__(self, request: modbus.Request) -> None:
        self.chunks: list[bytes] = []
        self.assembler = modbus.ResponseAssembler(request)
        self.frame: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def __call__(self, _char: Any, data: bytearray) -> None:
        self.chunks.append(bytes(data))
        frame = self.assembler.feed(bytes(data))
        if frame is not None and not self.frame.done():
            self.frame.set_result(frame)


def reply_char(client: BleakClient) -> Any:
    service = next(s for s in client.services if s.uuid == SERVICE_FFF0)
    return next(c for c in service.characteristics if c.uuid == CHAR_FFF1)


def request_char(client: BleakClient) -> Any:
    service = next(s for s in client.services if s.uuid == SERVICE_FFD0)
    return next(c for c in service.characteristics if c.uuid == CHAR_FFD1)


async def modbus_read(client: BleakClient, sim: SimulatedDevice, start: int, count: int) -> Notifications:
    request = modbus.Request.read(sim.modbus_id, start, count)
    notes = Notifications(request)
    await client.start_notify(reply_char(client), notes)
    await client.write_gatt_char(request_char(client), request.frame, response=False)
    await asyncio.wait_for(notes.frame, 2)
    return notes


# --- the private bus ----------------------------------------------------------------------


def test_private_bus_starts_and_never_outlives_its_context() -> None:
    bus = PrivateBus()
    with pytest.raises(RuntimeError, match="boom"), bus:
        assert bus.address.startswith("unix:path=")
        pid = bus.process.pid if bus.process else 0
        socket_path = bus.socket_path
        assert socket_path.exists()
        raise RuntimeError("boom")
    assert not _alive(pid)
    assert not socket_path.exists()
    assert not bus.running


def test_session_bus_fixture_sets_the_system_bus_variable(private_dbus: PrivateBus) -> None:
    assert os.environ[ENV_VAR] == private_dbus.address
    assert private_dbus.running


# --- bleak against the fake: discovery -------------------------------------------------------


async def test_discover_finds_every_family_with_name_rssi_and_manufacturer_data(fake_bluez: FakeBlueZ) -> None:
    sims = {k: fake_bluez.add(k, rssi=-50 - 3 * i) for i, k in enumerate(ALL_KINDS)}
    found = await BleakScanner.discover(timeout=0.2, return_adv=True)
    for i, (kind, sim) in enumerate(sims.items()):
        device, adv = found[sim.mac]
        assert device.name == sim.name, kind
        assert adv.local_name == sim.name, kind
        assert abs(adv.rssi - (-50 - 3 * i)) <= 2, kind  # jittered around the configured RSSI
        assert adv.manufacturer_data == sim.manufacturer_data(), kind
        assert set(adv.service_uuids) == {u.lower() for u in sim.service_uuids}, kind
    assert found[sims["battery_pro"].mac][1].manufacturer_data.keys() == {0xE14C}
    assert fake_bluez.stats.discovery_starts == 1


async def test_find_device_by_address_is_quick_and_misses_silent_devices(fake_bluez: FakeBlueZ) -> None:
    sim = fake_bluez.add("controller")
    silent = fake_bluez.add("dcc", failures={"advertising": False})
    started = time.monotonic()
    device = await BleakScanner.find_device_by_address(sim.mac, timeout=2)
    assert device is not None and device.name == sim.name
    assert time.monotonic() - started < 0.5
    assert await BleakScanner.find_device_by_address(silent.mac, timeout=0.2) is None


async def test_discovery_filter_by_service_uuid(fake_bluez: FakeBlueZ) -> None:
    sim = fake_bluez.add("controller")
    assert await BleakScanner.find_device_by_address(sim.mac, timeout=0.2, service_uuids=[SERVICE_FFD0])
    missing = await BleakScanner.find_device_by_address(
        sim.mac, timeout=0.2, service_uuids=["0000abcd-0000-1000-8000-00805f9b34fb"]
    )
    assert missing is None


# --- bleak against the fake: GATT and Modbus ----------------------------------------------------


@pytest.mark.parametrize("kind", MODBUS_KINDS)
async def test_modbus_read_reply_arrives_in_20_byte_notifications(fake_bluez: FakeBlueZ, kind: str) -> None:
    sim = fake_bluez.add(kind, latency=FAST)
    start, count = first_block(sim)
    async with BleakClient(sim.mac, timeout=5) as client:
        notes = await modbus_read(client, sim, start, count)
    request = notes.assembler.request
    words = modbus.parse_response(notes.frame.result(), request)
    assert words == [sim.registers[r] for r in range(start, start + count)]
    sizes = [len(c) for c in notes.chunks]
    assert sum(sizes) == 2 * count + 5
    assert all(size == 20 for size in sizes[:-1]) and 0 < sizes[-1] <= 20
    stats = fake_bluez.peripheral(sim.mac).stats
    assert stats.writes == [request.frame] and stats.replies == 1


async def test_whole_reply_in_one_notification_with_large_mtu(fake_bluez: FakeBlueZ) -> None:
    sim = fake_bluez.add("controller", latency=FAST, chunk_size=0)
    async with BleakClient(sim.mac, timeout=5) as client:
        assert reply_char(client).max_write_without_response_size > 20
        notes = await modbus_read(client, sim, 0x0100, 34)
    assert [len(c) for c in notes.chunks] == [73]


async def test_gatt_tree_has_bluez_paths_vendor_decoy_and_readable_ffd4(fake_bluez: FakeBlueZ) -> None:
    sim = fake_bluez.add("inverter", latency=FAST)
    async with BleakClient(sim.mac, timeout=5) as client:
        decoy = client.services.get_characteristic(VENDOR_CHAR)
        assert decoy is not None and decoy.service_uuid != SERVICE_FFD0
        assert "ffd1" in decoy.uuid  # why matching on a substring is wrong
        char = client.services.get_characteristic(CHAR_FFD4)
        assert char is not None and char.service_uuid == SERVICE_FFD0
        assert await client.read_gatt_char(char) == bytearray(b"\x01\x00")
        path = reply_char(client).obj[0]
        device_path = "/org/bluez/hci0/dev_" + sim.mac.replace(":", "_")
        assert path.startswith(device_path + "/service") and "/char" in path
        # A write to the decoy reaches no Modbus slave.
        await client.write_gatt_char(decoy, modbus.read_request(sim.modbus_id, 4000, 1), response=False)
    stats = fake_bluez.peripheral(sim.mac).stats
    assert stats.reads == [CHAR_FFD4]
    assert stats.writes == [] and [u for u, _ in stats.other_writes] == [VENDOR_CHAR]


async def test_write_type_is_checked_against_flags(fake_bluez: FakeBlueZ) -> None:
    sim = fake_bluez.add("controller", latency=FAST)
    async with BleakClient(sim.mac, timeout=5) as client:
        await client.write_gatt_char(request_char(client), modbus.read_request(0xFF, 0x0A, 1), response=True)
        with pytest.raises(BleakGATTProtocolError):
            await client.write_gatt_char(reply_char(client), b"\x00", response=False)
    assert len(fake_bluez.peripheral(sim.mac).stats.writes) == 1


async def test_pro_battery_duplicate_uuids_need_service_and_handle(fake_bluez: FakeBlueZ) -> None:
    sim = fake_bluez.add("battery_pro", latency=FAST)
    assert fake_bluez.peripheral(sim.mac).layout == "builtin_duplicates"
    async with BleakClient(sim.mac, timeout=5) as client:
        with pytest.raises(BleakError, match="Multiple Characteristics with this UUID"):
            client.services.get_characteristic(CHAR_FFF1)
        with pytest.raises(BleakError, match="Multiple Characteristics with this UUID"):
            client.services.get_characteristic(CHAR_FFD1)
        duplicates = [c for c in client.services.characteristics.values() if c.uuid == CHAR_FFF1]
        wrong = next(c for c in duplicates if c.service_uuid != SERVICE_FFF0)
        assert wrong.handle != reply_char(client).handle
        with pytest.raises(BleakGATTProtocolError):  # renogy-bt#108: subscribing to every fff1 fails
            await client.start_notify(wrong, lambda _c, _d: None)
        # Resolved by service + UUID (+ property), the real pair works through its handle.
        notes = await modbus_read(client, sim, 5000, 4)
    assert modbus.parse_response(notes.frame.result(), notes.assembler.request) == [
        sim.registers[r] for r in range(5000, 5004)
    ]


async def test_duplicate_ffd1_outside_ffd0_answers_nothing(fake_bluez: FakeBlueZ) -> None:
    sim = fake_bluez.add("battery_pro", latency=FAST)
    async with BleakClient(sim.mac, timeout=5) as client:
        wrong = next(
            c
            for c in client.services.characteristics.values()
            if c.uuid == CHAR_FFD1 and c.service_uuid != SERVICE_FFD0
        )
        request = modbus.Request.read(sim.modbus_id, 5000, 4)
        notes = Notifications(request)
        await client.start_notify(reply_char(client), notes)
        await client.write_gatt_char(wrong, request.frame, response=False)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(notes.frame, 0.2)
    assert fake_bluez.peripheral(sim.mac).stats.writes == []


async def test_acquire_notify_delivers_chunks_over_a_socket(fake_bluez: FakeBlueZ) -> None:
    sim = fake_bluez.add("battery", latency=FAST)
    request = modbus.Request.read(sim.modbus_id, 5000, 17)
    async with BleakClient(sim.mac, timeout=5) as client:
        notes = Notifications(request)
        await client.start_notify(reply_char(client), notes, bluez={"use_start_notify": False})
        await client.write_gatt_char(request_char(client), request.frame, response=False)
        await asyncio.wait_for(notes.frame, 2)
        reply = fake_bluez.peripheral(sim.mac).characteristic("reply")
        assert reply.notifying
        await client.stop_notify(reply_char(client))  # bleak closes its end of the socket
        for _ in range(100):
            if not reply.notifying:
                break
            await asyncio.sleep(0.01)
        assert not reply.notifying
    assert [len(c) for c in notes.chunks] == [20, 19]
    calls = [call for _t, _p, call in fake_bluez.stats.calls]
    assert "org.bluez.GattCharacteristic1.AcquireNotify" in calls
    assert not any(call.endswith("StartNotify") for call in calls)


async def test_pair_connects_through_pair_method(fake_bluez: FakeBlueZ) -> None:
    sim = fake_bluez.add("controller", latency=FAST)
    async with BleakClient(sim.mac, timeout=5, pair=True) as client:
        assert client.is_connected
    peripheral = fake_bluez.peripheral(sim.mac)
    assert peripheral.paired and peripheral.trusted and peripheral.stats.connects == 1


# --- bleak against the fake: injected failures ------------------------------------------------


async def test_le_connection_abort_by_local_is_retried_by_bleak(fake_bluez: FakeBlueZ) -> None:
    sim = fake_bluez.add("controller", latency=FAST, failures={"fail_next_connects": 2})
    async with BleakClient(sim.mac, timeout=5) as client:
        assert client.is_connected
    stats = fake_bluez.peripheral(sim.mac).stats
    assert (stats.connect_calls, stats.failed_connects, stats.connects) == (3, 2, 1)
    assert fake_bluez.stats.connections == 0


async def test_services_never_resolved_times_out_and_disconnects(fake_bluez: FakeBlueZ) -> None:
    sim = fake_bluez.add("controller", failures={"never_resolve_services": True})
    device = await BleakScanner.find_device_by_address(sim.mac, timeout=2)
    assert device is not None
    client = BleakClient(device, timeout=0.3)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await client.connect()
    assert time.monotonic() - started < 1.5
    await asyncio.sleep(0.05)  # bleak's clean-up Disconnect
    assert not fake_bluez.peripheral(sim.mac).connected


async def test_link_drop_after_a_write_leaves_the_request_unanswered(fake_bluez: FakeBlueZ) -> None:
    sim = fake_bluez.add("controller", latency=FAST, failures={"drop_link_after_writes": 2})
    lost = asyncio.Event()
    chunks: list[bytes] = []
    async with BleakClient(sim.mac, timeout=5, disconnected_callback=lambda _c: lost.set()) as client:
        await client.start_notify(reply_char(client), lambda _c, data: chunks.append(bytes(data)))
        request = modbus.Request.read(sim.modbus_id, 0x0100, 2)
        await client.write_gatt_char(request_char(client), request.frame, response=False)
        for _ in range(100):  # the first request is answered (9 bytes)
            if sum(map(len, chunks)) >= 9:
                break
            await asyncio.sleep(0.01)
        answered = len(chunks)
        await client.write_gatt_char(request_char(client), request.frame, response=False)
        await asyncio.wait_for(lost.wait(), 1)
        assert not client.is_connected
    assert answered > 0 and len(chunks) == answered  # nothing came back for the second request
    peripheral = fake_bluez.peripheral(sim.mac)
    assert peripheral.stats.drops == 1 and peripheral.failures.drop_link_after_writes == 0
    assert not peripheral.gatt_exported and len(peripheral.stats.writes) == 2


async def test_in_progress_writes_are_retried_by_bleak(fake_bluez: FakeBlueZ) -> None:
    sim = fake_bluez.add("controller", latency=FAST, failures={"in_progress_writes": 3})
    async with BleakClient(sim.mac, timeout=5) as client:
        notes = await modbus_read(client, sim, 0x0100, 4)
    assert notes.frame.done()
    stats = fake_bluez.peripheral(sim.mac).stats
    assert stats.in_progress_errors == 3 and len(stats.writes) == 1


async def test_absent_device_connect_fails_with_host_down(fake_bluez: FakeBlueZ) -> None:
    sim = fake_bluez.add("controller", cached=True, failures={"advertising": False, "absent_connect_delay": 0.1})
    device = BLEDevice(sim.mac, sim.name, {"path": fake_bluez.peripheral(sim.mac).path, "props": {}})
    started = time.monotonic()
    with pytest.raises(BleakDBusError, match=ABSENT_MESSAGE):
        await BleakClient(device, timeout=2).connect()
    assert 0.1 <= time.monotonic() - started < 1


async def test_held_by_another_central_is_silent_and_refuses_connect(fake_bluez: FakeBlueZ) -> None:
    sim = fake_bluez.add("controller", cached=True, failures={"held_by_other_central": True})
    assert await BleakScanner.find_device_by_address(sim.mac, timeout=0.2) is None
    device = BLEDevice(sim.mac, sim.name, {"path": fake_bluez.peripheral(sim.mac).path, "props": {}})
    with pytest.raises(BleakDBusError, match=HELD_MESSAGE):
        await BleakClient(device, timeout=2).connect()
    assert fake_bluez.peripheral(sim.mac).stats.refused_connects == 1
    fake_bluez.failures(sim.mac).held_by_other_central = False  # the phone app let go
    async with BleakClient(sim.mac, timeout=5) as client:
        assert client.is_connected


async def _raw_connect(address: str, path: str) -> tuple[MessageBus, Message]:
    bus = await MessageBus(bus_address=address).connect()
    reply = await bus.call(Message(destination="org.bluez", path=path, interface="org.bluez.Device1", member="Connect"))
    assert reply is not None
    return bus, reply


async def test_second_dbus_client_cannot_take_a_held_connection(
    fake_bluez: FakeBlueZ, private_dbus: PrivateBus
) -> None:
    sim = fake_bluez.add("controller", cached=True)
    path = fake_bluez.peripheral(sim.mac).path
    first, reply = await _raw_connect(private_dbus.address, path)
    assert reply.message_type is MessageType.METHOD_RETURN
    second, refused = await _raw_connect(private_dbus.address, path)
    assert refused.message_type is MessageType.ERROR
    assert refused.error_name == "org.bluez.Error.Failed" and refused.body == [HELD_MESSAGE]
    first.disconnect()  # the holder goes away (its D-Bus name vanishes); the link stays, like BlueZ
    await first.wait_for_disconnect()
    for _ in range(50):
        if fake_bluez.peripheral(sim.mac).owner is None:
            break
        await asyncio.sleep(0.01)
    third_reply = await second.call(
        Message(destination="org.bluez", path=path, interface="org.bluez.Device1", member="Connect")
    )
    assert third_reply is not None and third_reply.message_type is MessageType.METHOD_RETURN
    assert fake_bluez.peripheral(sim.mac).stats.connects == 1
    second.disconnect()


async def test_garbage_notifications_before_the_reply_are_skipped(fake_bluez: FakeBlueZ) -> None:
    sim = fake_bluez.add("controller", latency=FAST, failures={"garbage_notifications": True})
    async with BleakClient(sim.mac, timeout=5) as client:
        notes = await modbus_read(client, sim, 0x0100, 16)
    assert notes.chunks[0][:3] == bytes([0xFF, 0x03, 32])  # looks like the reply header
    assert notes.assembler.discarded >= len(notes.chunks[0])
    words = modbus.parse_response(notes.frame.result(), notes.assembler.request)
    assert words == [sim.registers[r] for r in range(0x0100, 0x0110)]


async def test_drop_from_outside_disconnects_and_reconnect_works(fake_bluez: FakeBlueZ) -> None:
    sim = fake_bluez.add("dcc", latency=FAST)
    lost = asyncio.Event()
    async with BleakClient(sim.mac, timeout=5, disconnected_callback=lambda _c: lost.set()) as client:
        assert fake_bluez.drop(sim.mac) is True
        await asyncio.wait_for(lost.wait(), 1)
        assert not client.is_connected
    async with BleakClient(sim.mac, timeout=5) as client:
        await modbus_read(client, sim, 0x0100, 2)
    assert fake_bluez.peripheral(sim.mac).stats.connects == 2


async def test_stop_tells_connected_clients_before_leaving_the_bus(private_dbus: PrivateBus) -> None:
    fake = FakeBlueZ(private_dbus.address)
    await fake.start()
    try:
        sim = fake.add("controller", latency=FAST)
        lost = asyncio.Event()
        client = BleakClient(sim.mac, timeout=5, disconnected_callback=lambda _c: lost.set())
        await client.connect()
    finally:
        await fake.stop()
    await asyncio.wait_for(lost.wait(), 1)  # no stale "connected" client (fake-bluez.md pitfall 8)
    assert not client.is_connected
    await client.disconnect()


async def test_connections_are_counted_across_devices(fake_bluez: FakeBlueZ) -> None:
    sims = [fake_bluez.add(k, latency=FAST) for k in ("controller", "dcc", "battery")]
    found = await BleakScanner.discover(timeout=0.1)
    devices = {d.address: d for d in found}
    clients = [BleakClient(devices[s.mac], timeout=5) for s in sims]
    await asyncio.gather(*(c.connect() for c in clients))
    assert fake_bluez.stats.connections == 3
    await asyncio.gather(*(c.disconnect() for c in clients))
    assert fake_bluez.stats.connections == 0
    assert fake_bluez.stats.max_simultaneous_connections == 3


async def test_two_scans_from_one_process_collide_like_bluez(fake_bluez: FakeBlueZ) -> None:
    # bleak shares one D-Bus connection per event loop, and BlueZ allows one
    # discovery session per connection: a second concurrent scan gets InProgress.
    sim = fake_bluez.add("controller")
    async with BleakScanner():
        with pytest.raises(BleakDBusError, match="InProgress"):
            await BleakScanner.find_device_by_address(sim.mac, timeout=0.2)
    assert fake_bluez.stats.discovery_starts == 1
    assert fake_bluez.stats.discovery_refusals == 1


async def test_another_dbus_client_discovers_alongside_like_bluez(
    fake_bluez: FakeBlueZ, private_dbus: PrivateBus
) -> None:
    # The limit is per D-Bus client, not per adapter: another connection (another
    # process) joins the running discovery, and stopping one leaves the other.
    other = await MessageBus(bus_address=private_dbus.address).connect()

    async def adapter_call(member: str) -> Message:
        reply = await other.call(
            Message(destination="org.bluez", path="/org/bluez/hci0", interface="org.bluez.Adapter1", member=member)
        )
        assert reply is not None
        return reply

    try:
        async with BleakScanner():
            assert (await adapter_call("StartDiscovery")).message_type is MessageType.METHOD_RETURN
            second = await adapter_call("StartDiscovery")
            assert second.message_type is MessageType.ERROR and second.error_name == "org.bluez.Error.InProgress"
        assert len(fake_bluez.discovery_sessions) == 1  # bleak stopped only its own
        assert (await adapter_call("StopDiscovery")).message_type is MessageType.METHOD_RETURN
    finally:
        other.disconnect()
    assert not fake_bluez.discovery_sessions
    assert (fake_bluez.stats.discovery_starts, fake_bluez.stats.discovery_refusals) == (2, 1)


async def test_adapter_powered_off_fails_scans_clearly(fake_bluez: FakeBlueZ) -> None:
    fake_bluez.add("controller")
    fake_bluez.set_powered(False)
    with pytest.raises(BleakError):
        await BleakScanner.discover(timeout=0.1)


def test_failures_from_yaml_values_are_validated() -> None:
    failures = Failures.from_dict({"fail_next_connects": 2, "advertising": False, "connect_delay": 0.5})
    assert (failures.fail_next_connects, failures.advertising, failures.connect_delay) == (2, False, 0.5)
    with pytest.raises(ValueError, match="unknown failure 'explode'"):
        Failures.from_dict({"explode": True})
    with pytest.raises(ValueError, match="true or false"):
        Failures.from_dict({"advertising": "no"})
    with pytest.raises(ValueError, match="whole number"):
        Failures.from_dict({"fail_next_connects": -1})


async def test_control_operations_change_nothing_on_bad_input(fake_bluez: FakeBlueZ) -> None:
    sim = fake_bluez.add("controller")
    control = SimControl(fake_bluez)
    bad = control.handle({"op": "set", "mac": sim.mac, "failures": {"fail_next_connects": 3}, "behaviour": {"x": 1}})
    assert not bad["ok"] and "unknown behaviour" in bad["error"]
    assert fake_bluez.failures(sim.mac).fail_next_connects == 0
    good = control.handle({"op": "set", "mac": sim.mac, "behaviour": {"latency": 0.2}})
    assert good["ok"] and sim.behaviour.latency == 0.2
    assert control.handle({"op": "registers", "mac": "00:00:00:00:00:00"})["ok"] is False
    assert json.loads(control.handle_line(b"{not json"))["error"] == "not valid JSON"
    regs = control.handle({"op": "registers", "mac": sim.mac, "start": "0x0100", "count": 2})
    assert regs["registers"] == {"256": sim.registers[0x100], "257": sim.registers[0x101]}


# --- the gateway transport against the fake ------------------------------------------------------


@pytest.fixture
def fast_drivers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Shrink the inverter's 1 s init pause and 0.3 s pacing; the behaviour stays the same."""
    inverter = driver("renogy_inverter")
    monkeypatch.setattr(inverter, "init_delay", 0.02)
    monkeypatch.setattr(inverter, "request_pacing", 0.01)


def link_for(sim: SimulatedDevice, kind: str, **options: Any) -> BleLink:
    spec = KINDS[kind]
    device = create_device(spec.type_name, variant=spec.variant)
    opts = {"connect_timeout": 2.0, "request_timeout": 0.5, **options}
    return BleLink(sim.mac, device, LinkOptions(**opts))


@pytest.mark.usefixtures("fast_drivers")
@pytest.mark.parametrize("kind", MODBUS_KINDS)
async def test_ble_link_reads_every_family(fake_bluez: FakeBlueZ, kind: str) -> None:
    sim = fake_bluez.add(kind, latency=FAST, frozen=True)  # constant values: registers comparable
    link = link_for(sim, kind)
    try:
        reading = await link.device.read(link)
    finally:
        await link.disconnect()
    assert reading.values, kind
    assert reading.registers and reading.registers == {r: sim.registers[r] for r in reading.registers}
    peripheral = fake_bluez.peripheral(sim.mac)
    assert not peripheral.connected and fake_bluez.stats.max_simultaneous_connections == 1
    if KINDS[kind].type_name == "renogy_inverter":
        assert CHAR_FFD4 in peripheral.stats.reads  # the init read before any Modbus request


async def test_ble_link_recovers_from_aborts_in_progress_and_garbage(fake_bluez: FakeBlueZ) -> None:
    failures = {"fail_next_connects": 1, "in_progress_writes": 2, "garbage_notifications": True}
    sim = fake_bluez.add("controller", latency=FAST, failures=failures)
    # a failed attempt and its retry share one connect budget: room for a busy machine
    async with link_for(sim, "controller", connect_timeout=6.0) as link:
        assert await link.read_registers(0xFF, 0x0100, 4) == [sim.registers[0x100 + i] for i in range(4)]
    stats = fake_bluez.peripheral(sim.mac).stats
    assert stats.failed_connects == 1 and stats.in_progress_errors == 2


async def test_ble_link_write_register_switches_the_load(fake_bluez: FakeBlueZ) -> None:
    sim = fake_bluez.add("controller", latency=FAST)
    load = driver("renogy_charge_controller")().control("load")
    assert load is not None and load.state_field == "load_on"
    async with link_for(sim, "controller") as link:
        for value in (0, 1):
            await link.write_register(0xFF, load.register, value)
            (status,) = await link.read_registers(0xFF, 0x0120, 1)
            assert status >> 15 == value  # load_on: bit 15 of 0x0120
    assert sim.writes == [(load.register, 0), (load.register, 1)]


async def test_ble_link_link_loss_mid_read_then_reconnects(fake_bluez: FakeBlueZ) -> None:
    sim = fake_bluez.add("controller", latency=FAST, failures={"drop_link_after_writes": 1})
    link = link_for(sim, "controller")
    try:
        started = time.monotonic()
        with pytest.raises(LinkLost):
            await link.read_registers(0xFF, 0x0100, 4)
        assert time.monotonic() - started < 1
        assert await link.read_registers(0xFF, 0x0100, 4) == [sim.registers[0x100 + i] for i in range(4)]
    finally:
        await link.disconnect()
    assert fake_bluez.peripheral(sim.mac).stats.connects == 2


@pytest.mark.parametrize(
    ("failures", "message"),
    [({"advertising": False}, "not found"), ({"held_by_other_central": True}, "another central")],
)
async def test_ble_link_unreachable_device_fails_clearly(
    fake_bluez: FakeBlueZ, failures: dict[str, Any], message: str
) -> None:
    sim = fake_bluez.add("controller", failures=failures)
    link = link_for(sim, "controller", connect_timeout=0.3)
    started = time.monotonic()
    with pytest.raises(DeviceNotFound, match=message):
        await link.connect()
    assert time.monotonic() - started < 1.5


async def test_ble_link_silent_slave_times_out_and_keeps_the_link(fake_bluez: FakeBlueZ) -> None:
    """A silent slave fails alone: the link stays up for the module's other units."""
    sim = fake_bluez.add("controller", latency=FAST, drop_replies=True)
    link = link_for(sim, "controller", request_timeout=0.2)
    try:
        started = time.monotonic()
        with pytest.raises(ReplyTimeout, match="no reply"):
            await link.read_registers(0xFF, 0x0100, 2)
        assert time.monotonic() - started < 1
        assert link.connected and link.fresh_needed(0xFF) and not link.fresh_needed(0x30)
    finally:
        await link.disconnect()


async def test_ble_link_late_reply_is_never_taken_for_the_next_answer(fake_bluez: FakeBlueZ) -> None:
    """A reply that comes after its request timed out is drained by a fresh connection before the
    same slave is asked again, even for a request of the same shape (which it would match)."""
    sim = fake_bluez.add("controller", latency=0.4)
    link = link_for(sim, "controller", request_timeout=0.15)
    peripheral = fake_bluez.peripheral(sim.mac)
    try:
        with pytest.raises(ReplyTimeout):
            await link.read_registers(0xFF, 0x0100, 2)
        sim.behaviour.latency = FAST
        assert await link.read_registers(0xFF, 0x0100, 2) == [sim.registers[0x100], sim.registers[0x101]]
        await asyncio.sleep(0.5)  # past the moment the first reply was due
        # the late reply died with the first connection; only the second request's reply arrived
        assert (peripheral.stats.replies, peripheral.stats.connects, link.stats.drains) == (1, 2, 1)
    finally:
        await link.disconnect()


@pytest.mark.slow
async def test_ble_link_services_never_resolving_ends_in_connect_failed(fake_bluez: FakeBlueZ) -> None:
    # bleak-retry-connector connects with its own 20 s timeout; BleLink bounds the
    # whole attempt with connect_timeout * 3 + 5 s.
    sim = fake_bluez.add("controller", failures={"never_resolve_services": True})
    link = link_for(sim, "controller", connect_timeout=0.1)
    started = time.monotonic()
    with pytest.raises(ConnectFailed):
        await link.connect()
    assert time.monotonic() - started < 0.1 * 3 + 5 + 1
    await asyncio.sleep(0.05)
    assert not fake_bluez.peripheral(sim.mac).connected


async def test_scan_lists_every_family_with_types(fake_bluez: FakeBlueZ) -> None:
    sims = {k: fake_bluez.add(k) for k in ALL_KINDS}
    results = {r.address: r for r in await scan(0.2)}
    for kind, sim in sims.items():
        assert results[sim.mac].name == sim.name
        assert KINDS[kind].type_name in results[sim.mac].types, kind


# --- the blupow-gateway CLI, in-process ---------------------------------------------------------


def _kind_args(kind: str) -> list[str]:
    spec = KINDS[kind]
    args = ["--type", spec.type_name]
    if spec.variant:
        args += ["--variant", spec.variant]
    return args


@pytest.mark.usefixtures("fast_drivers")
async def test_cli_probe_every_family(fake_bluez: FakeBlueZ, capsys: pytest.CaptureFixture[str]) -> None:
    sims = {k: fake_bluez.add(k, latency=FAST) for k in ALL_KINDS}
    for kind, sim in sims.items():
        argv = ["probe", sim.mac, *_kind_args(kind), "--connect-timeout", "3", "--request-timeout", "0.3"]
        # The CLI runs its own event loop (asyncio.run); the fake answers from this one.
        rc = await asyncio.to_thread(gateway_cli.main, argv)
        out = capsys.readouterr()
        assert rc == 0, (kind, out.err)
        report = json.loads(out.out)
        assert report["mac_address"] == sim.mac and report["name"] == sim.name, kind
        assert report["type"] == KINDS[kind].type_name and report["values"], kind
    assert fake_bluez.stats.max_simultaneous_connections == 1


async def test_cli_probe_failure_is_one_clear_line(fake_bluez: FakeBlueZ, capsys: pytest.CaptureFixture[str]) -> None:
    sim = fake_bluez.add("controller", failures={"held_by_other_central": True})
    argv = ["probe", sim.mac, "--type", "renogy_charge_controller", "--connect-timeout", "0.3"]
    rc = await asyncio.to_thread(gateway_cli.main, argv)
    err = capsys.readouterr().err
    assert rc == 1
    assert err.startswith("probe failed:") and "another central" in err and "Traceback" not in err


async def test_cli_scan_json(fake_bluez: FakeBlueZ, capsys: pytest.CaptureFixture[str]) -> None:
    sims = [fake_bluez.add(k) for k in ALL_KINDS]
    rc = await asyncio.to_thread(gateway_cli.main, ["scan", "--seconds", "0.5", "--json"])
    assert rc == 0
    listed = {entry["mac_address"]: entry for entry in json.loads(capsys.readouterr().out)}
    assert {s.mac for s in sims} <= set(listed)
    assert all(listed[s.mac]["name"] == s.name for s in sims)


# --- blupow-sim as a subprocess ------------------------------------------------------------------


def _run_gateway(sim: SimProcess, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "blupow_gateway", *args],
        env=sim.env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_gateway_subprocess_probes_and_scans_blupow_sim(sim_process: Callable[..., SimProcess]) -> None:
    sim = sim_process("controller,battery_pro")
    assert [d.type_name for d in sim.devices] == ["renogy_charge_controller", "renogy_battery"]
    controller = sim.device("renogy_charge_controller")
    sim.control("set", mac=controller.mac, behaviour={"latency": FAST})
    probe = _run_gateway(sim, "probe", controller.mac, "--type", "renogy_charge_controller")
    assert probe.returncode == 0, probe.stderr
    report = json.loads(probe.stdout)
    regs = sim.control("registers", mac=controller.mac, start=0x000C, count=8)["registers"]
    model = b"".join(regs[str(r)].to_bytes(2, "big") for r in range(0x000C, 0x0014)).decode().strip()
    assert report["values"]["model"] == model
    scanned = _run_gateway(sim, "scan", "--seconds", "0.5", "--json")
    assert scanned.returncode == 0, scanned.stderr
    assert {d.mac for d in sim.devices} <= {e["mac_address"] for e in json.loads(scanned.stdout)}
    stats = sim.control("stats")["stats"]
    assert stats["max_simultaneous_connections"] == 1 and stats["connections"] == 0


def test_sim_control_link_loss_and_register_readback(sim_process: Callable[..., SimProcess]) -> None:
    sim = sim_process("controller")
    mac = sim.devices[0].mac
    assert sim.control("drop", mac=mac)["was_connected"] is False
    sim.control("set_registers", mac=mac, registers={"0x010A": 1})
    assert sim.control("registers", mac=mac, start=0x010A)["registers"] == {str(0x010A): 1}
    sim.control("set", mac=mac, failures={"held_by_other_central": True})
    probe = _run_gateway(sim, "probe", mac, "--type", "renogy_charge_controller", "--connect-timeout", "0.3")
    assert probe.returncode == 1 and "another central" in probe.stderr
    with pytest.raises(RuntimeError, match="unknown failure"):
        sim.control("set", mac=mac, failures={"nope": 1})


def test_sim_config_file_applies_failures_and_names(tmp_path: Path, sim_process: Callable[..., SimProcess]) -> None:
    config = tmp_path / "devices.yaml"
    config.write_text(
        "adv_interval: 0.01\n"
        "devices:\n"
        "  - {kind: controller, mac: 'AA:BB:CC:00:00:01', name: 'BT-TH-00000001', latency: 0.01, chunk_size: 10}\n"
        "  - kind: battery\n"
        "    modbus_id: 0x31\n"
        "    failures: {fail_next_connects: 1, in_progress_writes: 2}\n",
        encoding="utf-8",
    )
    sim = sim_process(config=config)
    assert sim.devices[0] == type(sim.devices[0])("AA:BB:CC:00:00:01", "renogy_charge_controller", "BT-TH-00000001")
    battery = sim.control("stats", mac=sim.devices[1].mac)["device"]
    assert battery["failures"]["fail_next_connects"] == 1 and battery["failures"]["in_progress_writes"] == 2
    assert sim.control("devices")["devices"][1]["modbus_id"] == 0x31


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--devices", "controller,toaster"], "unknown device kind 'toaster'"),
        ([], "nothing to simulate"),
        (["--config", "/nonexistent/devices.yaml"], "cannot read"),
        (
            ["--devices", "hub:battery@48,controller@48"],
            "--devices 'hub:battery@48,controller@48': Modbus ID 48 is given to two units (battery and controller)",
        ),
    ],
)
def test_sim_bad_input_is_one_line_exit_2(args: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "blupow_gateway.simulator.cli", *args],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("- {kind: controller, colour: red}\n", "unknown key(s) colour"),
        ("- {kind: controller, failures: {fail_next_connects: -2}}\n", "whole number"),
        ("- {kind: controller, mac: 'nonsense'}\n", "mac must look like"),
        ("devices: [\n", "not valid YAML"),
        ("- {kind: hub, units: []}\n", "devices[0]: units must be a non-empty list"),
        (
            "- {kind: hub, units: [{kind: battery, modbus_id: 48}, {kind: controller, modbus_id: 48}]}\n",
            "devices[0]: Modbus ID 48 is given to two units (battery and controller)",
        ),
        ("- {kind: chain, units: [{kind: battery, faults: [slow]}]}\n", "devices[0].units[0]: unknown fault 'slow'"),
        ("- {kind: hub, units: [{kind: battery, colour: red}]}\n", "devices[0].units[0]: unknown key(s) colour"),
        ("- {kind: hub, units: [{kind: battery, modbus_id: 300}]}\n", "Modbus ID 300 is outside 1..247"),
        ("- {kind: hub, units: [{kind: dcc}], late_after: 0}\n", "late_after must be a number of seconds > 0"),
    ],
)
def test_sim_bad_config_is_rejected_without_leftovers(tmp_path: Path, yaml_text: str, message: str) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(yaml_text, encoding="utf-8")
    bus_dir = tmp_path / "bus"
    result = subprocess.run(
        [sys.executable, "-m", "blupow_gateway.simulator.cli", "--config", str(config), "--bus-dir", str(bus_dir)],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert result.returncode == 2 and message in result.stderr, result.stderr
    # a bus started before the error was removed (only ours: other test runs may have buses)
    assert not _dbus_daemons(matching=str(bus_dir))


def test_sim_attaches_to_an_existing_bus(private_dbus: PrivateBus, sim_process: Callable[..., SimProcess]) -> None:
    sim = sim_process("dcc", bus_address=private_dbus.address)
    assert sim.address == private_dbus.address

    async def discover() -> dict[str, Any]:
        return await BleakScanner.discover(timeout=0.2, return_adv=True)

    found = asyncio.run(discover())
    assert sim.devices[0].mac in found


def test_sim_leaves_no_process_behind_on_sigterm_stdin_close_or_sigkill(
    sim_process: Callable[..., SimProcess],
) -> None:
    for how in ("sigterm", "stdin", "sigkill"):
        sim = sim_process("controller")
        daemons = _children(sim.process.pid)
        assert daemons, how  # its private dbus-daemon
        if how == "sigterm":
            sim.process.send_signal(signal.SIGTERM)
        elif how == "stdin":
            assert sim.process.stdin is not None
            sim.process.stdin.close()
        else:
            sim.process.kill()
        assert sim.process.wait(5) in (0, -signal.SIGKILL), how
        for pid in daemons:
            assert _wait_dead(pid, 3), f"dbus-daemon {pid} survived {how}"
        sim.stop()


# --- modules: several Modbus units behind one BLE module -------------------------------------------


async def test_module_is_added_and_advertised_as_one_bt2(fake_bluez: FakeBlueZ) -> None:
    mod = fake_bluez.add("hub:battery*4,controller@97", latency=FAST)
    assert isinstance(mod, SimulatedModule) and fake_bluez.peripheral(mod.mac).sim is mod
    assert mod.mac == default_mac("hub") and sorted(mod.units) == [48, 49, 50, 51, 97]
    assert all(unit.behaviour.latency == FAST for unit in mod.units.values())
    assert fake_bluez.add("hub:battery").mac == default_mac("hub", 1)  # the next free MAC
    found = await BleakScanner.discover(timeout=0.2, return_adv=True)
    device, adv = found[mod.mac]
    assert device.name == mod.name and adv.manufacturer_data == mod.manufacturer_data()
    assert "renogy_battery" in {r.address: r for r in await scan(0.2)}[mod.mac].types


@pytest.mark.usefixtures("fast_drivers")
async def test_ble_link_reads_two_ids_of_one_module_over_one_connection(fake_bluez: FakeBlueZ) -> None:
    mod = fake_bluez.add("hub:battery*4,controller@97", latency=FAST, frozen=True)
    assert isinstance(mod, SimulatedModule)
    link = BleLink(mod.mac, create_device("renogy_battery"), LinkOptions(connect_timeout=2.0, request_timeout=0.5))
    async with link:
        for modbus_id, start in ((48, 5110), (51, 5110), (97, 0x000C)):
            registers = mod.units[modbus_id].registers
            assert await link.read_registers(modbus_id, start, 8) == [registers[start + i] for i in range(8)]
        for modbus_id in (49, 97):  # whole read plans of two families, same link
            unit = mod.units[modbus_id]
            reading = await create_device(unit.type_name, variant=unit.variant, modbus_id=modbus_id).read(link)
            assert reading.values and reading.registers == {r: unit.registers[r] for r in reading.registers}
            assert reading.values["serial_number"] == unit.truth["serial_number"]
    stats = fake_bluez.peripheral(mod.mac).stats
    assert stats.connects == 1 and stats.replies == len(stats.writes)
    assert mod.units[48].truth["serial_number"] != mod.units[51].truth["serial_number"]


async def test_module_bus_over_bleak_silence_collision_and_wrong_id(fake_bluez: FakeBlueZ) -> None:
    mod = fake_bluez.add("hub:battery,battery+wrong-id", latency=FAST)
    assert isinstance(mod, SimulatedModule)
    got: list[bytes] = []
    async with BleakClient(mod.mac, timeout=5) as client:
        await client.start_notify(reply_char(client), lambda _char, data: got.append(bytes(data)))

        async def ask(slave_id: int) -> bytes:
            got.clear()
            await client.write_gatt_char(request_char(client), modbus.read_request(slave_id, 5122, 8), response=False)
            await asyncio.sleep(0.15)  # far past the units' latency
            return b"".join(got)

        assert await ask(50) == b""  # nobody at 50: silence, not an exception
        right = await ask(48)
        assert right[0] == 48 and modbus.crc_ok(right)
        wrong = await ask(49)
        assert wrong[0] == 50 and modbus.crc_ok(wrong) and wrong[1:-2] == right[1:-2]
        garbage = await ask(0xFF)
        assert garbage and valid_frame_end(garbage) is None
    assert mod.collisions == 1


async def test_ble_link_silent_and_late_units_fail_alone(fake_bluez: FakeBlueZ) -> None:
    mod = fake_bluez.add("chain:battery,battery+silent,battery+late", latency=FAST)
    assert isinstance(mod, SimulatedModule)
    link = BleLink(mod.mac, create_device("renogy_battery"), LinkOptions(connect_timeout=2.0, request_timeout=0.2))
    try:
        for quiet in (49, 50):
            with pytest.raises(ReplyTimeout):
                await link.read_registers(quiet, 5000, 1)
        assert await link.read_registers(48, 5000, 1) == [mod.units[48].registers[5000]]
        mod.set_faults(49, [])  # restored at run time
        assert await link.read_registers(49, 5000, 1) == [mod.units[49].registers[5000]]
    finally:
        await link.disconnect()
    assert mod.units[49].requests == 1 and mod.units[50].requests == 1  # the late one did answer, too late


async def test_sim_control_addresses_one_unit_of_a_module(fake_bluez: FakeBlueZ) -> None:
    mod = fake_bluez.add("hub:battery*2,controller@97")
    assert isinstance(mod, SimulatedModule)
    control = SimControl(fake_bluez)
    listed = control.handle({"op": "devices"})["devices"]
    assert listed == [
        {
            "mac": mod.mac,
            "type": "module",
            "name": mod.name,
            "variant": None,
            "modbus_id": None,
            "layout": "bt_module",
            "topology": "hub",
            "units": [
                {"modbus_id": 48, "type": "renogy_battery", "variant": "legacy", "faults": []},
                {"modbus_id": 49, "type": "renogy_battery", "variant": "legacy", "faults": []},
                {"modbus_id": 97, "type": "renogy_charge_controller", "variant": None, "faults": []},
            ],
        }
    ]
    regs = control.handle({"op": "registers", "mac": mod.mac, "modbus_id": 97, "start": "0x000C", "count": 8})
    assert regs["registers"] == {str(r): mod.units[97].registers[r] for r in range(0x000C, 0x0014)}
    assert control.handle({"op": "truth", "mac": mod.mac, "modbus_id": "0x30"})["truth"] == mod.units[48].truth
    assert control.handle({"op": "set_registers", "mac": mod.mac, "modbus_id": 49, "registers": {"5000": 7}})["ok"]
    assert (mod.units[49].registers[5000], mod.units[48].registers[5000]) == (7, 4)
    missing = control.handle({"op": "truth", "mac": mod.mac})
    assert missing["error"] == f"'modbus_id' is required for the module {mod.mac} (units: 48, 49, 97)"
    absent = control.handle({"op": "registers", "mac": mod.mac, "modbus_id": 50})
    assert absent["error"] == f"no unit at Modbus ID 50 behind {mod.mac} (units: 48, 49, 97)"
    silenced = control.handle({"op": "set", "mac": mod.mac, "modbus_id": 49, "faults": ["silent"]})
    assert silenced["faults"] == ["silent"] and mod.units[49].behaviour.drop_replies
    assert not mod.units[48].behaviour.drop_replies
    restored = control.handle({"op": "set", "mac": mod.mac, "modbus_id": 49, "faults": []})
    assert restored["faults"] == [] and not mod.units[49].behaviour.drop_replies
    whole = control.handle({"op": "set", "mac": mod.mac, "behaviour": {"latency": 0.01, "chunk_size": 0}})
    assert whole["ok"] and mod.behaviour.chunk_size == 0
    assert all(u.behaviour.latency == 0.01 for u in mod.units.values())


async def test_sim_control_module_requests_change_nothing_on_bad_input(fake_bluez: FakeBlueZ) -> None:
    mod = fake_bluez.add("hub:battery*2")
    assert isinstance(mod, SimulatedModule)
    control = SimControl(fake_bluez)
    no_unit = {"op": "set", "mac": mod.mac, "faults": ["silent"], "failures": {"fail_next_connects": 2}}
    assert control.handle(no_unit)["error"] == "'faults' belong to one unit of a module: give 'modbus_id'"
    bad_fault = {"op": "set", "mac": mod.mac, "modbus_id": 48, "faults": ["slow"], "behaviour": {"latency": 0.3}}
    assert "unknown fault 'slow'" in control.handle(bad_fault)["error"]
    assert fake_bluez.failures(mod.mac).fail_next_connects == 0
    assert all(u.behaviour.latency != 0.3 and not u.behaviour.drop_replies for u in mod.units.values())
    single = fake_bluez.add("controller")
    assert control.handle({"op": "truth", "mac": single.mac, "modbus_id": 255})["ok"]
    wrong = control.handle({"op": "truth", "mac": single.mac, "modbus_id": 48})
    assert wrong["error"] == f"{single.mac} is a single device at Modbus ID 255, not 48"


async def test_sim_control_adds_a_module_from_a_config_entry(fake_bluez: FakeBlueZ) -> None:
    control = SimControl(fake_bluez)
    units = [{"kind": "battery", "modbus_id": 33}, {"kind": "battery", "faults": ["late"], "latency": 0.02}]
    added = control.handle({"op": "add", "kind": "chain", "units": units, "late_after": 2})
    assert added["ok"] and added["type"] == "module" and added["topology"] == "chain"
    assert [u["modbus_id"] for u in added["units"]] == [33, 48] and added["units"][1]["faults"] == ["late"]
    mod = fake_bluez.peripheral(added["mac"]).sim
    assert isinstance(mod, SimulatedModule)
    assert (mod.units[48].behaviour.late_after, mod.units[48].behaviour.latency) == (2.0, 0.02)


def test_banner_lines_parse_into_devices_and_modules() -> None:
    line = "C4:64:E3:00:00:01 module My hub 48=renogy_battery/legacy,97=renogy_charge_controller+silent+late"
    assert parse_banner_line(line) == SimModule(
        "C4:64:E3:00:00:01",
        "My hub",
        {
            48: SimUnit(48, "renogy_battery", "legacy"),
            97: SimUnit(97, "renogy_charge_controller", None, ("silent", "late")),
        },
    )
    single = "C4:64:E3:8C:2D:75 renogy_charge_controller BT-TH-E38C2D75"
    assert parse_banner_line(single) == SimDevice("C4:64:E3:8C:2D:75", "renogy_charge_controller", "BT-TH-E38C2D75")


def test_sim_help_documents_the_module_syntax(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        sim_cli.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for text in ("hub:battery*4,controller@97", "chain:", "KIND[*COUNT][@ID][+FAULT...]", "wrong-id", "MAC module"):
        assert text in out, text


def test_sim_prints_one_line_per_module_and_control_silences_one_unit(
    sim_process: Callable[..., SimProcess],
) -> None:
    sim = sim_process(["inverter", "hub:battery*2,controller@97", "chain:battery@33,battery@34+silent"])
    assert [d.type_name for d in sim.devices] == ["renogy_inverter"]
    hub, chain = sim.modules
    assert hub.name == "BT-TH-" + "".join(hub.mac.split(":")[2:]) and hub.mac != chain.mac
    assert hub.units == {
        48: SimUnit(48, "renogy_battery", "legacy"),
        49: SimUnit(49, "renogy_battery", "legacy"),
        97: SimUnit(97, "renogy_charge_controller"),
    }
    assert chain.units[34] == SimUnit(34, "renogy_battery", "legacy", ("silent",))
    listed = {d["mac"]: d for d in sim.control("devices")["devices"]}
    assert (listed[hub.mac]["topology"], listed[chain.mac]["topology"]) == ("hub", "chain")
    sim.control("set", mac=hub.mac, behaviour={"latency": FAST})

    def probe(modbus_id: int) -> subprocess.CompletedProcess[str]:
        args = ("--type", "renogy_battery", "--id", str(modbus_id), "--request-timeout", "0.3")
        return _run_gateway(sim, "probe", hub.mac, *args)

    answered = probe(49)
    assert answered.returncode == 0, answered.stderr
    truth = sim.control("truth", mac=hub.mac, modbus_id=49)["truth"]
    assert json.loads(answered.stdout)["values"]["serial_number"] == truth["serial_number"]
    assert sim.control("set", mac=hub.mac, modbus_id=49, faults=["silent"])["faults"] == ["silent"]
    silenced = probe(49)
    assert silenced.returncode == 1 and "Traceback" not in silenced.stderr
    assert probe(48).returncode == 0  # its sibling on the same bus still answers
    sim.control("set", mac=hub.mac, modbus_id=49, faults=[])
    assert probe(49).returncode == 0


def test_sim_config_file_with_a_module(tmp_path: Path, sim_process: Callable[..., SimProcess]) -> None:
    config = tmp_path / "devices.yaml"
    config.write_text(
        "devices:\n"
        "  - kind: chain\n"
        "    name: 'Chain of three'\n"
        "    identical_serials: true\n"
        "    late_after: 2\n"
        "    units:\n"
        "      - {kind: battery, modbus_id: 33}\n"
        "      - {kind: battery, modbus_id: 34, faults: [late]}\n"
        "      - {kind: battery, faults: [wrong-id], options: {capacity_ah: 200}}\n"
        "  - {kind: controller}\n",
        encoding="utf-8",
    )
    sim = sim_process(config=config)
    (chain,) = sim.modules
    assert chain.name == "Chain of three" and [d.type_name for d in sim.devices] == ["renogy_charge_controller"]
    assert {i: u.faults for i, u in chain.units.items()} == {33: (), 34: ("late",), 48: ("wrong-id",)}
    truths = {i: sim.control("truth", mac=chain.mac, modbus_id=i)["truth"] for i in chain.units}
    assert len({t["serial_number"] for t in truths.values()}) == 1  # identical_serials
    assert truths[48]["capacity"] == 200


# --- helpers -----------------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _wait_dead(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.02)
    return False


def _children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            found += [int(p) for p in (task / "children").read_text().split()]
    return found


def _dbus_daemons(matching: str = "") -> set[int]:
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() != "dbus-daemon" or not _alive(int(entry.name)):
                    continue
                if matching in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    pids.add(int(entry.name))
    return pids

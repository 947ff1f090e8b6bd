"""Several units behind one Bluetooth module (issue 12), over real bleak and the fake BlueZ.

A simulated Communication Hub (``hub:battery*4,controller@97``: batteries at 48-51 and a
controller at 97, one MAC) and daisy chains with silent, late and wrong-ID units. The
gateway runs in-process with its own BLE links (``ble=True``), so every poll is real
D-Bus traffic: one connection per module, one request after another.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from blupow_gateway.service import Gateway
from blupow_gateway.store import mac_id
from tests.plugins.fake_bluez import FakeBlueZ
from tests.plugins.gateway import GatewayFactory, wait_until
from tests.plugins.mosquitto import Mosquitto, MqttRecorder, aretained

BATTERY = "renogy_battery"
CONTROLLER = "renogy_charge_controller"
FAST = {"poll_interval": 0.5, "connect_timeout": 3, "request_timeout": 0.4}


async def command(gateway: Gateway, **body: Any) -> dict[str, Any]:
    response = await gateway.processor.handle(json.dumps(body).encode())
    return response.to_json()


async def add_hub(gateway: Gateway, mac: str) -> None:
    """The hub's four batteries and its controller, as the options flow adds them."""
    for modbus_id, type_name in ((48, BATTERY), (49, BATTERY), (50, BATTERY), (51, BATTERY), (97, CONTROLLER)):
        answer = await command(gateway, command="add_device", mac_address=mac, type=type_name, modbus_id=modbus_id)
        assert answer["status"] == "ok", answer


def truth(sim: Any, keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: sim.truth[k] for k in keys if k in sim.truth}


async def test_a_hub_is_one_module_read_in_one_session(
    fake_bluez: FakeBlueZ, gateway_factory: GatewayFactory, mosquitto: Mosquitto
) -> None:
    hub = fake_bluez.add("hub:battery*4,controller@97", latency=0.01, frozen=True)
    gateway = await gateway_factory(ble=True, **FAST)
    await add_hub(gateway, hub.mac)
    units = gateway.scheduler.units
    base = mac_id(hub.mac)
    assert set(units) == {base, f"{base}_49", f"{base}_50", f"{base}_51", f"{base}_97"}
    await wait_until(lambda: all(u.stats.successes >= 2 for u in units.values()), 20, "every unit polled twice")

    peripheral = fake_bluez.peripheral(hub.mac)
    assert peripheral.stats.connects == 1  # one link for the five units, kept between polls
    for modbus_id, sim in hub.units.items():
        unit = gateway.scheduler.unit(hub.mac, modbus_id)
        assert unit is not None
        keys = ("voltage", "remaining_capacity", "capacity", "current") if sim.type_name == BATTERY else ("model",)
        assert {k: unit.values[k] for k in truth(sim, keys)} == truth(sim, keys), modbus_id
    listed = await command(gateway, command="list_devices")
    (module,) = listed["data"]["modules"]
    assert module["mac_address"] == hub.mac
    assert [u["modbus_id"] for u in module["units"]] == [48, 49, 50, 51, 97]

    # every unit is its own Home Assistant device; only the first keeps the MAC connection
    await gateway.mqtt.flush()
    retained = await aretained(mosquitto, "homeassistant/#")
    devices = {}
    for payload in retained.values():
        if payload:
            device = json.loads(payload)["device"]
            devices[device["identifiers"][0]] = device
    assert f"blupow_{base}_97" in devices and f"blupow_{base}_bank" in devices
    assert devices[f"blupow_{base}"]["connections"] == [["mac", hub.mac]]
    assert "connections" not in devices[f"blupow_{base}_49"]  # Home Assistant would merge them


async def test_the_bank_adds_up_and_names_a_silent_member(
    fake_bluez: FakeBlueZ, gateway_factory: GatewayFactory, mqtt_recorder: Callable[..., MqttRecorder]
) -> None:
    hub = fake_bluez.add("hub:battery*4,controller@97", latency=0.01, frozen=True)
    base = mac_id(hub.mac)
    recorder = mqtt_recorder((f"blupow/{base}_bank/state", f"blupow/{base}_bank/availability", "blupow/+/availability"))
    # polls further apart than a late reply could come (3 request timeouts), as with the defaults
    # (30 s, 3 s): a silent unit is then asked again on the same link
    gateway = await gateway_factory(ble=True, poll_interval=2.0, connect_timeout=3, request_timeout=0.3)
    await add_hub(gateway, hub.mac)
    batteries = [gateway.scheduler.unit(hub.mac, i) for i in (48, 49, 50, 51)]
    bank_state = f"blupow/{base}_bank/state"
    await wait_until(lambda: all(u.stats.successes for u in batteries), 20, "batteries polled")
    state = (await recorder.await_topic(bank_state, 10, match=lambda m: "current" in m.json())).json()
    members = [u.values for u in batteries]
    assert state["current"] == pytest.approx(sum(m["current"] for m in members), abs=0.001)
    assert state["remaining_capacity"] == pytest.approx(sum(m["remaining_capacity"] for m in members), abs=0.001)
    weighted = 100 * sum(m["remaining_capacity"] for m in members) / sum(m["capacity"] for m in members)
    assert state["battery_soc"] == pytest.approx(weighted, abs=0.001)
    assert state["cell_voltage_min"] == min(m["cell_voltage_min"] for m in members)
    assert state["members_reporting"] == "4 of 4" and state["missing_members"] == "none"

    # battery 50 goes quiet: it alone goes unavailable, with the bank; the others and the link stay
    connects = fake_bluez.peripheral(hub.mac).stats.connects
    hub.set_faults(50, ["silent"])
    silent = gateway.scheduler.unit(hub.mac, 50)
    assert silent is not None
    await wait_until(lambda: silent.status == "offline", 15, "battery 50 offline")
    since = recorder.mark()
    await recorder.await_topic(bank_state, 5, since)
    latest = recorder.on(bank_state, since)[-1].json()
    assert "current" not in latest and latest["missing_members"] == silent.record.name
    assert latest["members_reporting"] == "3 of 4"
    assert recorder.last(f"blupow/{base}_bank/availability").text == "offline"
    assert all(u.status == "online" for u in gateway.scheduler.units.values() if u is not silent)
    assert fake_bluez.peripheral(hub.mac).stats.connects == connects  # a silent unit costs no reconnect

    hub.set_faults(50, [])
    await wait_until(lambda: silent.status == "online", 15, "battery 50 back")
    await wait_until(lambda: recorder.last(f"blupow/{base}_bank/availability").text == "online", 5, "bank back")
    assert "current" in recorder.on(bank_state)[-1].json()


async def test_late_and_wrong_id_replies_are_never_taken(
    fake_bluez: FakeBlueZ, gateway_factory: GatewayFactory
) -> None:
    """A unit that answers after its request timed out, and one that answers with another ID: their
    siblings' values stay exact, and neither is ever shown a value."""
    chain = fake_bluez.add("chain:battery@48,battery@49+late,battery@50+wrong-id", latency=0.01, frozen=True)
    gateway = await gateway_factory(ble=True, **FAST)
    for modbus_id in (48, 49, 50):
        answer = await command(gateway, command="add_device", mac_address=chain.mac, type=BATTERY, modbus_id=modbus_id)
        assert answer["status"] == "ok", answer
    good, late, wrong = (gateway.scheduler.unit(chain.mac, i) for i in (48, 49, 50))
    assert good and late and wrong
    await wait_until(lambda: good.stats.successes >= 4, 30, "four polls of the good battery")
    keys = ("voltage", "remaining_capacity", "capacity", "current")
    assert {k: good.values[k] for k in truth(chain.units[48], keys)} == truth(chain.units[48], keys)
    assert late.stats.successes == 0 and wrong.stats.successes == 0
    assert late.values == {} and wrong.values == {}
    assert "no reply from Modbus id 49" in (late.stats.last_error or "")


async def test_unit_errors_name_the_fix(fake_bluez: FakeBlueZ, gateway_factory: GatewayFactory) -> None:
    hub = fake_bluez.add("hub:battery*2", latency=0.01, frozen=True)
    gateway = await gateway_factory(ble=True, **FAST)
    mac = hub.mac
    first = await command(gateway, command="add_device", mac_address=mac, type=BATTERY, modbus_id=48)
    assert first["status"] == "ok"

    async def error(**body: Any) -> str:
        answer = await command(gateway, **body)
        assert answer["status"] == "error", answer
        return str(answer["error"])

    assert await error(command="add_device", mac_address=mac, type=BATTERY, modbus_id=48) == (
        f"device {mac} already has a unit at Modbus id 48 (units: 48)"
    )
    assert await error(command="add_device", mac_address=mac, type=CONTROLLER, modbus_id=255) == (
        f"{mac} already carries 1 unit(s) (Modbus ids 48): Modbus id 255 reaches every device on a shared bus "
        "and their replies collide; give this unit its own modbus_id (probe_module lists the IDs that answer)"
    )
    assert await error(command="add_device", mac_address=mac, type=BATTERY, modbus_id=250) == (
        "modbus_id 250 is out of range (1-247 for a unit on a shared bus, or 255 for a device alone on its module)"
    )
    assert (await command(gateway, command="add_device", mac_address=mac, type=BATTERY, modbus_id=49))["status"] == "ok"
    assert (
        await error(command="remove_device", mac_address=mac)
        == f"{mac} carries 2 units (Modbus ids 48, 49): give modbus_id"
    )
    assert await error(command="remove_device", mac_address=mac, modbus_id=52) == (
        f"device {mac} has no unit at Modbus id 52 (units: 48, 49)"
    )
    # a unit alone at 255 blocks a second one until it has its own ID
    other = fake_bluez.add("controller", latency=0.01)
    assert (await command(gateway, command="add_device", mac_address=other.mac, type=CONTROLLER))["status"] == "ok"
    name = gateway.scheduler.unit(other.mac).record.name  # type: ignore[union-attr]
    assert await error(command="add_device", mac_address=other.mac, type=BATTERY, modbus_id=48) == (
        f"{name} on {other.mac} uses Modbus id 255, which every device on a shared bus answers: give it its own "
        "modbus_id first (update_device with new_modbus_id), then add this unit"
    )
    removed = await command(gateway, command="remove_device", mac_address=mac, modbus_id=49)
    assert removed["data"] == {"mac_address": mac, "modbus_id": 49, "unit_id": f"{mac_id(mac)}_49"}
    assert [u.modbus_id for u in gateway.scheduler.modules[mac].units.values()] == [48]


async def test_probe_module_finds_the_units_without_writing(
    fake_bluez: FakeBlueZ, gateway_factory: GatewayFactory
) -> None:
    hub = fake_bluez.add("hub:battery*4,controller@97", latency=0.01, frozen=True)
    gateway = await gateway_factory(ble=True, **FAST)
    answer = await command(gateway, command="probe_module", mac_address=hub.mac)
    assert answer["status"] == "ok", answer
    data = answer["data"]
    assert data["summary"] == "4 batteries (48, 49, 50, 51) and a charge controller (97)"
    assert [(u["modbus_id"], u["type"], u["variant"]) for u in data["units"]] == [
        (48, BATTERY, "legacy"),
        (49, BATTERY, "legacy"),
        (50, BATTERY, "legacy"),
        (51, BATTERY, "legacy"),
        (97, CONTROLLER, None),
    ]
    assert all(u["model"] and u["configured"] is False for u in data["units"])
    assert len({u["serial"] for u in data["units"][:4]}) == 4
    assert all(sim.writes == [] for sim in hub.units.values())  # it never writes to a device
    writes = fake_bluez.peripheral(hub.mac).stats.writes
    assert all(frame[1] == 0x03 for frame in writes)  # every request a read
    assert not fake_bluez.peripheral(hub.mac).connected  # the temporary link is closed again

    # the same probe of a configured module uses its link and marks what is configured
    await add_hub(gateway, hub.mac)
    again = await command(gateway, command="probe_module", mac_address=hub.mac)
    assert all(u["configured"] for u in again["data"]["units"])


async def test_probe_module_errors(fake_bluez: FakeBlueZ, gateway_factory: GatewayFactory, tmp_path: Path) -> None:
    gateway = await gateway_factory(ble=True, poll_interval=30, connect_timeout=1, request_timeout=0.3)
    absent = await command(gateway, command="probe_module", mac_address="C4:64:E3:99:99:99")
    assert absent["status"] == "error" and absent["error"].startswith("C4:64:E3:99:99:99 did not answer: ")
    empty = fake_bluez.add("chain:battery@48+silent", latency=0.01)
    answer = await command(gateway, command="probe_module", mac_address=empty.mac)
    assert answer["status"] == "error"
    assert answer["error"].startswith(f"{empty.mac} is connected, but no device answered at Modbus ids 48, 49,")
    assert answer["error"].endswith(
        "check the RS-485 cable between the module and the devices, and that they are powered"
    )

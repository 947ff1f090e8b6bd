"""Batteries the user groups across modules form one battery bank (issue 12, item 4).

The real case: a boat with two batteries, each with its own BT-2. Each module here is a
simulated BT-2 on a one-battery chain (``chain:battery@48``), on the fake BlueZ, polled by
the gateway's own BLE links (real bleak), publishing to a real mosquitto. A battery joins a
named bank with ``bank`` (update_device, add_device or the add-on options); the bank is the
device ``bank_<slug>``, computed from every member's latest reading (banks.BankKeeper).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from blupow_gateway.modules import Unit
from blupow_gateway.service import Gateway
from blupow_gateway.settings import DeviceOption
from blupow_gateway.store import mac_id
from tests.plugins.fake_bluez import FakeBlueZ
from tests.plugins.gateway import GatewayFactory, wait_until
from tests.plugins.mosquitto import Mosquitto, MqttRecorder, aretained

BATTERY = "renogy_battery"
CONTROLLER = "renogy_charge_controller"
# polls further apart than a late reply could come (3 request timeouts), as in test_hub.py
TIMING = {"poll_interval": 2.0, "connect_timeout": 3, "request_timeout": 0.3}
HOUSE = "bank_house"


async def command(gateway: Gateway, **body: Any) -> dict[str, Any]:
    response = await gateway.processor.handle(json.dumps(body).encode())
    return response.to_json()


async def ok(gateway: Gateway, **body: Any) -> dict[str, Any]:
    answer = await command(gateway, **body)
    assert answer["status"] == "ok", answer
    data: dict[str, Any] = answer["data"]
    return data


async def error(gateway: Gateway, **body: Any) -> str:
    answer = await command(gateway, **body)
    assert answer["status"] == "error", answer
    return str(answer["error"])


def two_boat_batteries(fake_bluez: FakeBlueZ) -> tuple[Any, Any]:
    """Two BT-2s, one battery each; different sizes and states, so weighting shows."""
    port = fake_bluez.add("chain:battery@48", latency=0.01, frozen=True, seed=3)
    starboard = fake_bluez.add(
        "chain:battery@48", latency=0.01, frozen=True, seed=7, capacity_ah=200.0, initial_soc=35.0
    )
    return port, starboard


def unit_of(gateway: Gateway, mac: str, modbus_id: int | None = None) -> Unit:
    unit = gateway.scheduler.unit(mac, modbus_id)
    assert unit is not None
    return unit


def bank_configs(retained: dict[str, bytes], key: str) -> dict[str, dict[str, Any]]:
    """The retained discovery configs of the bank with ``key`` (empty payloads are cleared ones)."""
    return {
        topic: json.loads(payload)
        for topic, payload in retained.items()
        if payload and topic.startswith("homeassistant/") and f"/blupow_{key}_" in topic
    }


def assert_sums(state: dict[str, Any], members: list[dict[str, Any]]) -> None:
    assert state["current"] == pytest.approx(sum(m["current"] for m in members), abs=0.001)
    assert state["remaining_capacity"] == pytest.approx(sum(m["remaining_capacity"] for m in members), abs=0.001)
    assert state["capacity"] == pytest.approx(sum(m["capacity"] for m in members), abs=0.001)
    weighted = 100 * sum(m["remaining_capacity"] for m in members) / sum(m["capacity"] for m in members)
    assert state["battery_soc"] == pytest.approx(weighted, abs=0.001)


async def test_batteries_on_two_modules_form_one_named_bank(
    fake_bluez: FakeBlueZ,
    gateway_factory: GatewayFactory,
    mosquitto: Mosquitto,
    mqtt_recorder: Callable[..., MqttRecorder],
) -> None:
    port_sim, starboard_sim = two_boat_batteries(fake_bluez)
    recorder = mqtt_recorder((f"blupow/{HOUSE}/#", "blupow/+/availability"))
    gateway = await gateway_factory(ble=True, **TIMING)
    for sim, name in ((port_sim, "Port"), (starboard_sim, "Starboard")):
        await ok(gateway, command="add_device", mac_address=sim.mac, type=BATTERY, name=name)
    port, starboard = unit_of(gateway, port_sim.mac), unit_of(gateway, starboard_sim.mac)
    await wait_until(lambda: port.stats.successes and starboard.stats.successes, 20, "both batteries polled")
    assert gateway.banks.keys() == set()  # one battery per module: no bank yet

    # grouped by name: case and the spaces around it do not matter, the first spelling is shown
    first = await ok(gateway, command="update_device", mac_address=port_sim.mac, bank="House")
    assert first["bank"] == "House"
    second = await ok(gateway, command="update_device", mac_address=starboard_sim.mac, bank=" house ")
    assert second["bank"] == "house"
    listed = {d["name"]: d["bank"] for d in (await ok(gateway, command="list_devices"))["devices"]}
    assert listed == {"Port": "House", "Starboard": "house"}

    state_topic = f"blupow/{HOUSE}/state"
    state = (await recorder.await_topic(state_topic, 10, match=lambda m: "current" in m.json())).json()
    assert_sums(state, [port.values, starboard.values])
    assert state["battery_soc"] != pytest.approx((port.values["battery_soc"] + starboard.values["battery_soc"]) / 2)
    assert state["members_reporting"] == "2 of 2" and state["missing_members"] == "none"
    await wait_until(lambda: recorder.last(f"blupow/{HOUSE}/availability") is not None, 5, "bank availability")
    assert recorder.last(f"blupow/{HOUSE}/availability").text == "online"  # type: ignore[union-attr]
    await gateway.mqtt.flush()
    configs = bank_configs(await aretained(mosquitto, "homeassistant/#"), HOUSE)
    assert configs, "the bank's discovery is retained"
    assert {c["device"]["name"] for c in configs.values()} == {"House"}
    assert {c["device"]["identifiers"][0] for c in configs.values()} == {f"blupow_{HOUSE}"}
    assert {c["state_topic"] for c in configs.values()} == {state_topic}

    # the starboard battery goes quiet: the bank's values go, its status entities name it
    starboard_sim.set_faults(48, ["silent"])
    await wait_until(lambda: starboard.status == "offline", 20, "starboard battery offline")
    since = recorder.mark()
    latest = (await recorder.await_topic(state_topic, 10, since, match=lambda m: "current" not in m.json())).json()
    assert latest["missing_members"] == "Starboard" and latest["members_reporting"] == "1 of 2"
    assert recorder.last(f"blupow/{HOUSE}/availability").text == "offline"  # type: ignore[union-attr]
    assert port.status == "online"

    starboard_sim.set_faults(48, [])
    await wait_until(lambda: starboard.status == "online", 20, "starboard battery back")
    await wait_until(
        lambda: recorder.last(f"blupow/{HOUSE}/availability").text == "online",  # type: ignore[union-attr]
        10,
        "bank back",
    )
    back = (await recorder.await_topic(state_topic, 10, recorder.mark(), match=lambda m: "current" in m.json())).json()
    assert back["missing_members"] == "none"

    # one battery leaves the bank: a bank of one is no bank, its retained topics are cleared
    left = await ok(gateway, command="update_device", mac_address=starboard_sim.mac, bank=None)
    assert left["bank"] is None
    assert gateway.banks.keys() == set()
    await gateway.mqtt.flush()
    assert bank_configs(await aretained(mosquitto, "homeassistant/#"), HOUSE) == {}
    assert [t for t in await aretained(mosquitto, f"blupow/{HOUSE}/#")] == []
    assert HOUSE not in gateway.publisher.ledger and HOUSE not in gateway.publisher.device_topics


async def test_a_battery_moved_into_a_named_bank_leaves_its_module_bank(
    fake_bluez: FakeBlueZ, gateway_factory: GatewayFactory, mosquitto: Mosquitto
) -> None:
    """A chain of two batteries (a module bank) and a battery on its own BT-2: the chain's 49 joins
    the lone battery in a named bank, which leaves the chain's module bank one member: cleared."""
    chain = fake_bluez.add("chain:battery@48,battery@49", latency=0.01, frozen=True)
    lone = fake_bluez.add("chain:battery@48", latency=0.01, frozen=True, seed=9, capacity_ah=50.0)
    gateway = await gateway_factory(ble=True, **TIMING)
    for modbus_id in (48, 49):
        await ok(gateway, command="add_device", mac_address=chain.mac, type=BATTERY, modbus_id=modbus_id)
    await ok(gateway, command="add_device", mac_address=lone.mac, type=BATTERY, name="Lone", bank="Starter")
    module_bank = f"{mac_id(chain.mac)}_bank"
    members = [unit_of(gateway, chain.mac, 48), unit_of(gateway, chain.mac, 49), unit_of(gateway, lone.mac)]
    await wait_until(lambda: all(u.stats.successes for u in members), 20, "all polled")
    await wait_until(lambda: module_bank in gateway.publisher.discovered, 10, "the chain's bank published")
    assert gateway.banks.keys() == {module_bank}  # "Starter" has one member: no bank

    await ok(gateway, command="update_device", mac_address=chain.mac, modbus_id=49, bank="Starter")
    assert gateway.banks.keys() == {"bank_starter"}
    await wait_until(lambda: "bank_starter" in gateway.publisher.discovered, 10, "the named bank published")
    bank = gateway.banks.bank("bank_starter")
    assert bank is not None and [u.key for u in bank.members] == [members[1].key, members[2].key]
    assert_sums(bank.unit.values, [members[1].values, members[2].values])
    await gateway.mqtt.flush()
    retained = await aretained(mosquitto)
    assert bank_configs(retained, module_bank) == {}
    assert [t for t in retained if t.startswith(f"blupow/{module_bank}/")] == []
    assert module_bank not in gateway.publisher.ledger
    assert {c["device"]["name"] for c in bank_configs(retained, "bank_starter").values()} == {"Starter"}

    # disabling a member ends the bank as well (membership: enabled batteries)
    await ok(gateway, command="update_device", mac_address=lone.mac, enabled=False)
    assert gateway.banks.keys() == set()


async def test_bank_errors_name_the_rule(gateway_factory: GatewayFactory) -> None:
    gateway = await gateway_factory((DeviceOption("C4:64:E3:00:00:0A", CONTROLLER),))
    battery = "C4:64:E3:00:00:0B"
    await ok(gateway, command="add_device", mac_address=battery, type=BATTERY)
    only = "bank is only used by type renogy_battery"
    assert await error(gateway, command="add_device", mac_address="C4:64:E3:00:00:0C", type=CONTROLLER, bank="A") == (
        only
    )
    assert await error(gateway, command="update_device", mac_address="C4:64:E3:00:00:0A", bank="House") == only
    assert await error(gateway, command="update_device", mac_address=battery, bank="x" * 41) == (
        "bank must be at most 40 characters long"
    )
    assert await error(gateway, command="update_device", mac_address=battery, bank="   ") == (
        "bank must not be empty (leave it out, or null, for no named bank)"
    )
    assert await error(gateway, command="update_device", mac_address=battery, bank="***") == (
        "bank must contain a letter or a digit (A-Z, 0-9): the bank's topics are named after it"
    )
    assert await error(gateway, command="update_device", mac_address=battery, bank=5) == (
        "bank must be a string or null"
    )
    assert await error(gateway, command="add_device", mac_address="C4:64:E3:00:00:0D", type=BATTERY, bank="") == (
        "bank must not be empty (leave it out, or null, for no named bank)"
    )
    # nothing changed; 40 characters once stripped are fine
    assert [(r.mac_address, r.bank) for r in gateway.records()] == [("C4:64:E3:00:00:0A", None), (battery, None)]
    assert (await ok(gateway, command="update_device", mac_address=battery, bank=f"  {'y' * 40}  "))["bank"] == "y" * 40


async def test_the_bank_survives_a_restart_and_a_vanished_bank_is_cleared(
    fake_bluez: FakeBlueZ, gateway_factory: GatewayFactory, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """An options battery and a command battery share a bank; across a restart the bank names are
    kept (devices.json: the record, and the options device's override) and the bank's entities are
    never cleared. When the options leave the bank while the gateway is stopped, the next start
    clears its retained topics (published.json knows the bank's key)."""
    port_sim, starboard_sim = two_boat_batteries(fake_bluez)
    data = tmp_path / "data"
    options = (DeviceOption(port_sim.mac, BATTERY, name="Port"),)
    first = await gateway_factory(options, data_dir=data, ble=True, **TIMING)
    await ok(first, command="add_device", mac_address=starboard_sim.mac, type=BATTERY, name="Starboard", bank="Boat")
    await ok(first, command="update_device", mac_address=port_sim.mac, bank="BOAT")  # an options device
    await wait_until(lambda: "bank_boat" in first.publisher.discovered, 20, "the bank published")
    await first.mqtt.flush()
    await first.stop()
    stored = json.loads((data / "devices.json").read_text())
    assert stored["schema_version"] == 2
    assert [d["bank"] for d in stored["devices"]] == ["Boat"]
    assert stored["options_overrides"] == {mac_id(port_sim.mac): {"bank": "BOAT"}}
    before = bank_configs(await aretained(mosquitto, "homeassistant/#"), "bank_boat")
    assert {c["device"]["name"] for c in before.values()} == {"BOAT"}  # the first member's spelling

    second = await gateway_factory(options, data_dir=data, ble=True, **TIMING)
    assert {r.name: r.bank for r in second.records()} == {"Port": "BOAT", "Starboard": "Boat"}
    assert second.banks.keys() == {"bank_boat"}  # formed at start, before any poll
    bank = second.banks.bank("bank_boat")
    assert bank is not None
    await wait_until(lambda: bank.unit.status == "online", 20, "the bank online again")
    await second.mqtt.flush()
    assert bank_configs(await aretained(mosquitto, "homeassistant/#"), "bank_boat").keys() == before.keys()
    # the options device leaves the bank by command; stopped, and started without it in the bank
    await ok(second, command="update_device", mac_address=port_sim.mac, bank=None)
    await second.stop()
    assert second.publisher.ledger.get("bank_boat") is None
    third = await gateway_factory(options, data_dir=data, ble=True, **TIMING)
    assert third.banks.keys() == set()
    assert unit_of(third, port_sim.mac).record.bank is None  # the override "bank": null is kept


async def test_a_bank_removed_while_stopped_is_cleared_at_the_next_start(
    fake_bluez: FakeBlueZ, gateway_factory: GatewayFactory, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """Both batteries named the bank in the options; the options change while the gateway is down.
    The next start clears the bank's entities from the ledger (published.json keeps bank keys)."""
    port_sim, starboard_sim = two_boat_batteries(fake_bluez)
    data = tmp_path / "data"
    grouped = tuple(DeviceOption(s.mac, BATTERY, bank="House") for s in (port_sim, starboard_sim))
    first = await gateway_factory(grouped, data_dir=data, ble=True, **TIMING)
    await wait_until(lambda: HOUSE in first.publisher.discovered, 20, "the bank published")
    await first.mqtt.flush()
    await first.stop()
    assert bank_configs(await aretained(mosquitto, "homeassistant/#"), HOUSE)
    ledger = json.loads((data / "published.json").read_text())
    assert HOUSE in ledger["devices"]

    apart = tuple(DeviceOption(s.mac, BATTERY) for s in (port_sim, starboard_sim))
    second = await gateway_factory(apart, data_dir=data, ble=True, **TIMING)
    await wait_until(lambda: HOUSE not in second.publisher.ledger, 10, "the vanished bank cleared")
    await second.mqtt.flush()
    retained = await aretained(mosquitto)
    assert bank_configs(retained, HOUSE) == {}
    assert [t for t in retained if t.startswith(f"blupow/{HOUSE}/")] == []


async def test_a_bank_whose_module_is_out_of_reach_goes_unavailable(
    fake_bluez: FakeBlueZ, gateway_factory: GatewayFactory, mqtt_recorder: Callable[..., MqttRecorder]
) -> None:
    """No poll of an unreachable module finishes, so no poll tells the bank: its members going
    offline do. The bank must not keep showing the last totals as if they were current."""
    chain = fake_bluez.add("chain:battery@48,battery@49", latency=0.01, frozen=True)
    key = f"{mac_id(chain.mac)}_bank"
    recorder = mqtt_recorder((f"blupow/{key}/#",))
    gateway = await gateway_factory(ble=True, poll_interval=0.5, connect_timeout=1, request_timeout=0.5)
    for modbus_id in (48, 49):
        await ok(gateway, command="add_device", mac_address=chain.mac, type=BATTERY, modbus_id=modbus_id)
    await recorder.await_topic(f"blupow/{key}/availability", 20, match=lambda m: m.text == "online")

    since = recorder.mark()
    fake_bluez.failures(chain.mac).advertising = False  # the boat's BT-2 lost power
    fake_bluez.drop(chain.mac)
    await recorder.await_topic(f"blupow/{key}/availability", 30, since, lambda m: m.text == "offline")
    latest = recorder.on(f"blupow/{key}/state", since)[-1].json()
    assert "current" not in latest and latest["members_reporting"] == "0 of 2"
    assert all(u.status == "offline" for u in gateway.scheduler.units.values())

    since = recorder.mark()
    fake_bluez.failures(chain.mac).advertising = True
    await recorder.await_topic(f"blupow/{key}/availability", 30, since, lambda m: m.text == "online")
    assert "current" in recorder.on(f"blupow/{key}/state", since)[-1].json()

"""Home Assistant discovery, device state, controls and the HA birth message, over a real broker."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from blupow_gateway import __version__
from blupow_gateway.devices import create_device
from blupow_gateway.discovery import Topics, device_configs, gateway_configs
from blupow_gateway.settings import DeviceOption
from blupow_gateway.simulator import create_simulated
from blupow_gateway.simulator.link import SimulatedLink
from blupow_gateway.store import DeviceRecord
from tests.plugins.gateway import GatewayFactory, SimWorld, wait_until
from tests.plugins.mosquitto import Mosquitto, aretained

ROOT = Path(__file__).resolve().parents[2]
HA_PYTHON = ROOT / ".venv" / "ha" / "bin" / "python"
EVENT = "blupow/gateway/event"
TOPICS = Topics("blupow", "gateway", "homeassistant")
FORBIDDEN_KEYS = {"object_id", "model_id", "mdl_id", "default_entity_id"}


def keys_anywhere(value: Any) -> set[str]:
    if isinstance(value, dict):
        found = set(value)
        for item in value.values():
            found |= keys_anywhere(item)
        return found
    if isinstance(value, list):
        return set().union(*(keys_anywhere(v) for v in value)) if value else set()
    return set()


def configs_of(retained: dict[str, bytes], mac_id: str) -> dict[str, dict[str, Any]]:
    return {t: json.loads(p) for t, p in retained.items() if t.startswith("homeassistant/") and mac_id in t and p}


async def online(gateway_factory: GatewayFactory, sim_world: SimWorld, kind: str, type_name: str, **kw: Any) -> Any:
    sim = sim_world.add(kind)
    gateway = await gateway_factory((DeviceOption(sim.mac, type_name, name=f"Test {kind}", **kw),))
    await wait_until(lambda: gateway.scheduler.unit(sim.mac).status == "online", 5, f"{kind} online")
    await gateway.mqtt.flush()
    return sim, gateway


async def test_controller_discovery_payloads(
    gateway_factory: GatewayFactory, sim_world: SimWorld, mosquitto: Mosquitto
) -> None:
    sim, gateway = await online(gateway_factory, sim_world, "controller", "renogy_charge_controller")
    mac_id = sim.mac.replace(":", "")
    retained = await aretained(mosquitto)
    configs = configs_of(retained, mac_id)
    state = json.loads(retained[f"blupow/{mac_id}/state"])

    pv = configs[f"homeassistant/sensor/blupow_{mac_id}_pv_power/config"]
    assert pv["unique_id"] == f"blupow_{mac_id}_pv_power"
    assert pv["name"] == "PV power"
    assert pv["state_topic"] == f"blupow/{mac_id}/state"
    assert pv["value_template"] == (
        "{{ value_json.pv_power if value_json is defined and value_json.pv_power is defined else None }}"
    )
    assert (pv["unit_of_measurement"], pv["device_class"], pv["state_class"]) == ("W", "power", "measurement")
    assert pv["suggested_display_precision"] == 0
    assert pv["availability"] == [
        {"topic": "blupow/gateway/state", "value_template": "{{ value_json.state }}"},
        {"topic": f"blupow/{mac_id}/availability"},
    ]
    assert pv["availability_mode"] == "all"
    assert pv["origin"] == {
        "name": "BluPow",
        "sw_version": __version__,
        "support_url": "https://github.com/blupow/blupow",
    }
    assert pv["device"] == {
        "identifiers": [f"blupow_{mac_id}"],
        "connections": [["mac", sim.mac]],
        "name": "Test controller",
        "manufacturer": "Renogy",
        "model": state["model"],
        "sw_version": state["software_version"],
        "serial_number": state["serial_number"],
        "via_device": "blupow_gateway_gateway",
    }
    assert state["model"] == "RNG-CTRL-RVR40"

    energy = configs[f"homeassistant/sensor/blupow_{mac_id}_power_generation_total/config"]
    assert (energy["device_class"], energy["state_class"], energy["unit_of_measurement"]) == (
        "energy",
        "total_increasing",
        "kWh",
    )
    charging = configs[f"homeassistant/sensor/blupow_{mac_id}_charging_state/config"]
    # one of a few states, shown in words; no options list (MQTT takes it from 2024.9 only)
    assert charging["device_class"] == "enum" and "options" not in charging
    assert not {"unit_of_measurement", "state_class"} & set(charging)
    assert '"floating": "Float"' in charging["value_template"] and '"mppt": "MPPT"' in charging["value_template"]
    assert charging["value_template"].endswith("else 'unknown' }}")
    faults = configs[f"homeassistant/sensor/blupow_{mac_id}_faults/config"]
    assert faults["entity_category"] == "diagnostic"
    assert "else 'OK'" in faults["value_template"]  # no fault: not "None" (2025 shows that as unknown)
    assert '"pv_input_over_voltage": "PV input over voltage"' in faults["value_template"]
    problem = configs[f"homeassistant/binary_sensor/blupow_{mac_id}_fault_active/config"]
    assert problem["device_class"] == "problem"
    assert problem["payload_on"] == "ON"
    hardware = configs[f"homeassistant/sensor/blupow_{mac_id}_hardware_version/config"]
    assert hardware["enabled_by_default"] is False
    assert hardware["entity_category"] == "diagnostic"

    load = configs[f"homeassistant/switch/blupow_{mac_id}_load/config"]
    assert load["command_topic"] == f"blupow/{mac_id}/load/set"
    assert load["state_topic"] == f"blupow/{mac_id}/state"
    assert load["value_template"] == (
        "{{ ('ON' if value_json.load_on else 'OFF') "
        "if value_json is defined and value_json.load_on is defined else 'None' }}"
    )
    assert (load["payload_on"], load["payload_off"], load["state_on"], load["state_off"]) == ("ON", "OFF", "ON", "OFF")
    # the load state is shown by the switch; no separate binary sensor for it
    assert f"homeassistant/binary_sensor/blupow_{mac_id}_load_on/config" not in configs

    for topic, payload in configs.items():
        assert not keys_anywhere(payload) & FORBIDDEN_KEYS, topic
        object_id = topic.split("/")[2]
        assert payload["unique_id"] == object_id
        assert topic.split("/")[1] in ("sensor", "binary_sensor", "switch")
    # one entity per field (minus load_on) plus the switch
    fields = gateway.scheduler.unit(sim.mac).device.active_fields()
    assert len(configs) == len(fields) - 1 + 1


async def test_battery_lists_expand_per_item_and_shrink(
    gateway_factory: GatewayFactory, sim_world: SimWorld, mosquitto: Mosquitto
) -> None:
    sim, gateway = await online(gateway_factory, sim_world, "battery", "renogy_battery")
    mac_id = sim.mac.replace(":", "")
    retained = await aretained(mosquitto)
    configs = configs_of(retained, mac_id)
    state = json.loads(retained[f"blupow/{mac_id}/state"])
    cells = state["cell_voltages"]
    assert len(cells) == sim.cells == 4
    for i in range(1, len(cells) + 1):
        cell = configs[f"homeassistant/sensor/blupow_{mac_id}_cell_voltage_{i}/config"]
        assert cell["name"] == f"Cell voltage {i}"
        assert cell["unit_of_measurement"] == "V"
        assert f"value_json.cell_voltages[{i - 1}]" in cell["value_template"]
    assert f"homeassistant/sensor/blupow_{mac_id}_cell_voltage_5/config" not in configs
    assert f"homeassistant/sensor/blupow_{mac_id}_cell_voltages/config" not in configs

    sim.registers[5000] = 2  # the BMS now reports two cells: the extra entities must go
    gateway.scheduler.poll_now(sim.mac)
    await wait_until(lambda: len(gateway.scheduler.unit(sim.mac).values.get("cell_voltages", [])) == 2, 5)
    await gateway.mqtt.flush()
    retained = await aretained(mosquitto)
    configs = configs_of(retained, mac_id)
    assert f"homeassistant/sensor/blupow_{mac_id}_cell_voltage_2/config" in configs
    assert f"homeassistant/sensor/blupow_{mac_id}_cell_voltage_3/config" not in configs
    assert f"homeassistant/sensor/blupow_{mac_id}_cell_voltage_4/config" not in configs


async def test_steady_polls_do_not_rebuild_discovery(
    gateway_factory: GatewayFactory, sim_world: SimWorld, mosquitto: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Configs are built again only when something they show changed (list lengths, name, ...).

    Building and encoding 20-40 configs after every poll only to find them unchanged was half of
    the gateway's CPU per poll; the real ``device_configs`` is wrapped here to count the builds.
    """
    from blupow_gateway import publisher

    sim, gateway = await online(gateway_factory, sim_world, "battery", "renogy_battery")
    worker = gateway.scheduler.unit(sim.mac)
    builds: list[str] = []

    def counting(topics: Topics, record: DeviceRecord, *args: Any) -> dict[str, dict[str, Any]]:
        builds.append(record.mac_address)
        return device_configs(topics, record, *args)

    monkeypatch.setattr(publisher, "device_configs", counting)

    async def poll() -> None:
        done = worker.stats.successes
        gateway.scheduler.poll_now(sim.mac)
        await wait_until(lambda: worker.stats.successes > done, 5, "polled")

    first = dict(worker.values)
    for _ in range(3):
        await poll()
    assert worker.values != first  # the values moved (the simulator's clock runs) ...
    assert builds == []  # ... but nothing the configs show did

    sim.registers[5000] = 3  # one cell fewer: the entity set changes
    await poll()
    assert builds == [sim.mac]
    await poll()
    assert builds == [sim.mac]
    await gateway.mqtt.flush()
    configs = configs_of(await aretained(mosquitto), sim.mac.replace(":", ""))
    cells = {t.split("/")[2] for t in configs if re.search(r"_cell_voltage_\d+$", t.split("/")[2])}
    assert cells == {f"blupow_{sim.mac.replace(':', '')}_cell_voltage_{i}" for i in (1, 2, 3)}

    answer = await gateway.processor.handle(
        json.dumps({"command": "update_device", "mac_address": sim.mac, "name": "House bank"}).encode()
    )
    assert answer.status == "ok", answer
    assert builds == [sim.mac] * 2  # the update publishes the new name at once ...
    await poll()
    assert builds == [sim.mac] * 3  # ... and the next poll, with the full entity set, settles it
    await poll()
    assert builds == [sim.mac] * 3
    await gateway.mqtt.flush()
    configs = configs_of(await aretained(mosquitto), sim.mac.replace(":", ""))
    assert {c["device"]["name"] for c in configs.values()} == {"House bank"}


async def test_unread_values_are_omitted_never_zero(
    gateway_factory: GatewayFactory, sim_world: SimWorld, mosquitto: Mosquitto
) -> None:
    """The RIV4835 never answers the model read: no "model" key, and the device shows the hint."""
    sim, _gateway = await online(gateway_factory, sim_world, "inverter_riv4835", "renogy_inverter")
    mac_id = sim.mac.replace(":", "")
    retained = await aretained(mosquitto)
    state = json.loads(retained[f"blupow/{mac_id}/state"])
    assert "model" not in state
    assert state["battery_voltage"] > 0
    assert None not in state.values()
    config = configs_of(retained, mac_id)[f"homeassistant/sensor/blupow_{mac_id}_battery_voltage/config"]
    assert config["device"]["model"] == "Inverter"


async def test_gateway_device_entities(gateway_factory: GatewayFactory, mosquitto: Mosquitto) -> None:
    gateway = await gateway_factory()
    await gateway.mqtt.flush()
    retained = await aretained(mosquitto, "homeassistant/#")
    ident = "blupow_gateway_gateway"
    connectivity = json.loads(retained[f"homeassistant/binary_sensor/{ident}_connectivity/config"])
    assert connectivity["state_topic"] == "blupow/gateway/state"
    assert connectivity["device_class"] == "connectivity"
    assert connectivity["entity_category"] == "diagnostic"
    assert (connectivity["payload_on"], connectivity["payload_off"]) == ("online", "offline")
    assert "availability" not in connectivity  # it must be able to show "offline"
    assert connectivity["device"]["identifiers"] == [ident]
    for key in ("version", "devices_online", "last_cycle"):
        config = json.loads(retained[f"homeassistant/sensor/{ident}_{key}/config"])
        assert config["entity_category"] == "diagnostic"
        assert config["device"]["identifiers"] == [ident]
    last_cycle = json.loads(retained[f"homeassistant/sensor/{ident}_last_cycle/config"])
    assert (last_cycle["unit_of_measurement"], last_cycle["device_class"]) == ("s", "duration")
    assert last_cycle["state_topic"] == "blupow/gateway/health"


async def test_home_assistant_birth_republishes_after_a_delay(
    gateway_factory: GatewayFactory, sim_world: SimWorld, mqtt_recorder: Any
) -> None:
    recorder = mqtt_recorder()
    sim, gateway = await online(gateway_factory, sim_world, "dcc", "renogy_dcc")
    mac_id = sim.mac.replace(":", "")
    gateway.ha_delay = (0.3, 0.4)
    since = recorder.mark()
    await recorder.apublish("homeassistant/status", "online")
    config_topic = f"homeassistant/sensor/blupow_{mac_id}_battery_voltage/config"
    config = await recorder.await_topic(config_topic, 5, since)
    state = await recorder.await_topic(f"blupow/{mac_id}/state", 5, since)
    availability = await recorder.await_topic(f"blupow/{mac_id}/availability", 5, since)
    gateway_config = await recorder.await_topic(
        "homeassistant/binary_sensor/blupow_gateway_gateway_connectivity/config", 5, since
    )
    birth = recorder.on("homeassistant/status", since)[0]
    assert config.at - birth.at >= 0.25  # after the configured random delay, not at once
    assert availability.text == "online"
    assert state.json()["battery_voltage"] > 0
    assert gateway_config.json()["unique_id"] == "blupow_gateway_gateway_connectivity"
    # "offline" (HA stopping) triggers nothing
    since = recorder.mark()
    await recorder.apublish("homeassistant/status", "offline")
    await asyncio.sleep(0.6)
    assert recorder.on(config_topic, since) == []


@pytest.mark.parametrize("paced", [True, False], ids=["paced", "unpaced-control"])
async def test_a_republish_larger_than_the_mqtt_queue_loses_nothing(
    gateway_factory: GatewayFactory,
    sim_world: SimWorld,
    mqtt_recorder: Any,
    monkeypatch: pytest.MonkeyPatch,
    paced: bool,
) -> None:
    """paho drops QoS 1 messages beyond its queue limit; a full republish pauses instead.

    The queue is shrunk to 60 messages (one device fits) against ~130 configs. The unpaced control shows that the
    burst really overflows it (the republish loses configs without the pause).
    """
    from blupow_gateway import mqtt, publisher

    monkeypatch.setattr(mqtt, "MAX_QUEUED", 60)
    monkeypatch.setattr(publisher, "REPUBLISH_HIGH_WATER", 10 if paced else 10**6)
    recorder = mqtt_recorder()
    sims = [sim_world.add("battery", mac=f"C4:64:E3:00:01:{i:02X}") for i in range(3)]
    # polls must not republish what the burst dropped within the test: one poll each, at the start
    gateway = await gateway_factory(tuple(DeviceOption(s.mac, "renogy_battery") for s in sims), poll_interval=60)
    workers = [gateway.scheduler.unit(s.mac) for s in sims]
    await wait_until(lambda: all(w.stats.successes for w in workers), 5, "online")
    expected = set()
    for w in workers:
        assert w.device is not None
        expected |= set(device_configs(TOPICS, w.record, w.device, w.values, gateway.version))
    assert len(expected) > 2 * 60
    await gateway.mqtt.flush()

    gateway.ha_delay = (0.0, 0.0)
    since = recorder.mark()
    await recorder.apublish("homeassistant/status", "online")
    out = gateway.publisher
    await wait_until(lambda: out.republishing is not None and out.republishing.done(), 10, "republished")
    await gateway.mqtt.flush()
    await asyncio.sleep(0.2)  # the last deliveries to the recorder
    republished = {m.topic for m in recorder.messages[since:] if m.topic in expected}
    if paced:
        assert republished == expected
    else:
        assert len(republished) < len(expected)


async def test_load_switch_writes_and_reads_back(
    gateway_factory: GatewayFactory, sim_world: SimWorld, mqtt_recorder: Any
) -> None:
    recorder = mqtt_recorder()
    sim, gateway = await online(gateway_factory, sim_world, "controller", "renogy_charge_controller")
    mac_id = sim.mac.replace(":", "")
    assert sim.load_on is True
    for payload, expected in (("OFF", False), ("on", True), ("0", False), ("true", True)):
        since = recorder.mark()
        await recorder.apublish(f"blupow/{mac_id}/load/set", payload)
        state = await recorder.await_topic(
            f"blupow/{mac_id}/state", 5, since, lambda m, e=expected: m.json().get("load_on") is e
        )
        assert state.json()["load_on"] is expected
        assert sim.load_on is expected
        assert sim.writes[-1] == (0x010A, int(expected))
    failures = [m for m in recorder.on(EVENT) if m.json()["type"] == "device_failed"]
    assert failures == []

    since = recorder.mark()
    await recorder.apublish(f"blupow/{mac_id}/load/set", "maybe")
    event = await recorder.await_topic(EVENT, 5, since, lambda m: m.json()["type"] == "device_failed")
    assert event.json()["data"]["error"] == "invalid payload for load: b'maybe' (use ON or OFF)"
    writes = len(sim.writes)
    await recorder.apublish(f"blupow/{mac_id}/load/set", "OFF", retain=True)  # live: applied once
    await wait_until(lambda: len(sim.writes) == writes + 1, 5)
    assert sim.load_on is False
    await gateway.stop()
    # a restarted gateway must not replay the retained "OFF"
    sim.load_on = True
    second = await gateway_factory((DeviceOption(sim.mac, "renogy_charge_controller"),))
    await wait_until(lambda: second.scheduler.unit(sim.mac).status == "online", 5)
    await asyncio.sleep(0.3)
    assert len(sim.writes) == writes + 1
    assert sim.load_on is True
    await recorder.apublish(f"blupow/{mac_id}/load/set", b"", retain=True)


async def test_control_failure_is_reported(
    gateway_factory: GatewayFactory, sim_world: SimWorld, mqtt_recorder: Any
) -> None:
    recorder = mqtt_recorder()
    sim, _gateway = await online(gateway_factory, sim_world, "controller", "renogy_charge_controller")
    mac_id = sim.mac.replace(":", "")
    sim_world.out_of_range.add(sim.mac)
    sim_world.drop(sim.mac)
    since = recorder.mark()
    await recorder.apublish(f"blupow/{mac_id}/load/set", "OFF")
    event = await recorder.await_topic(
        EVENT, 5, since, lambda m: m.json()["type"] == "device_failed" and "writing load" in m.json()["data"]["error"]
    )
    assert (
        event.json()["data"]["error"] == f"writing load failed: {sim.mac} not found: it is out of range or powered off"
    )


async def _all_kinds_configs() -> tuple[dict[str, Any], dict[str, str]]:
    configs: dict[str, Any] = dict(gateway_configs(TOPICS, "0.1.0"))
    states: dict[str, str] = {}
    kinds = ("controller", "dcc", "dcc_g6", "battery", "battery_pro", "inverter", "inverter_riv4835")
    from blupow_gateway.simulator import KINDS

    for kind in kinds:
        spec = KINDS[kind]
        sim = create_simulated(kind)
        device = create_device(spec.type_name, variant=spec.variant)
        reading = await device.read(SimulatedLink(sim, latency=0))
        record = DeviceRecord(sim.mac, spec.type_name, f"Test {kind}")
        configs.update(device_configs(TOPICS, record, device, reading.values, "0.1.0"))
        states[TOPICS.device_state(sim.mac)] = json.dumps(reading.values)
    return configs, states


@pytest.mark.skipif(not HA_PYTHON.exists(), reason="the Home Assistant venv (.venv/ha) is not set up")
async def test_payloads_are_accepted_by_home_assistant_2024_3() -> None:
    """Home Assistant 2024.3.3's own schemas accept every payload, and its template engine
    renders numbers for numeric sensors, ON/OFF for binaries, and, with the key missing,
    "None" where 2024.3 turns that into unknown (numeric sensors, binaries, switches) and
    "unknown" for text sensors (2024.3 would keep a rendered "None" as the text None)."""
    configs, states = await _all_kinds_configs()
    proc = await asyncio.create_subprocess_exec(
        str(HA_PYTHON),
        str(Path(__file__).with_name("ha_discovery_check.py")),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(json.dumps({"configs": configs, "states": states}).encode()), 90)
    assert proc.returncode == 0, err.decode()[-2000:]
    result = json.loads(out)
    assert result["invalid"] == {}
    assert len(result["rendered"]) == len(configs) > 200
    numbers = 0
    words: list[tuple[str, str]] = []
    for topic, payload in configs.items():
        rendered, missing = result["rendered"][topic], result["missing"][topic]
        component = topic.split("/")[1]
        if payload["state_topic"] in ("blupow/gateway/info", "blupow/gateway/health", "blupow/gateway/state"):
            continue
        numeric = bool({"unit_of_measurement", "state_class", "suggested_display_precision"} & set(payload)) or (
            payload.get("device_class") not in (None, "enum")
        )
        if component in ("binary_sensor", "switch"):
            assert rendered in ("ON", "OFF", "None"), (topic, rendered)
            assert missing == "None", topic
        elif numeric:
            if rendered != "None":  # None: this model does not have the value
                float(rendered)  # a number Home Assistant can parse
                numbers += 1
            assert missing == "None", topic
        else:
            assert rendered not in ("", "None"), (topic, rendered)  # Home Assistant 2025 shows "None" as unknown
            assert missing == "unknown", topic
            if "_" in rendered and payload.get("entity_category") != "diagnostic":
                words.append((topic, rendered))  # a key, not words a person reads
    assert numbers > 150
    assert not words, words

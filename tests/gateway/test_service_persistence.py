"""The device registry on disk: atomic writes, damaged files, old layouts, options vs. command devices."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import pytest

from blupow_gateway.settings import DeviceOption
from blupow_gateway.store import (
    SCHEMA_VERSION,
    DeviceRecord,
    DeviceStore,
    NotJSONError,
    PublishedLedger,
    StoredState,
    atomic_write_json,
    merge,
    named_bank_key,
    normalise_key,
    normalise_mac,
)
from tests.plugins.gateway import GatewayFactory, SimWorld, wait_until
from tests.plugins.mosquitto import Mosquitto, aretained

CMD = "blupow/gateway/command"


def hint(type_name: str) -> str:
    return {"renogy_inverter": "Inverter", "renogy_dcc": "DC-DC charger"}.get(type_name, "Device")


def record(mac: str, **kw: Any) -> DeviceRecord:
    return DeviceRecord(mac_address=mac, type=kw.pop("type", "renogy_dcc"), name=kw.pop("name", "x"), **kw)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("d8:b6:73:bf:4f:75", "D8:B6:73:BF:4F:75"),
        ("D8-B6-73-BF-4F-75", "D8:B6:73:BF:4F:75"),
        ("d8b673bf4f75", "D8:B6:73:BF:4F:75"),
        (" D8:B6:73:BF:4F:75 ", "D8:B6:73:BF:4F:75"),
        ("D8:B6-73:BF:4F:75", None),  # mixed separators
        ("D8:B6:73:BF:4F", None),
        ("D8:B6:73:BF:4F:7G", None),
        ("", None),
    ],
)
def test_normalise_mac(text: str, expected: str | None) -> None:
    assert normalise_mac(text) == expected


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    store = DeviceStore(tmp_path)
    records = [
        record("AA:BB:CC:DD:EE:01", modbus_id=3, variant=None, config=None, enabled=False),
        record("AA:BB:CC:DD:EE:02", type="generic_modbus", config={"blocks": [], "fields": []}),
        record("AA:BB:CC:DD:EE:03", origin="options"),  # options devices are not stored
    ]
    store.save(records, {"AA:BB:CC:DD:EE:03": {"name": "Renamed"}})
    data = json.loads((tmp_path / "devices.json").read_text())
    assert data["schema_version"] == SCHEMA_VERSION
    assert [d["mac_address"] for d in data["devices"]] == ["AA:BB:CC:DD:EE:01", "AA:BB:CC:DD:EE:02"]
    loaded = store.load()
    assert loaded.devices == records[:2]
    assert loaded.devices[1].config == {"blocks": [], "fields": []}
    # overrides are keyed by unit; a MAC key (schema 1) is read as the key of the MAC's only unit
    assert loaded.overrides == {"AABBCCDDEE03": {"name": "Renamed"}}
    assert [p.name for p in tmp_path.iterdir()] == ["devices.json"]  # no temporary file left


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("House bank", "bank_house_bank"),
        ("house-BANK", "bank_house_bank"),  # the same bank: case and punctuation do not split it
        ("  Port (2)  ", "bank_port_2"),
        ("Bateau à voile", "bank_bateau_a_voile"),
        ("House", "bank_house"),
    ],
)
def test_named_bank_keys(name: str, key: str) -> None:
    assert named_bank_key(name) == key
    assert normalise_key(key) == key  # published.json keeps the bank's topics under this key


def test_bank_is_stored_with_the_record_and_as_an_override(tmp_path: Path) -> None:
    """``bank`` is an additive field: written only when set, read back, and kept (also cleared,
    as null) for an options device; a schema-2 file without it loads unchanged."""
    store = DeviceStore(tmp_path)
    records = [
        record("AA:BB:CC:DD:EE:01", type="renogy_battery", bank="House bank"),
        record("AA:BB:CC:DD:EE:02", type="renogy_battery"),
    ]
    overrides = {"AABBCCDDEE03": {"bank": None}, "AABBCCDDEE04": {"bank": "Starter"}}
    store.save(records, overrides)
    data = json.loads((tmp_path / "devices.json").read_text())
    assert data["schema_version"] == 2
    assert [d.get("bank", "absent") for d in data["devices"]] == ["House bank", "absent"]
    loaded = store.load()
    assert loaded.devices == records
    assert loaded.overrides == overrides
    options = [
        DeviceOption("AA:BB:CC:DD:EE:03", "renogy_battery", bank="House bank"),
        DeviceOption("AA:BB:CC:DD:EE:04", "renogy_battery"),
    ]
    merged = merge(options, loaded, hint)
    assert [r.bank for r in merged.records] == [None, "Starter", "House bank", None]

    battery = {"mac_address": "AA:BB:CC:DD:EE:05", "type": "renogy_battery", "name": "B"}
    raw: dict[str, Any] = {"schema_version": 2, "devices": [battery]}
    (tmp_path / "devices.json").write_text(json.dumps(raw))
    assert [(r.name, r.bank) for r in store.load().devices] == [("B", None)]
    raw["devices"].append({"mac_address": "AA:BB:CC:DD:EE:06", "type": "renogy_battery", "name": "C", "bank": " "})
    (tmp_path / "devices.json").write_text(json.dumps(raw))
    assert [r.name for r in store.load().devices] == ["B"]  # the bad one is rejected (and kept aside)


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path: Path) -> None:
    path = tmp_path / "devices.json"
    atomic_write_json(path, {"old": True})
    with pytest.raises(TypeError):
        atomic_write_json(path, {"new": object()})  # not JSON-serialisable: fails mid-way
    assert json.loads(path.read_text()) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["devices.json"]


@pytest.mark.parametrize("number", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
def test_atomic_write_refuses_non_finite_numbers(tmp_path: Path, number: float) -> None:
    """NaN/Infinity would be written as bare words that are not JSON; the old file stays instead."""
    path = tmp_path / "published.json"
    atomic_write_json(path, {"old": True})
    with pytest.raises(OSError, match=r"not writing published\.json: Out of range float") as info:
        atomic_write_json(path, {"devices": {"AA:BB:CC:DD:EE:01": {"values": {"cells": [3.3, number]}}}})
    # an OSError, so every writer's existing "could not write" path applies (logged, change refused)
    assert isinstance(info.value, NotJSONError)
    assert json.loads(path.read_text()) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["published.json"]


def test_ledger_values_that_are_not_finite_are_dropped_on_load(tmp_path: Path) -> None:
    """An older gateway could leave Infinity in published.json; keeping it would make every later save fail."""
    (tmp_path / "published.json").write_text(
        '{"schema_version": 1, "devices": {"AA:BB:CC:DD:EE:01": {"topics": ["t/1"], '
        '"values": {"model": "RNG-CTRL-RVR40", "cells": [3.3, Infinity], "power": NaN}}}}'
    )
    ledger = PublishedLedger(tmp_path)
    loaded = ledger.load()
    assert loaded == {"AABBCCDDEE01": {"topics": ["t/1"], "values": {"model": "RNG-CTRL-RVR40"}}}
    ledger.save(loaded)
    assert ledger.load() == loaded


def test_a_stored_config_holding_nan_is_rejected(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # a hand-edited file: json.loads reads the bare NaN
    field = '{"key": "x", "register": 1, "type": "u16", "scale": NaN}'
    config = f'{{"blocks": [{{"start": 1, "count": 1}}], "fields": [{field}]}}'
    good = '{"mac_address": "AA:BB:CC:DD:EE:01", "type": "renogy_dcc", "name": "Good"}'
    edited = f'{{"mac_address": "AA:BB:CC:DD:EE:02", "type": "generic_modbus", "name": "Edited", "config": {config}}}'
    (tmp_path / "devices.json").write_text(f'{{"schema_version": 1, "devices": [{good}, {edited}]}}')
    with caplog.at_level(logging.ERROR):
        state = DeviceStore(tmp_path).load()
    assert [r.name for r in state.devices] == ["Good"]
    assert "AA:BB:CC:DD:EE:02: config holds NaN or Infinity, which is not JSON" in caplog.text
    assert len(list(tmp_path.glob("devices.json.rejected-*"))) == 1
    DeviceStore(tmp_path).save(state.devices, state.overrides)  # what is kept can be written back


def test_a_stray_temporary_file_from_a_crash_is_removed(tmp_path: Path) -> None:
    store = DeviceStore(tmp_path)
    store.save([record("AA:BB:CC:DD:EE:01")], {})
    stray = tmp_path / ".devices.json.4242.tmp"
    stray.write_text('{"schema_version": 1, "devi')  # what a SIGKILL mid-write leaves
    assert [r.mac_address for r in store.load().devices] == ["AA:BB:CC:DD:EE:01"]
    assert not stray.exists()


@pytest.mark.parametrize(
    "content",
    [b'{"schema_version": 1, "devices": [{"mac_addr', b"\x00\x01\x02garbage", b"42", b'{"devices": "all of them"}'],
    ids=["truncated", "binary", "number", "wrong-shape"],
)
def test_a_damaged_file_is_moved_aside_with_an_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: bytes
) -> None:
    (tmp_path / "devices.json").write_bytes(content)
    with caplog.at_level(logging.ERROR):
        state = DeviceStore(tmp_path).load()
    assert state == StoredState()
    (aside,) = list(tmp_path.glob("devices.json.corrupt-*"))
    assert aside.read_bytes() == content  # nothing is lost
    assert not (tmp_path / "devices.json").exists()
    assert str(aside) in caplog.text or "moved to" in caplog.text
    assert any(r.levelno == logging.ERROR for r in caplog.records)


def test_bad_records_are_skipped_and_the_original_kept(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    raw = {
        "schema_version": 1,
        "devices": [
            {"mac_address": "AA:BB:CC:DD:EE:01", "type": "renogy_dcc", "name": "Good"},
            {"mac_address": "nonsense", "type": "renogy_dcc", "name": "Bad MAC"},
            {"mac_address": "AA:BB:CC:DD:EE:03", "type": "renogy_dcc", "name": "Bad id", "modbus_id": 300},
            {"mac_address": "aa:bb:cc:dd:ee:01", "type": "renogy_dcc", "name": "Twice"},
            "not even an object",
        ],
        "options_overrides": {"AA:BB:CC:DD:EE:09": {"enabled": False, "name": 5}},
    }
    (tmp_path / "devices.json").write_text(json.dumps(raw))
    with caplog.at_level(logging.ERROR):
        state = DeviceStore(tmp_path).load()
    assert [r.name for r in state.devices] == ["Good"]
    assert state.overrides == {"AABBCCDDEE09": {"enabled": False}}
    (kept,) = list(tmp_path.glob("devices.json.rejected-*"))
    assert json.loads(kept.read_text()) == raw
    assert "Ignored 4 unusable entries" in caplog.text
    assert "invalid modbus_id 300" in caplog.text


def test_a_record_nested_too_deeply_is_rejected_alone(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A hand-edited config 600 levels deep: json reads it, copying it would overflow the stack."""
    deep = '{"a":' * 600 + "1" + "}" * 600
    text = (
        '{"schema_version": 1, "devices": ['
        '{"mac_address": "AA:BB:CC:DD:EE:01", "type": "generic_modbus", "name": "Deep", "config": ' + deep + "},"
        '{"mac_address": "AA:BB:CC:DD:EE:02", "type": "renogy_dcc", "name": "Good"}]}'
    )
    (tmp_path / "devices.json").write_text(text)
    with caplog.at_level(logging.ERROR):
        state = DeviceStore(tmp_path).load()
    assert [r.name for r in state.devices] == ["Good"]
    (kept,) = list(tmp_path.glob("devices.json.rejected-*"))
    assert kept.read_text() == text
    assert "AA:BB:CC:DD:EE:01: nested too deeply" in caplog.text


def test_version_0_bare_list_and_newer_versions_are_read(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "devices.json").write_text(
        json.dumps([{"mac_address": "AA:BB:CC:DD:EE:01", "type": "renogy_dcc", "name": "Old"}])
    )
    assert [r.name for r in DeviceStore(tmp_path).load().devices] == ["Old"]
    newer = {
        "schema_version": 7,
        "devices": [{"mac_address": "AA:BB:CC:DD:EE:02", "type": "renogy_dcc", "name": "New", "x": 1}],
    }
    (tmp_path / "devices.json").write_text(json.dumps(newer))
    with caplog.at_level(logging.WARNING):
        assert [r.name for r in DeviceStore(tmp_path).load().devices] == ["New"]
    (copy,) = list(tmp_path.glob("devices.json.v7-*"))
    assert json.loads(copy.read_text()) == newer
    assert "written by a newer version" in caplog.text


def test_merge_options_win_over_command_devices(caplog: pytest.LogCaptureFixture) -> None:
    stored = StoredState(
        devices=[record("AA:BB:CC:DD:EE:01", name="By command"), record("AA:BB:CC:DD:EE:02", name="Only command")],
        overrides={"AA:BB:CC:DD:EE:03": {"enabled": False}, "AA:BB:CC:DD:EE:04": {"name": "Gone"}},
    )
    options = [
        DeviceOption("AA:BB:CC:DD:EE:01", "renogy_inverter", name="From options"),
        DeviceOption("AA:BB:CC:DD:EE:03", "renogy_dcc"),
    ]
    with caplog.at_level(logging.INFO):
        merged = merge(options, stored, hint)
    by_mac = {r.mac_address: r for r in merged.records}
    assert by_mac["AA:BB:CC:DD:EE:01"].origin == "options"
    assert by_mac["AA:BB:CC:DD:EE:01"].name == "From options"
    assert by_mac["AA:BB:CC:DD:EE:01"].type == "renogy_inverter"
    assert by_mac["AA:BB:CC:DD:EE:02"].origin == "command"
    assert by_mac["AA:BB:CC:DD:EE:03"].enabled is False  # the command change to an options device stays
    assert by_mac["AA:BB:CC:DD:EE:03"].name == "DC-DC charger EE03"
    assert merged.overrides == {"AABBCCDDEE03": {"enabled": False}}  # keyed by unit
    assert merged.changed  # the file must be rewritten without the taken-over device
    assert "AA:BB:CC:DD:EE:01 was added by command and is now also listed in the add-on options" in caplog.text


async def test_gateway_restart_keeps_command_devices(
    gateway_factory: GatewayFactory, sim_world: SimWorld, mqtt_recorder: Any, tmp_path: Path
) -> None:
    recorder = mqtt_recorder()
    sim = sim_world.add("controller")
    first = await gateway_factory()
    added = await recorder.arequest(
        CMD, {"command": "add_device", "mac_address": sim.mac, "type": "renogy_charge_controller", "name": "Shed"}
    )
    assert added["status"] == "ok"
    await wait_until(lambda: first.scheduler.unit(sim.mac).status == "online", 5)
    await first.stop()
    second = await gateway_factory()
    worker = second.scheduler.unit(sim.mac)
    assert (worker.record.name, worker.record.origin) == ("Shed", "command")
    await wait_until(lambda: worker.status == "online", 5)


async def test_a_failed_save_refuses_the_change(
    gateway_factory: GatewayFactory, mqtt_recorder: Any, tmp_path: Path
) -> None:
    recorder = mqtt_recorder()
    gateway = await gateway_factory()
    (tmp_path / "data").mkdir(exist_ok=True)
    (tmp_path / "data" / "devices.json").mkdir()  # the rename onto it must fail
    response = await recorder.arequest(
        CMD, {"command": "add_device", "mac_address": "AA:BB:CC:DD:EE:01", "type": "renogy_dcc"}
    )
    assert response["status"] == "error"
    assert response["error"].startswith("could not save the device registry (")
    assert gateway.list_devices() == []


async def test_devices_removed_from_the_options_while_stopped_are_cleared(
    gateway_factory: GatewayFactory, sim_world: SimWorld, mosquitto: Mosquitto
) -> None:
    sim = sim_world.add("dcc")
    mac_id = sim.mac.replace(":", "")
    first = await gateway_factory((DeviceOption(sim.mac, "renogy_dcc"),))
    await wait_until(lambda: first.scheduler.unit(sim.mac).status == "online", 5)
    await first.mqtt.flush()
    await first.stop()
    assert any(mac_id in t for t in await aretained(mosquitto, "homeassistant/#"))
    second = await gateway_factory(())  # the device is no longer in the options
    key = sim.mac.replace(":", "")
    await wait_until(lambda: second.mqtt.connected and key not in second.publisher.ledger, 5, "cleared")
    await second.mqtt.flush()
    retained = await aretained(mosquitto)
    assert [t for t in retained if mac_id in t] == []


async def test_a_removal_while_the_broker_is_away_is_cleared_once_it_is_back(
    gateway_factory: GatewayFactory, sim_world: SimWorld, mosquitto: Mosquitto
) -> None:
    """The clears of a device removed during a broker outage cannot be sent; they must not be lost."""
    mosquitto.stop()  # with persistence: the retained configs must survive the outage
    config = mosquitto.config_path.read_text()
    mosquitto.config_path.write_text(
        config.replace("persistence false", f"persistence true\npersistence_location {mosquitto.workdir}/")
    )
    mosquitto.start()
    sim = sim_world.add("dcc")
    mac_id = sim.mac.replace(":", "")
    gateway = await gateway_factory()
    answer = await gateway.processor.handle(
        json.dumps({"command": "add_device", "mac_address": sim.mac, "type": "renogy_dcc"}).encode()
    )
    assert answer.status == "ok", answer
    await wait_until(lambda: gateway.scheduler.unit(sim.mac).status == "online", 5)
    await gateway.mqtt.flush()
    assert any(mac_id in t for t in await aretained(mosquitto, "homeassistant/#"))

    mosquitto.stop()
    await wait_until(lambda: not gateway.mqtt.connected, 10, "disconnected")
    answer = await gateway.processor.handle(json.dumps({"command": "remove_device", "mac_address": sim.mac}).encode())
    assert answer.status == "ok", answer
    assert sim.mac.replace(":", "") in gateway.publisher.ledger  # remembered: its clears could not be sent
    mosquitto.start()
    key = sim.mac.replace(":", "")
    await wait_until(lambda: gateway.mqtt.connected and key not in gateway.publisher.ledger, 15, "cleared")
    await gateway.mqtt.flush()
    assert [t for t in await aretained(mosquitto) if mac_id in t] == []

"""Options flow ("Configure"): add, scan, remove, gateway choice, and the gateway's answers."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import voluptuous as vol
from conftest import (
    DEVICE_FROM_COMMAND,
    DEVICE_FROM_OPTIONS,
    announce_gateway,
    assert_translated,
    commands,
    gateway_event,
    next_command,
    respond,
    select_options,
    set_gateway_state,
    suggested_values,
)
from homeassistant.config_entries import ConfigEntryState
from homeassistant.core import HomeAssistant
from homeassistant.data_entry_flow import FlowResult, FlowResultType
from pytest_homeassistant_custom_component.common import MockConfigEntry
from pytest_homeassistant_custom_component.typing import MqttMockHAClient

from custom_components.blupow import config_flow, gateway
from custom_components.blupow.const import DOMAIN

ADD_INPUT = {"mac_address": "d8-b6-73-bf-4f-75", "type": "renogy_inverter", "name": "Inverter", "modbus_id": 32}


async def _open(hass: HomeAssistant, entry: MockConfigEntry) -> FlowResult:
    return assert_translated(await hass.config_entries.options.async_init(entry.entry_id))


async def _step(hass: HomeAssistant, result: FlowResult, user_input: dict[str, Any] | None = None) -> FlowResult:
    return assert_translated(await hass.config_entries.options.async_configure(result["flow_id"], user_input))


async def _remove(hass: HomeAssistant, result: FlowResult, value: str) -> FlowResult:
    """Pick ``value`` in the remove form, then confirm what the next page says goes."""
    result = await _step(hass, result, {"mac_address": value})
    assert result["type"] == FlowResultType.FORM and result["step_id"] == "remove_confirm", result
    return await _step(hass, result, {})


async def _menu(hass: HomeAssistant, entry: MockConfigEntry, choice: str) -> FlowResult:
    result = await _open(hass, entry)
    assert result["type"] == FlowResultType.MENU
    return await _step(hass, result, {"next_step_id": choice})


async def _finish(hass: HomeAssistant, result: FlowResult) -> FlowResult:
    """After the gateway answered (or the wait ended): let the task end, then move the flow on."""
    await hass.async_block_till_done()
    return await _step(hass, result)


@pytest.fixture
def short_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gateway, "COMMAND_TIMEOUT", 0.05)


async def test_no_gateway_online_aborts(hass: HomeAssistant, entry: MockConfigEntry) -> None:
    result = await _open(hass, entry)
    assert result["type"] == FlowResultType.ABORT
    assert result["reason"] == "no_gateway"

    announce_gateway(hass, state="offline")
    result = await _open(hass, entry)
    assert result["type"] == FlowResultType.ABORT
    assert result["reason"] == "no_gateway"


async def test_not_loaded_aborts(hass: HomeAssistant) -> None:
    # Without MQTT the entry stays in setup-retry; Configure still opens and says why it cannot work.
    config_entry = MockConfigEntry(domain=DOMAIN, data={}, unique_id=DOMAIN)
    config_entry.add_to_hass(hass)
    await hass.config_entries.async_setup(config_entry.entry_id)
    await hass.async_block_till_done()
    assert config_entry.state == ConfigEntryState.SETUP_RETRY

    result = await _open(hass, config_entry)

    assert result["type"] == FlowResultType.ABORT
    assert result["reason"] == "not_loaded"


async def test_add_device_success(hass: HomeAssistant, entry: MockConfigEntry, mqtt_mock: MqttMockHAClient) -> None:
    announce_gateway(hass)
    result = await _open(hass, entry)
    assert result["type"] == FlowResultType.MENU
    assert result["menu_options"] == ["add_device", "scan", "remove_device", "bank", "energy"]
    assert result["description_placeholders"]["gateway_id"] == "gateway"

    result = await _step(hass, result, {"next_step_id": "add_device"})
    assert result["type"] == FlowResultType.FORM
    assert result["step_id"] == "add_device"
    # product families in words, the generic Modbus type last; nothing pre-selected
    assert select_options(result, "type") == [
        "renogy_charge_controller",
        "renogy_battery",
        "renogy_inverter",
        "generic_modbus",
    ]
    labels = [o["label"] for o in result["data_schema"].schema["type"].config["options"]]
    assert labels[0] == "Charge controller: Rover, Wanderer, Adventurer"
    assert labels[-1] == "Other Modbus device (described in JSON)"
    assert not any(str(key) == "type" and isinstance(key, vol.Required) for key in result["data_schema"].schema)
    assert select_options(result, "variant") == ["legacy", "pro"]
    no_type = await _step(hass, result, {k: v for k, v in ADD_INPUT.items() if k != "type"})
    assert no_type["step_id"] == "add_device" and no_type["errors"] == {"type": "type_required"}

    result = await _step(hass, result, ADD_INPUT)
    assert result["type"] == FlowResultType.SHOW_PROGRESS
    assert result["progress_action"] == "add_device"

    request = await next_command(mqtt_mock)
    assert request == {
        "command": "add_device",
        "mac_address": "D8:B6:73:BF:4F:75",
        "type": "renogy_inverter",
        "name": "Inverter",
        "modbus_id": 32,
        "transaction": request["transaction"],
    }
    assert isinstance(request["transaction"], str)
    assert len(request["transaction"]) >= 8

    # An answer to someone else's request is not ours: the flow keeps waiting (and then succeeds).
    respond(hass, request, transaction="someone-else", error="device D8:B6:73:BF:4F:75 already exists")
    respond(hass, {"command": None, "transaction": None}, error="payload must be a JSON object")
    await asyncio.sleep(0)
    respond(hass, request, data={**DEVICE_FROM_COMMAND, "origin": "command", "status": "pending"})
    await asyncio.sleep(0)
    assert result["type"] == FlowResultType.SHOW_PROGRESS  # added; now the first contact is awaited
    # Another unit of the same module, and the same address on another gateway, are not this one.
    gateway_event(hass, "device_failed", "D8B673BF4F75_33", {"error": "timeout"})
    gateway_event(hass, "device_failed", data={"error": "timeout"}, gateway_id="garage")
    gateway_event(hass, "device_added", data=DEVICE_FROM_COMMAND)
    identity = {"model": "RIV1220PU-126", "firmware": "1.02", "serial": "2203A0042"}
    gateway_event(hass, "device_connected", data=identity)
    result = await _finish(hass, result)

    assert result["type"] == FlowResultType.ABORT
    assert result["reason"] == "device_found"
    assert result["description_placeholders"]["found"] == "RIV1220PU-126, serial 2203A0042, firmware 1.02"
    assert result["description_placeholders"]["device"] == "Inverter (D8:B6:73:BF:4F:75)"
    assert len(commands(mqtt_mock)) == 1
    assert entry.options == {}  # the gateway's retained device list is the source of truth


async def test_add_device_gateway_error_word_for_word_then_retry(
    hass: HomeAssistant, entry: MockConfigEntry, mqtt_mock: MqttMockHAClient
) -> None:
    announce_gateway(hass)
    result = await _menu(hass, entry, "add_device")
    result = await _step(hass, result, ADD_INPUT)
    request = await next_command(mqtt_mock)

    error = "device D8:B6:73:BF:4F:75 already exists"
    respond(hass, request, error=error)
    result = await _finish(hass, result)

    assert result["type"] == FlowResultType.FORM
    assert result["step_id"] == "add_device"
    assert result["errors"] == {"base": "gateway_error"}
    assert result["description_placeholders"]["error"] == error
    # The form keeps what the user typed, so only the mistake needs fixing.
    assert suggested_values(result)["mac_address"] == ADD_INPUT["mac_address"]
    assert suggested_values(result)["type"] == "renogy_inverter"

    result = await _step(hass, result, {**ADD_INPUT, "mac_address": "D8:B6:73:BF:4F:76", "name": ""})
    assert result["type"] == FlowResultType.SHOW_PROGRESS
    retry = await next_command(mqtt_mock, seen=1)
    assert retry["mac_address"] == "D8:B6:73:BF:4F:76"
    assert "name" not in retry  # an emptied name lets the gateway choose its default
    assert retry["transaction"] != request["transaction"]
    respond(hass, retry, data={"mac_address": "D8:B6:73:BF:4F:76", "name": "Inverter 4F76", "unit_id": "D8B673BF4F76"})
    await asyncio.sleep(0)
    gateway_event(hass, "device_connected", "D8B673BF4F76", mac="D8:B6:73:BF:4F:76")  # an older gateway tells no model
    result = await _finish(hass, result)

    assert result["type"] == FlowResultType.ABORT
    assert result["reason"] == "device_found"
    assert result["description_placeholders"]["name"] == "Inverter 4F76"
    assert result["description_placeholders"]["found"] == "Inverter"


async def test_add_device_timeout(
    hass: HomeAssistant, entry: MockConfigEntry, mqtt_mock: MqttMockHAClient, short_timeout: None
) -> None:
    announce_gateway(hass)
    result = await _menu(hass, entry, "add_device")
    result = await _step(hass, result, ADD_INPUT)
    assert result["type"] == FlowResultType.SHOW_PROGRESS
    await next_command(mqtt_mock)

    result = await _finish(hass, result)  # nobody answers: the wait ends after the (shortened) timeout

    assert result["type"] == FlowResultType.FORM
    assert result["step_id"] == "add_device"
    assert result["errors"] == {"base": "no_response"}
    assert result["description_placeholders"]["timeout"] == "0.05"


@pytest.mark.parametrize("mac", ["xyz", "D8:B6:73:BF:4F", "D8:B6:73-BF:4F:75", "G8:B6:73:BF:4F:75", ""])
async def test_add_device_invalid_mac(
    hass: HomeAssistant, entry: MockConfigEntry, mqtt_mock: MqttMockHAClient, mac: str
) -> None:
    announce_gateway(hass)
    result = await _menu(hass, entry, "add_device")

    result = await _step(hass, result, {**ADD_INPUT, "mac_address": mac})

    assert result["type"] == FlowResultType.FORM
    assert result["errors"] == {"mac_address": "invalid_mac"}
    assert commands(mqtt_mock) == []


@pytest.mark.parametrize(
    ("config", "reason"),
    [("{not json", "invalid JSON: "), ("[1, 2]", "the config must be a JSON object"), ('"text"', "JSON object")],
)
async def test_add_device_invalid_config_json(
    hass: HomeAssistant, entry: MockConfigEntry, mqtt_mock: MqttMockHAClient, config: str, reason: str
) -> None:
    announce_gateway(hass)
    result = await _menu(hass, entry, "add_device")

    result = await _step(hass, result, {**ADD_INPUT, "type": "generic_modbus", "config": config})

    assert result["type"] == FlowResultType.FORM
    assert result["errors"] == {"config": "invalid_config"}
    assert reason in result["description_placeholders"]["error"]
    assert commands(mqtt_mock) == []


async def test_add_generic_modbus_needs_and_sends_its_config(
    hass: HomeAssistant, entry: MockConfigEntry, mqtt_mock: MqttMockHAClient
) -> None:
    announce_gateway(hass)
    result = await _menu(hass, entry, "add_device")
    base = {"mac_address": "AABBCCDDEEFF", "type": "generic_modbus"}

    result = await _step(hass, result, base)
    assert result["errors"] == {"config": "config_required"}
    assert commands(mqtt_mock) == []

    config = {"fields": [{"key": "voltage", "register": 256, "scale": 0.1}]}
    result = await _step(hass, result, {**base, "config": json.dumps(config, indent=2), "variant": " "})
    assert result["type"] == FlowResultType.SHOW_PROGRESS
    request = await next_command(mqtt_mock)
    assert request["config"] == config
    assert request["mac_address"] == "AA:BB:CC:DD:EE:FF"
    assert "variant" not in request

    respond(hass, request, error="generic_modbus config: fields[0].scale must be a number")
    result = await _finish(hass, result)
    assert result["errors"] == {"base": "gateway_error"}
    assert result["description_placeholders"]["error"] == "generic_modbus config: fields[0].scale must be a number"


async def test_add_device_rejects_fractional_modbus_id(
    hass: HomeAssistant, entry: MockConfigEntry, mqtt_mock: MqttMockHAClient
) -> None:
    announce_gateway(hass)
    result = await _menu(hass, entry, "add_device")

    result = await _step(hass, result, {**ADD_INPUT, "modbus_id": 32.5, "variant": "pro"})

    assert result["errors"] == {"modbus_id": "invalid_modbus_id"}
    assert commands(mqtt_mock) == []


@pytest.mark.parametrize(
    ("choice", "user_input"),
    [("add_device", ADD_INPUT), ("remove_device", {"mac_address": "D8:B6:73:BF:4F:75"}), ("scan", None)],
)
async def test_gateway_offline_before_sending(
    hass: HomeAssistant,
    entry: MockConfigEntry,
    mqtt_mock: MqttMockHAClient,
    choice: str,
    user_input: dict[str, Any] | None,
) -> None:
    announce_gateway(hass, devices=[DEVICE_FROM_COMMAND])
    result = await _open(hass, entry)
    if user_input is not None:
        result = await _step(hass, result, {"next_step_id": choice})
        assert result["type"] == FlowResultType.FORM
    set_gateway_state(hass, "gateway", "offline")

    result = await _step(hass, result, user_input if user_input is not None else {"next_step_id": choice})

    assert result["type"] == FlowResultType.ABORT
    assert result["reason"] == "gateway_offline"
    assert commands(mqtt_mock) == []


async def test_gateway_offline_after_scan(
    hass: HomeAssistant, entry: MockConfigEntry, mqtt_mock: MqttMockHAClient
) -> None:
    announce_gateway(hass)
    result = await _menu(hass, entry, "scan")
    respond(hass, await next_command(mqtt_mock), data={"devices": SCAN_FOUND})
    result = await _finish(hass, result)
    assert result["step_id"] == "scan_result"
    set_gateway_state(hass, "gateway", "offline")

    result = await _step(hass, result, {"mac_address": "C4:64:E3:38:3D:10"})

    assert result["type"] == FlowResultType.ABORT
    assert result["reason"] == "gateway_offline"


async def test_choose_between_two_gateways(
    hass: HomeAssistant, entry: MockConfigEntry, mqtt_mock: MqttMockHAClient
) -> None:
    announce_gateway(hass, "gateway")
    announce_gateway(hass, "garage", devices=[DEVICE_FROM_COMMAND])
    announce_gateway(hass, "attic", state="offline")

    result = await _open(hass, entry)
    assert result["type"] == FlowResultType.FORM
    assert result["step_id"] == "gateway"
    assert select_options(result, "gateway_id") == ["garage", "gateway"]  # online ones only

    result = await _step(hass, result, {"gateway_id": "garage"})
    assert result["type"] == FlowResultType.MENU
    assert result["description_placeholders"]["gateway_id"] == "garage"

    result = await _step(hass, result, {"next_step_id": "remove_device"})
    result = await _remove(hass, result, DEVICE_FROM_COMMAND["mac_address"])
    request = await next_command(mqtt_mock, "garage")
    assert request["command"] == "remove_device"
    assert commands(mqtt_mock, "gateway") == []

    # An answer on the other gateway's topic with the same transaction is not this gateway's answer.
    respond(hass, request, gateway_id="gateway", error="device D8:B6:73:BF:4F:75 not found")
    await asyncio.sleep(0)

    respond(hass, request, gateway_id="garage", data={"mac_address": DEVICE_FROM_COMMAND["mac_address"]})
    result = await _finish(hass, result)
    assert result["type"] == FlowResultType.ABORT
    assert result["reason"] == "device_removed"
    assert result["description_placeholders"]["gateway_id"] == "garage"


async def test_chosen_gateway_went_offline(hass: HomeAssistant, entry: MockConfigEntry) -> None:
    announce_gateway(hass, "gateway")
    announce_gateway(hass, "garage")
    result = await _open(hass, entry)
    set_gateway_state(hass, "garage", "offline")

    result = await _step(hass, result, {"gateway_id": "garage"})

    assert result["type"] == FlowResultType.FORM
    assert result["errors"] == {"base": "gateway_offline"}
    assert select_options(result, "gateway_id") == ["gateway"]


SCAN_FOUND = [
    {"mac_address": "C4:64:E3:38:3D:0E", "name": "BT-TH-E3383D0E", "rssi": -70, "types": [], "configured": True},
    {
        "mac_address": "C4:64:E3:38:3D:10",
        "name": "BT-TH-E3383D10",
        "rssi": -61,
        "types": ["renogy_charge_controller", "renogy_dcc", "renogy_battery", "renogy_inverter"],
        "configured": False,
    },
    {"mac_address": "11:22:33:44:55:66", "name": "RNGRBP-X", "types": ["renogy_dcc"], "configured": False},
]


async def test_scan_finds_nothing_new(hass: HomeAssistant, entry: MockConfigEntry, mqtt_mock: MqttMockHAClient) -> None:
    announce_gateway(hass)
    result = await _menu(hass, entry, "scan")
    respond(hass, await next_command(mqtt_mock), data={"devices": SCAN_FOUND[:1]})

    result = await _finish(hass, result)

    assert result["type"] == FlowResultType.ABORT
    assert result["reason"] == "no_devices_found"


async def test_scan_gateway_error(hass: HomeAssistant, entry: MockConfigEntry, mqtt_mock: MqttMockHAClient) -> None:
    announce_gateway(hass)
    result = await _menu(hass, entry, "scan")
    respond(hass, await next_command(mqtt_mock), error="seconds must be <= 30")

    result = await _finish(hass, result)

    assert result["type"] == FlowResultType.ABORT
    assert result["reason"] == "gateway_error"
    assert result["description_placeholders"]["error"] == "seconds must be <= 30"


async def test_scan_timeout_includes_the_scan_time(
    hass: HomeAssistant,
    entry: MockConfigEntry,
    mqtt_mock: MqttMockHAClient,
    short_timeout: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(config_flow, "SCAN_SECONDS", 1)
    announce_gateway(hass)
    result = await _menu(hass, entry, "scan")
    assert (await next_command(mqtt_mock))["seconds"] == 1

    result = await _finish(hass, result)

    assert result["type"] == FlowResultType.ABORT
    assert result["reason"] == "no_response"
    assert result["description_placeholders"]["timeout"] == "1.05"


async def test_remove_device(hass: HomeAssistant, entry: MockConfigEntry, mqtt_mock: MqttMockHAClient) -> None:
    announce_gateway(hass, devices=[DEVICE_FROM_OPTIONS, DEVICE_FROM_COMMAND])
    result = await _menu(hass, entry, "remove_device")

    assert result["type"] == FlowResultType.FORM
    assert result["step_id"] == "remove_device"
    # Devices from the add-on options can only be removed there.
    assert select_options(result, "mac_address") == ["D8:B6:73:BF:4F:75"]
    label = result["data_schema"].schema["mac_address"].config["options"][0]["label"]
    assert label == "Inverter (inverter, D8:B6:73:BF:4F:75)"  # in words, the type's key is for machines
    # nothing pre-selected (removing is not undone): the field is optional for the form
    (field,) = result["data_schema"].schema
    assert str(field) == "mac_address" and not isinstance(field, vol.Required)
    submitted_empty = await _step(hass, result, {})
    assert submitted_empty["step_id"] == "remove_device"
    assert submitted_empty["errors"] == {"mac_address": "pick_device"}

    result = await _step(hass, result, {"mac_address": "D8:B6:73:BF:4F:75"})
    assert result["type"] == FlowResultType.FORM and result["step_id"] == "remove_confirm"
    assert result["description_placeholders"]["device"] == "Inverter (inverter, D8:B6:73:BF:4F:75)"
    assert commands(mqtt_mock) == []  # nothing is sent before the confirmation
    result = await _step(hass, result, {})
    assert result["type"] == FlowResultType.SHOW_PROGRESS
    assert result["progress_action"] == "remove_device"
    request = await next_command(mqtt_mock)
    assert request == {
        "command": "remove_device",
        "mac_address": "D8:B6:73:BF:4F:75",
        "transaction": request["transaction"],
    }
    respond(hass, request, data={"mac_address": "D8:B6:73:BF:4F:75"})
    result = await _finish(hass, result)

    assert result["type"] == FlowResultType.ABORT
    assert result["reason"] == "device_removed"
    assert result["description_placeholders"]["device"] == "Inverter (D8:B6:73:BF:4F:75)"  # named once


async def test_remove_one_battery_of_a_bank(
    hass: HomeAssistant, entry: MockConfigEntry, mqtt_mock: MqttMockHAClient
) -> None:
    """Units behind one Bluetooth module share a MAC: the form tells them apart by unit id and the
    request names the battery's Modbus ID."""
    bank = [
        {
            "mac_address": "C4:64:E3:00:00:30",
            "unit_id": unit_id,
            "modbus_id": modbus_id,
            "type": "renogy_battery",
            "name": f"Battery {modbus_id}",
            "origin": "command",
            "status": "online",
            "stats": {},
        }
        for unit_id, modbus_id in (("C464E3000030", 48), ("C464E3000030_49", 49))
    ]
    announce_gateway(hass, devices=[*bank, DEVICE_FROM_COMMAND])
    result = await _menu(hass, entry, "remove_device")
    assert select_options(result, "mac_address") == [
        "module:C4:64:E3:00:00:30",  # the whole module at once
        "C464E3000030",
        "C464E3000030_49",
        "D8:B6:73:BF:4F:75",
    ]

    labels = [o["label"] for o in result["data_schema"].schema["mac_address"].config["options"]]
    assert labels[2] == "Battery 49 (battery, C4:64:E3:00:00:30, Modbus id 49)"
    result = await _remove(hass, result, "C464E3000030_49")
    request = await next_command(mqtt_mock)
    assert request == {
        "command": "remove_device",
        "mac_address": "C4:64:E3:00:00:30",
        "modbus_id": 49,
        "transaction": request["transaction"],
    }
    respond(hass, request, data={"mac_address": "C4:64:E3:00:00:30", "modbus_id": 49, "unit_id": "C464E3000030_49"})
    result = await _finish(hass, result)
    assert result["type"] == FlowResultType.ABORT and result["reason"] == "device_removed"


async def test_remove_device_gateway_error(
    hass: HomeAssistant, entry: MockConfigEntry, mqtt_mock: MqttMockHAClient
) -> None:
    announce_gateway(hass, devices=[DEVICE_FROM_COMMAND])
    result = await _menu(hass, entry, "remove_device")
    result = await _remove(hass, result, "D8:B6:73:BF:4F:75")
    respond(hass, await next_command(mqtt_mock), error="device D8:B6:73:BF:4F:75 not found")

    result = await _finish(hass, result)

    assert result["type"] == FlowResultType.FORM
    assert result["step_id"] == "remove_device"
    assert result["errors"] == {"base": "gateway_error"}
    assert result["description_placeholders"]["error"] == "device D8:B6:73:BF:4F:75 not found"


async def test_remove_device_timeout(
    hass: HomeAssistant, entry: MockConfigEntry, mqtt_mock: MqttMockHAClient, short_timeout: None
) -> None:
    announce_gateway(hass, devices=[DEVICE_FROM_COMMAND])
    result = await _menu(hass, entry, "remove_device")
    result = await _remove(hass, result, "D8:B6:73:BF:4F:75")
    await next_command(mqtt_mock)

    result = await _finish(hass, result)

    assert result["errors"] == {"base": "no_response"}


async def test_remove_with_nothing_removable(hass: HomeAssistant, entry: MockConfigEntry) -> None:
    announce_gateway(hass, devices=[DEVICE_FROM_OPTIONS])

    result = await _menu(hass, entry, "remove_device")

    assert result["type"] == FlowResultType.ABORT
    assert result["reason"] == "no_removable_devices"


async def test_unload_while_waiting_ends_the_wait(
    hass: HomeAssistant, entry: MockConfigEntry, mqtt_mock: MqttMockHAClient
) -> None:
    announce_gateway(hass)
    result = await _menu(hass, entry, "add_device")
    result = await _step(hass, result, ADD_INPUT)
    await next_command(mqtt_mock)

    assert await hass.config_entries.async_unload(entry.entry_id)
    result = await _finish(hass, result)  # no timeout needed: unloading fails the wait at once

    assert result["type"] == FlowResultType.ABORT
    assert result["reason"] == "gateway_offline"


async def test_publish_failure_is_reported(
    hass: HomeAssistant, entry: MockConfigEntry, mqtt_mock: MqttMockHAClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    announce_gateway(hass)
    result = await _menu(hass, entry, "add_device")

    async def broken_publish(*args: Any, **kwargs: Any) -> None:
        raise gateway.HomeAssistantError("Cannot publish to topic 'blupow/gateway/command', MQTT is not enabled")

    monkeypatch.setattr(gateway.mqtt, "async_publish", broken_publish)
    result = await _step(hass, result, ADD_INPUT)
    if result["type"] == FlowResultType.SHOW_PROGRESS:  # eager tasks (2024.x on) have failed already
        result = await _finish(hass, result)

    assert result["errors"] == {"base": "send_failed"}
    assert "MQTT is not enabled" in result["description_placeholders"]["error"]

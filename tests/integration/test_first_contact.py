"""Adding a device says whether it was found (issue 15): the dialog waits for the gateway's first
contact with the new unit and reports "Found …", or "Not reachable now" with keep / do not add."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from conftest import (
    DEVICE_FROM_COMMAND,
    announce_gateway,
    assert_translated,
    commands,
    gateway_event,
    next_command,
    respond,
    set_gateway_state,
)
from homeassistant.core import HomeAssistant
from homeassistant.data_entry_flow import FlowResult, FlowResultType
from pytest_homeassistant_custom_component.common import MockConfigEntry, async_fire_mqtt_message
from pytest_homeassistant_custom_component.typing import MqttMockHAClient

from custom_components.blupow import config_flow

ADD = {"mac_address": "D8:B6:73:BF:4F:75", "type": "renogy_inverter", "name": "Inverter", "modbus_id": 32}
NOT_FOUND = "device D8:B6:73:BF:4F:75 not found (is it powered and in range?)"


async def _step(hass: HomeAssistant, result: FlowResult, user_input: dict[str, Any] | None = None) -> FlowResult:
    return assert_translated(await hass.config_entries.options.async_configure(result["flow_id"], user_input))


async def _submitted(hass: HomeAssistant, entry: MockConfigEntry) -> FlowResult:
    """The add form submitted: the spinner shows, the gateway has not answered yet."""
    announce_gateway(hass)
    result = assert_translated(await hass.config_entries.options.async_init(entry.entry_id))
    result = await _step(hass, result, {"next_step_id": "add_device"})
    result = await _step(hass, result, ADD)
    assert result["type"] == FlowResultType.SHOW_PROGRESS
    return result


async def _added(hass: HomeAssistant, entry: MockConfigEntry, mqtt_mock: MqttMockHAClient) -> FlowResult:
    """The gateway's answer in: the dialog now waits for first contact."""
    result = await _submitted(hass, entry)
    assert result["description_placeholders"]["timeout"] == f"{config_flow.FIRST_CONTACT_TIMEOUT:g}"
    respond(hass, await next_command(mqtt_mock), data={**DEVICE_FROM_COMMAND, "status": "pending"})
    await asyncio.sleep(0)
    return result


async def _finish(hass: HomeAssistant, result: FlowResult) -> FlowResult:
    await hass.async_block_till_done()
    return await _step(hass, result)


async def test_a_device_that_answers_is_reported_found(
    hass: HomeAssistant, entry: MockConfigEntry, mqtt_mock: MqttMockHAClient
) -> None:
    result = await _added(hass, entry, mqtt_mock)
    for garbage in ("not json", "[1]", json.dumps({"type": "device_connected", "mac_address": 5})):
        async_fire_mqtt_message(hass, "blupow/gateway/event", garbage, 1, False)
    gateway_event(hass, "device_connected", data={"model": "RNG-CTRL-RVR40", "serial": "1501FFFF"})

    result = await _finish(hass, result)

    assert result["type"] == FlowResultType.ABORT and result["reason"] == "device_found"
    assert result["description_placeholders"]["found"] == "RNG-CTRL-RVR40, serial 1501FFFF"
    assert len(commands(mqtt_mock)) == 1


async def test_first_contact_before_the_answer_counts(
    hass: HomeAssistant, entry: MockConfigEntry, mqtt_mock: MqttMockHAClient
) -> None:
    """The gateway polls right after saving: the event may overtake the answer on the way."""
    result = await _submitted(hass, entry)
    request = await next_command(mqtt_mock)
    gateway_event(hass, "device_connected", data={"model": "RIV1220PU-126"})
    respond(hass, request, data={**DEVICE_FROM_COMMAND, "status": "pending"})

    result = await _finish(hass, result)

    assert result["reason"] == "device_found"
    assert result["description_placeholders"]["found"] == "RIV1220PU-126"


async def test_an_unreachable_device_can_be_kept(
    hass: HomeAssistant, entry: MockConfigEntry, mqtt_mock: MqttMockHAClient
) -> None:
    result = await _added(hass, entry, mqtt_mock)
    gateway_event(hass, "device_failed", data={"error": NOT_FOUND})

    result = await _finish(hass, result)

    assert result["type"] == FlowResultType.MENU and result["step_id"] == "not_reachable"
    assert result["menu_options"] == ["keep_device", "undo_add"]
    assert result["description_placeholders"]["error"] == NOT_FOUND
    assert result["description_placeholders"]["device"] == "Inverter (D8:B6:73:BF:4F:75)"

    result = await _step(hass, result, {"next_step_id": "keep_device"})

    assert result["type"] == FlowResultType.ABORT and result["reason"] == "device_kept"
    assert result["description_placeholders"]["device"] == "Inverter (D8:B6:73:BF:4F:75)"
    assert [payload["command"] for payload, _, _ in commands(mqtt_mock)] == ["add_device"]  # nothing taken back


async def test_an_unreachable_device_can_be_taken_back(
    hass: HomeAssistant, entry: MockConfigEntry, mqtt_mock: MqttMockHAClient
) -> None:
    result = await _added(hass, entry, mqtt_mock)
    gateway_event(hass, "device_unavailable", data={"error": NOT_FOUND})
    result = await _finish(hass, result)
    assert result["step_id"] == "not_reachable"

    result = await _step(hass, result, {"next_step_id": "undo_add"})
    assert result["type"] == FlowResultType.SHOW_PROGRESS and result["progress_action"] == "undo_add"
    undo = await next_command(mqtt_mock, seen=1)
    # by its Modbus id: it names the unit even when its module carries others
    assert {k: undo[k] for k in ("command", "mac_address", "modbus_id")} == {
        "command": "remove_device",
        "mac_address": "D8:B6:73:BF:4F:75",
        "modbus_id": 32,
    }
    respond(hass, undo, data={"mac_address": "D8:B6:73:BF:4F:75", "modbus_id": 32, "unit_id": "D8B673BF4F75"})
    result = await _finish(hass, result)

    assert result["type"] == FlowResultType.ABORT and result["reason"] == "add_undone"
    assert result["description_placeholders"]["device"] == "Inverter (D8:B6:73:BF:4F:75)"


async def test_a_refused_undo_says_the_device_stays(
    hass: HomeAssistant, entry: MockConfigEntry, mqtt_mock: MqttMockHAClient
) -> None:
    result = await _added(hass, entry, mqtt_mock)
    gateway_event(hass, "device_failed", data={"error": NOT_FOUND})
    result = await _finish(hass, result)
    result = await _step(hass, result, {"next_step_id": "undo_add"})
    respond(hass, await next_command(mqtt_mock, seen=1), error="could not save the device registry (disk full)")
    result = await _finish(hass, result)

    assert result["type"] == FlowResultType.ABORT and result["reason"] == "undo_failed"
    assert result["description_placeholders"]["error"] == "could not save the device registry (disk full)"


async def test_no_word_from_the_device_in_time_is_not_reachable(
    hass: HomeAssistant, entry: MockConfigEntry, mqtt_mock: MqttMockHAClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(config_flow, "FIRST_CONTACT_TIMEOUT", 0.05)
    result = await _submitted(hass, entry)
    respond(hass, await next_command(mqtt_mock), data={**DEVICE_FROM_COMMAND, "status": "pending"})

    result = await _finish(hass, result)  # no event at all: the wait ends after the (shortened) bound

    assert result["step_id"] == "not_reachable"
    assert result["description_placeholders"]["error"] == "no answer within 0.05 seconds"


async def test_unloading_ends_the_wait_for_first_contact(
    hass: HomeAssistant, entry: MockConfigEntry, mqtt_mock: MqttMockHAClient
) -> None:
    result = await _added(hass, entry, mqtt_mock)

    assert await hass.config_entries.async_unload(entry.entry_id)
    result = await _finish(hass, result)  # no 60 s wait: unloading ends it at once

    assert result["type"] == FlowResultType.ABORT and result["reason"] == "gateway_offline"


async def test_the_gateway_going_offline_ends_the_wait(
    hass: HomeAssistant, entry: MockConfigEntry, mqtt_mock: MqttMockHAClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its last will: no first contact will come, so the dialog says the gateway is gone at once."""
    monkeypatch.setattr(config_flow, "FIRST_CONTACT_TIMEOUT", 3600)
    result = await _added(hass, entry, mqtt_mock)

    set_gateway_state(hass, "gateway", "offline")
    async with asyncio.timeout(5):  # not the hour of the bound
        result = await _finish(hass, result)

    assert result["type"] == FlowResultType.ABORT and result["reason"] == "gateway_offline"

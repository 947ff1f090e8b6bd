"""The spinner of a command always ends (issue 15: in 2 of 5 adds in a browser it never did).

Home Assistant tells the frontend once, with a "data_entry_flow_progressed" event, that a
progress step is over; the frontend subscribes to it only once it has drawn the spinner. An answer
that came in between went unheard. Now a quick answer comes with the step itself, and a flow left
at "progress done" (nobody fetched the result) says it again a little later.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from conftest import DEVICE_FROM_COMMAND, announce_gateway, assert_translated, next_command, respond
from homeassistant.core import HomeAssistant
from homeassistant.data_entry_flow import EVENT_DATA_ENTRY_FLOW_PROGRESSED, FlowResultType
from homeassistant.util import dt as dt_util
from pytest_homeassistant_custom_component.common import MockConfigEntry, async_capture_events, async_fire_time_changed
from pytest_homeassistant_custom_component.typing import MqttMockHAClient

from custom_components.blupow import config_flow

ADD = {"mac_address": "D8:B6:73:BF:4F:75", "type": "renogy_inverter"}


async def _add_form(hass: HomeAssistant, entry: MockConfigEntry) -> str:
    announce_gateway(hass)
    result = await hass.config_entries.options.async_init(entry.entry_id)
    result = await hass.config_entries.options.async_configure(result["flow_id"], {"next_step_id": "add_device"})
    assert result["step_id"] == "add_device"
    return str(result["flow_id"])


async def test_a_quick_answer_comes_with_the_step(
    hass: HomeAssistant, entry: MockConfigEntry, mqtt_mock: MqttMockHAClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No spinner at all: nothing for the browser to miss."""
    monkeypatch.setattr(config_flow, "QUICK_ANSWER", 1.0)
    flow_id = await _add_form(hass, entry)

    async def gateway_answers() -> None:
        request = await next_command(mqtt_mock)
        respond(hass, request, data={**DEVICE_FROM_COMMAND, "status": "pending"})

    answering = asyncio.create_task(gateway_answers())
    result = assert_translated(await hass.config_entries.options.async_configure(flow_id, ADD))
    await answering

    assert result["type"] == FlowResultType.ABORT and result["reason"] == "device_added"


async def test_a_browser_that_missed_the_end_is_told_again(
    hass: HomeAssistant, entry: MockConfigEntry, mqtt_mock: MqttMockHAClient
) -> None:
    progressed = async_capture_events(hass, EVENT_DATA_ENTRY_FLOW_PROGRESSED)
    flow_id = await _add_form(hass, entry)
    result = await hass.config_entries.options.async_configure(flow_id, ADD)
    assert result["type"] == FlowResultType.SHOW_PROGRESS
    respond(hass, await next_command(mqtt_mock), data={**DEVICE_FROM_COMMAND, "status": "pending"})
    await hass.async_block_till_done()
    told = len(progressed)
    assert told >= 1  # Home Assistant's own event, which a late subscriber never sees

    async_fire_time_changed(hass, dt_util.utcnow() + timedelta(seconds=1.5))
    await hass.async_block_till_done()
    assert len(progressed) == told + 1  # said again: nobody fetched the result yet
    assert progressed[-1].data == {"handler": entry.entry_id, "flow_id": flow_id, "refresh": True}

    result = await hass.config_entries.options.async_configure(flow_id)  # the browser fetches it now
    assert result["type"] == FlowResultType.ABORT and result["reason"] == "device_added"
    async_fire_time_changed(hass, dt_util.utcnow() + timedelta(seconds=30))
    await hass.async_block_till_done()
    assert len(progressed) == told + 1  # and no more once it did


async def test_nothing_is_said_after_the_dialog_was_closed(
    hass: HomeAssistant, entry: MockConfigEntry, mqtt_mock: MqttMockHAClient
) -> None:
    progressed = async_capture_events(hass, EVENT_DATA_ENTRY_FLOW_PROGRESSED)
    flow_id = await _add_form(hass, entry)
    await hass.config_entries.options.async_configure(flow_id, ADD)
    respond(hass, await next_command(mqtt_mock), data={**DEVICE_FROM_COMMAND, "status": "pending"})
    await hass.async_block_till_done()
    told = len(progressed)

    hass.config_entries.options.async_abort(flow_id)  # the X of the dialog
    async_fire_time_changed(hass, dt_util.utcnow() + timedelta(seconds=30))
    await hass.async_block_till_done()

    assert len(progressed) == told

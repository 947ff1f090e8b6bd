"""The spinner of a command always ends (issue 15: in 2 of 5 adds in a browser it never did).

Home Assistant tells the frontend once, with a "data_entry_flow_progressed" event, that a
progress step is over; the frontend subscribes to it only once it has drawn the spinner. An answer
that came in between went unheard. Now a quick answer comes with the step itself, and the end of a
spinner is not told before the browser has had LISTEN_GRACE to listen.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from conftest import DEVICE_FROM_COMMAND, announce_gateway, assert_translated, gateway_event, next_command, respond
from homeassistant.core import HomeAssistant
from homeassistant.data_entry_flow import EVENT_DATA_ENTRY_FLOW_PROGRESSED, FlowResultType
from homeassistant.util import dt as dt_util
from pytest_homeassistant_custom_component.common import MockConfigEntry, async_capture_events, async_fire_time_changed
from pytest_homeassistant_custom_component.typing import MqttMockHAClient

from custom_components.blupow import config_flow

ADD = {"mac_address": "D8:B6:73:BF:4F:75", "type": "renogy_inverter"}


async def _settle() -> None:
    """Let the loop run what is ready, without waiting for timers."""
    for _ in range(20):
        await asyncio.sleep(0)


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
        await asyncio.sleep(0)
        gateway_event(hass, "device_connected")

    answering = asyncio.create_task(gateway_answers())
    result = assert_translated(await hass.config_entries.options.async_configure(flow_id, ADD))
    await answering

    assert result["type"] == FlowResultType.ABORT and result["reason"] == "device_found"


async def test_the_end_is_told_only_once_the_browser_listens(
    hass: HomeAssistant, entry: MockConfigEntry, mqtt_mock: MqttMockHAClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An answer right after the spinner was drawn is reported after the grace, not before."""
    monkeypatch.setattr(config_flow, "LISTEN_GRACE", 2.0)
    progressed = async_capture_events(hass, EVENT_DATA_ENTRY_FLOW_PROGRESSED)
    flow_id = await _add_form(hass, entry)
    result = await hass.config_entries.options.async_configure(flow_id, ADD)
    assert result["type"] == FlowResultType.SHOW_PROGRESS
    respond(hass, await next_command(mqtt_mock), data={**DEVICE_FROM_COMMAND, "status": "pending"})
    await _settle()
    gateway_event(hass, "device_connected")
    await _settle()  # the answer is in; the task now waits out the grace (a timer, so no block_till_done)
    assert progressed == []  # the browser may not be listening yet: nothing said

    async_fire_time_changed(hass, dt_util.utcnow() + timedelta(seconds=2.5))
    await hass.async_block_till_done()
    assert [event.data for event in progressed] == [{"handler": entry.entry_id, "flow_id": flow_id, "refresh": True}]
    result = await hass.config_entries.options.async_configure(flow_id)  # the browser fetches it
    assert result["type"] == FlowResultType.ABORT and result["reason"] == "device_found"
    assert len(progressed) == 1  # said once: a second fetch would find the flow gone


async def test_closing_the_dialog_meanwhile_leaves_nothing_behind(
    hass: HomeAssistant, entry: MockConfigEntry, mqtt_mock: MqttMockHAClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(config_flow, "LISTEN_GRACE", 2.0)
    progressed = async_capture_events(hass, EVENT_DATA_ENTRY_FLOW_PROGRESSED)
    flow_id = await _add_form(hass, entry)
    await hass.config_entries.options.async_configure(flow_id, ADD)
    respond(hass, await next_command(mqtt_mock), data={**DEVICE_FROM_COMMAND, "status": "pending"})
    await _settle()
    gateway_event(hass, "device_connected")
    await _settle()

    hass.config_entries.options.async_abort(flow_id)  # the X of the dialog
    async_fire_time_changed(hass, dt_util.utcnow() + timedelta(seconds=30))
    await hass.async_block_till_done()

    assert progressed == []

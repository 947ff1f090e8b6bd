"""The gateways' devices on the BluPow integration page, and *Delete* on a device page
(custom_components/blupow/devices.py), through Home Assistant's own device registry and its
WebSocket command `config/device_registry/remove_config_entry` (what the device page calls)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from conftest import announce_gateway, next_command, respond
from homeassistant.core import HomeAssistant
from homeassistant.helpers import device_registry as dr
from homeassistant.setup import async_setup_component
from pytest_homeassistant_custom_component.common import MockConfigEntry
from pytest_homeassistant_custom_component.typing import MqttMockHAClient, WebSocketGenerator

INVERTER = {"mac_address": "D8:B6:73:BF:4F:75", "unit_id": "D8B673BF4F75", "type": "renogy_inverter",
            "name": "Inverter", "modbus_id": 32, "origin": "command", "status": "online", "stats": {}}  # fmt: skip
HUB = "C4:64:E3:38:3D:10"
BANK_UNITS = [
    {"mac_address": HUB, "unit_id": unit_id, "modbus_id": modbus_id, "type": "renogy_battery",
     "name": f"Battery {modbus_id}", "origin": "command", "status": "online", "stats": {}}
    for unit_id, modbus_id in (("C464E3383D10", 48), ("C464E3383D10_49", 49))
]  # fmt: skip
FROM_OPTIONS = {**INVERTER, "mac_address": "D8:B6:73:00:00:01", "unit_id": "D8B673000001", "origin": "options"}


def _mqtt_entry(hass: HomeAssistant) -> str:
    (entry,) = hass.config_entries.async_entries("mqtt")
    return entry.entry_id


async def _discovered(hass: HomeAssistant, identifier: str, name: str = "Device") -> dr.DeviceEntry:
    """A device as MQTT discovery creates it for the gateway (or for anything else)."""
    registry = dr.async_get(hass)
    device = registry.async_get_or_create(
        config_entry_id=_mqtt_entry(hass), identifiers={("mqtt", identifier)}, name=name
    )
    await hass.async_block_till_done()
    found = registry.async_get(device.id)
    assert found is not None
    return found


async def _remove(hass: HomeAssistant, ws: WebSocketGenerator, device: dr.DeviceEntry, entry_id: str) -> Any:
    """What the device page's Delete sends for the BluPow entry (without waiting for the answer)."""
    assert await async_setup_component(hass, "config", {})  # the device registry's WebSocket API
    client = await ws(hass)
    await client.send_json(
        {"id": 1, "type": "config/device_registry/remove_config_entry", "config_entry_id": entry_id,
         "device_id": device.id}
    )  # fmt: skip
    return client


async def test_the_gateways_devices_are_listed_under_blupow(
    hass: HomeAssistant, entry: MockConfigEntry, mqtt_mock: MqttMockHAClient
) -> None:
    inverter = await _discovered(hass, "blupow_D8B673BF4F75", "Inverter")
    gateway = await _discovered(hass, "blupow_gateway_gateway", "BluPow gateway")
    other = await _discovered(hass, "zigbee2mqtt_0x1234", "A lamp")

    assert entry.entry_id in inverter.config_entries and entry.entry_id in gateway.config_entries
    assert entry.entry_id not in other.config_entries  # not the gateway's
    listed = dr.async_entries_for_config_entry(dr.async_get(hass), entry.entry_id)
    assert {d.id for d in listed} == {inverter.id, gateway.id}


async def test_devices_discovered_before_the_entry_loaded_are_listed_too(
    hass: HomeAssistant, mqtt_mock: MqttMockHAClient
) -> None:
    earlier = await _discovered(hass, "blupow_D8B673BF4F75", "Inverter")
    config_entry = MockConfigEntry(domain="blupow", title="BluPow", data={}, unique_id="blupow")
    config_entry.add_to_hass(hass)
    assert await hass.config_entries.async_setup(config_entry.entry_id)
    await hass.async_block_till_done()

    device = dr.async_get(hass).async_get(earlier.id)
    assert device is not None and config_entry.entry_id in device.config_entries


async def test_a_device_the_gateway_cleared_goes_from_the_registry(
    hass: HomeAssistant, entry: MockConfigEntry, mqtt_mock: MqttMockHAClient
) -> None:
    """When MQTT lets the device go (the gateway cleared its discovery), BluPow does not keep it alive."""
    device = await _discovered(hass, "blupow_D8B673BF4F75", "Inverter")
    registry = dr.async_get(hass)
    registry.async_update_device(device.id, remove_config_entry_id=_mqtt_entry(hass))
    await hass.async_block_till_done()

    assert registry.async_get(device.id) is None


async def test_delete_on_the_device_page_removes_it_from_the_gateway(
    hass: HomeAssistant, entry: MockConfigEntry, mqtt_mock: MqttMockHAClient, hass_ws_client: WebSocketGenerator
) -> None:
    announce_gateway(hass, devices=[*BANK_UNITS, INVERTER])
    battery = await _discovered(hass, "blupow_C464E3383D10_49", "Battery 49")

    client = await _remove(hass, hass_ws_client, battery, entry.entry_id)
    request = await next_command(mqtt_mock)
    # a unit of a module carrying two: the request names its Modbus ID
    assert request == {
        "command": "remove_device",
        "mac_address": HUB,
        "modbus_id": 49,
        "transaction": request["transaction"],
    }
    respond(hass, request, data={"mac_address": HUB, "modbus_id": 49, "unit_id": "C464E3383D10_49"})
    answer = await client.receive_json()

    assert answer["success"], answer
    device = dr.async_get(hass).async_get(battery.id)
    assert device is not None and entry.entry_id not in device.config_entries
    # the next registry update (MQTT still holds it until the gateway's discovery clear) does not link it again
    dr.async_get(hass).async_update_device(battery.id, name_by_user="Old battery")
    await hass.async_block_till_done()
    device = dr.async_get(hass).async_get(battery.id)
    assert device is not None and entry.entry_id not in device.config_entries


async def test_delete_shows_the_gateways_refusal(
    hass: HomeAssistant, entry: MockConfigEntry, mqtt_mock: MqttMockHAClient, hass_ws_client: WebSocketGenerator
) -> None:
    announce_gateway(hass, devices=[FROM_OPTIONS])
    device = await _discovered(hass, "blupow_D8B673000001", "Inverter")

    client = await _remove(hass, hass_ws_client, device, entry.entry_id)
    request = await next_command(mqtt_mock)
    assert request["mac_address"] == "D8:B6:73:00:00:01" and "modbus_id" not in request
    refusal = "device D8:B6:73:00:00:01 is listed in the add-on options: remove it there"
    respond(hass, request, error=refusal)
    answer = await client.receive_json()

    assert not answer["success"]
    assert answer["error"]["message"] == f"Gateway gateway refused: {refusal}"
    still = dr.async_get(hass).async_get(device.id)
    assert still is not None and entry.entry_id in still.config_entries


@pytest.mark.parametrize(
    ("identifier", "words"),
    [("blupow_C464E3383D10_bank", "battery bank"), ("blupow_bank_house", "battery bank"),
     ("blupow_gateway_gateway", "BluPow gateway itself")],
)  # fmt: skip
async def test_a_bank_or_the_gateway_is_not_deleted_but_explained(
    hass: HomeAssistant,
    entry: MockConfigEntry,
    mqtt_mock: MqttMockHAClient,
    hass_ws_client: WebSocketGenerator,
    identifier: str,
    words: str,
) -> None:
    announce_gateway(hass, devices=BANK_UNITS)
    device = await _discovered(hass, identifier)

    client = await _remove(hass, hass_ws_client, device, entry.entry_id)
    answer = await client.receive_json()

    assert not answer["success"] and words in answer["error"]["message"]
    await asyncio.sleep(0)
    assert not mqtt_mock.async_publish.call_args_list or all(
        call[0][0] != "blupow/gateway/command" for call in mqtt_mock.async_publish.call_args_list
    )

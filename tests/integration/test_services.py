"""Services blupow.add_device and blupow.remove_device: they return only once the gateway answered."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import yaml
from conftest import DEVICE_FROM_COMMAND, EN, INTEGRATION_DIR, announce_gateway, commands, next_command, respond
from homeassistant.core import HomeAssistant
from homeassistant.exceptions import HomeAssistantError, ServiceValidationError
from homeassistant.helpers.selector import validate_selector
from homeassistant.helpers.service import async_get_all_descriptions
from pytest_homeassistant_custom_component.common import MockConfigEntry
from pytest_homeassistant_custom_component.typing import MqttMockHAClient

from custom_components.blupow import gateway
from custom_components.blupow.const import DOMAIN
from custom_components.blupow.services import _MESSAGES


def _call(hass: HomeAssistant, service: str, data: dict[str, Any], response: bool = True) -> asyncio.Task[Any]:
    """Start a service call; it waits for the gateway, so the test answers while it runs."""
    return hass.async_create_task(
        hass.services.async_call(DOMAIN, service, data, blocking=True, return_response=response)
    )


async def test_services_are_registered_with_translations(hass: HomeAssistant, entry: MockConfigEntry) -> None:
    described = yaml.safe_load((INTEGRATION_DIR / "services.yaml").read_text(encoding="utf-8"))
    assert set(described) == {"add_device", "remove_device"}
    # Home Assistant parses services.yaml when it loads it (an unreadable file gives no descriptions);
    # the selectors are checked with its own validator, as hassfest would.
    loaded = (await async_get_all_descriptions(hass))[DOMAIN]
    for service, spec in described.items():
        assert hass.services.has_service(DOMAIN, service)
        assert set(loaded[service]["fields"]) == set(spec["fields"])
        assert set(EN["services"][service]["fields"]) == set(spec["fields"])
        for field in spec["fields"].values():
            validate_selector(field["selector"])
    for key, message in _MESSAGES.items():
        assert EN["exceptions"][key]["message"] == message


async def test_add_device(hass: HomeAssistant, entry: MockConfigEntry, mqtt_mock: MqttMockHAClient) -> None:
    announce_gateway(hass)
    config = {"fields": [{"key": "voltage", "register": 256}]}
    call = _call(
        hass,
        "add_device",
        {"mac_address": "aa:bb:cc:dd:ee:ff", "type": "generic_modbus", "modbus_id": "7", "config": config},
    )

    request = await next_command(mqtt_mock)
    assert request == {
        "command": "add_device",
        "mac_address": "AA:BB:CC:DD:EE:FF",
        "type": "generic_modbus",
        "modbus_id": 7,
        "config": config,
        "transaction": request["transaction"],
    }
    assert not call.done()
    record = {"mac_address": "AA:BB:CC:DD:EE:FF", "type": "generic_modbus", "name": "Custom EEFF"}
    respond(hass, request, data=record)

    assert await call == record


async def test_add_device_config_as_json_text(
    hass: HomeAssistant, entry: MockConfigEntry, mqtt_mock: MqttMockHAClient
) -> None:
    announce_gateway(hass)
    call = _call(
        hass,
        "add_device",
        {"mac_address": "AABBCCDDEEFF", "type": "generic_modbus", "config": '{"fields": []}'},
        response=False,
    )
    request = await next_command(mqtt_mock)
    assert request["config"] == {"fields": []}
    respond(hass, request, data={"mac_address": "AA:BB:CC:DD:EE:FF"})

    assert await call is None


async def test_add_device_gateway_error_word_for_word(
    hass: HomeAssistant, entry: MockConfigEntry, mqtt_mock: MqttMockHAClient
) -> None:
    announce_gateway(hass)
    call = _call(hass, "add_device", {"mac_address": "D8:B6:73:BF:4F:75", "type": "renogy_inverter", "variant": "x"})
    error = "unknown variant 'x' for renogy_inverter (known: none)"
    respond(hass, await next_command(mqtt_mock), error=error)

    with pytest.raises(ServiceValidationError) as caught:
        await call

    assert caught.value.translation_key == "gateway_error"
    assert caught.value.translation_placeholders == {"error": error}
    assert str(caught.value) == f"The gateway refused the request: {error}"


async def test_add_device_timeout(
    hass: HomeAssistant, entry: MockConfigEntry, mqtt_mock: MqttMockHAClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gateway, "COMMAND_TIMEOUT", 0.05)
    announce_gateway(hass)
    call = _call(hass, "add_device", {"mac_address": "D8:B6:73:BF:4F:75", "type": "renogy_inverter"})

    with pytest.raises(HomeAssistantError) as caught:
        await call

    assert not isinstance(caught.value, ServiceValidationError)  # not the user's fault
    assert caught.value.translation_key == "no_response"
    assert str(caught.value) == "BluPow gateway 'gateway' did not answer within 0.05 seconds"
    assert len(commands(mqtt_mock)) == 1


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"mac_address": "xyz", "type": "renogy_battery"}, "invalid_mac"),
        ({"mac_address": "AABBCCDDEEFF", "type": "generic_modbus", "config": "{bad"}, "invalid_config"),
        ({"mac_address": "AABBCCDDEEFF", "type": "generic_modbus", "config": "[]"}, "invalid_config"),
    ],
)
async def test_add_device_invalid_input_is_not_sent(
    hass: HomeAssistant, entry: MockConfigEntry, mqtt_mock: MqttMockHAClient, data: dict[str, Any], key: str
) -> None:
    announce_gateway(hass)

    with pytest.raises(ServiceValidationError) as caught:
        await hass.services.async_call(DOMAIN, "add_device", data, blocking=True)

    assert caught.value.translation_key == key
    assert commands(mqtt_mock) == []


async def test_gateway_selection(hass: HomeAssistant, entry: MockConfigEntry, mqtt_mock: MqttMockHAClient) -> None:
    data = {"mac_address": "D8:B6:73:BF:4F:75"}
    with pytest.raises(ServiceValidationError) as caught:
        await hass.services.async_call(DOMAIN, "remove_device", data, blocking=True)
    assert caught.value.translation_key == "no_gateway"

    announce_gateway(hass, "gateway")
    announce_gateway(hass, "garage", devices=[DEVICE_FROM_COMMAND])
    with pytest.raises(ServiceValidationError) as caught:
        await hass.services.async_call(DOMAIN, "remove_device", data, blocking=True)
    assert caught.value.translation_key == "gateway_id_required"
    assert str(caught.value) == "Several BluPow gateways are online (garage, gateway): set gateway_id"

    for unknown in ("attic", "GARAGE"):
        with pytest.raises(ServiceValidationError) as caught:
            await hass.services.async_call(DOMAIN, "remove_device", {**data, "gateway_id": unknown}, blocking=True)
        assert caught.value.translation_key == "gateway_offline"
    assert mqtt_mock.async_publish.call_count == 0

    call = _call(hass, "remove_device", {**data, "gateway_id": "garage"})
    request = await next_command(mqtt_mock, "garage")
    assert request == {
        "command": "remove_device",
        "mac_address": "D8:B6:73:BF:4F:75",
        "transaction": request["transaction"],
    }
    respond(hass, request, gateway_id="garage", data={"mac_address": "D8:B6:73:BF:4F:75"})
    assert await call == {"mac_address": "D8:B6:73:BF:4F:75"}
    assert commands(mqtt_mock, "gateway") == []


async def test_remove_device_gateway_error(
    hass: HomeAssistant, entry: MockConfigEntry, mqtt_mock: MqttMockHAClient
) -> None:
    announce_gateway(hass, devices=[DEVICE_FROM_COMMAND])
    call = _call(hass, "remove_device", {"mac_address": "C4-64-E3-38-3D-0E"})
    request = await next_command(mqtt_mock)
    assert request["mac_address"] == "C4:64:E3:38:3D:0E"
    respond(hass, request, error="device C4:64:E3:38:3D:0E was added in the add-on options; remove it there")

    with pytest.raises(ServiceValidationError, match=r"remove it there$"):
        await call


async def test_services_without_a_loaded_entry(hass: HomeAssistant) -> None:
    # No MQTT: the entry waits in setup-retry, the services exist and explain.
    config_entry = MockConfigEntry(domain=DOMAIN, data={}, unique_id=DOMAIN)
    config_entry.add_to_hass(hass)
    await hass.config_entries.async_setup(config_entry.entry_id)
    await hass.async_block_till_done()

    with pytest.raises(ServiceValidationError) as caught:
        await hass.services.async_call(DOMAIN, "remove_device", {"mac_address": "AABBCCDDEEFF"}, blocking=True)

    assert caught.value.translation_key == "not_loaded"


async def test_gateway_offline_while_waiting(
    hass: HomeAssistant, entry: MockConfigEntry, mqtt_mock: MqttMockHAClient
) -> None:
    """Unloading the entry ends a pending call at once instead of after the timeout."""
    announce_gateway(hass)
    call = _call(hass, "remove_device", {"mac_address": "AABBCCDDEEFF"})
    await next_command(mqtt_mock)

    assert await hass.config_entries.async_unload(entry.entry_id)

    with pytest.raises(ServiceValidationError) as caught:
        await asyncio.wait_for(call, 1)
    assert caught.value.translation_key == "gateway_offline"

"""Entry set-up, unload and reload; the live gateway registry; shared input checks; packaging files."""

from __future__ import annotations

import json
import logging
import struct

import pytest
from conftest import (
    DEVICE_FROM_COMMAND,
    EN,
    INTEGRATION_DIR,
    announce_gateway,
    gateway_info,
    next_command,
    set_gateway_state,
)
from homeassistant.config_entries import ConfigEntryState
from homeassistant.core import HomeAssistant
from pytest_homeassistant_custom_component.common import MockConfigEntry, async_fire_mqtt_message
from pytest_homeassistant_custom_component.typing import MqttMockHAClient

from custom_components.blupow import gateway as gateway_module
from custom_components.blupow.const import DOMAIN
from custom_components.blupow.gateway import command_timeout, get_hub
from custom_components.blupow.validation import InvalidConfigError, decode_json, normalize_mac, parse_config


async def test_setup_follows_gateways(hass: HomeAssistant, entry: MockConfigEntry) -> None:
    assert entry.state == ConfigEntryState.LOADED
    hub = get_hub(hass)
    assert hub is not None
    assert hub.gateways == {}

    announce_gateway(hass, devices=[DEVICE_FROM_COMMAND])

    gw = hub.gateways["gateway"]
    assert gw.online
    assert gw.info == gateway_info()
    assert gw.devices == [DEVICE_FROM_COMMAND]
    assert [t["type"] for t in gw.supported_types][:2] == ["renogy_battery", "renogy_charge_controller"]
    assert hub.online_gateways() == [gw]

    set_gateway_state(hass, "gateway", "offline")  # the last will
    assert not gw.online
    assert hub.online_gateways() == []


async def test_setup_retries_without_mqtt(hass: HomeAssistant) -> None:
    config_entry = MockConfigEntry(domain=DOMAIN, data={}, unique_id=DOMAIN)
    config_entry.add_to_hass(hass)

    await hass.config_entries.async_setup(config_entry.entry_id)
    await hass.async_block_till_done()

    assert config_entry.state == ConfigEntryState.SETUP_RETRY
    assert get_hub(hass) is None


async def test_unload_and_reload(hass: HomeAssistant, entry: MockConfigEntry) -> None:
    old_hub = get_hub(hass)
    assert old_hub is not None
    announce_gateway(hass)

    assert await hass.config_entries.async_unload(entry.entry_id)
    await hass.async_block_till_done()
    assert entry.state == ConfigEntryState.NOT_LOADED
    assert get_hub(hass) is None

    # Unsubscribed: the old registry no longer changes.
    announce_gateway(hass, "garage")
    assert "garage" not in old_hub.gateways

    assert await hass.config_entries.async_setup(entry.entry_id)
    await hass.async_block_till_done()
    new_hub = get_hub(hass)
    assert entry.state == ConfigEntryState.LOADED
    assert new_hub is not None
    assert new_hub is not old_hub
    set_gateway_state(hass, "garage", "offline")
    assert new_hub.gateways["garage"].state == "offline"

    assert await hass.config_entries.async_reload(entry.entry_id)
    await hass.async_block_till_done()
    assert entry.state == ConfigEntryState.LOADED
    assert get_hub(hass) not in (None, new_hub)


async def test_registry_ignores_what_is_not_a_gateway(
    hass: HomeAssistant, entry: MockConfigEntry, caplog: pytest.LogCaptureFixture
) -> None:
    hub = get_hub(hass)
    assert hub is not None

    # A device's retained values share the `blupow/+/state` filter.
    async_fire_mqtt_message(hass, "blupow/D8B673BF4F75/state", json.dumps({"state": "online", "soc": 80}), 0, True)
    async_fire_mqtt_message(hass, "blupow/gateway/state", "not json", 1, True)
    async_fire_mqtt_message(hass, "blupow/gateway/devices", json.dumps({"not": "a list"}), 1, True)
    with caplog.at_level(logging.WARNING):
        async_fire_mqtt_message(hass, "blupow/gateway/info", "[1, 2]", 1, True)
    async_fire_mqtt_message(hass, "blupow/gateway/response", json.dumps({"status": "ok"}), 1, False)
    async_fire_mqtt_message(hass, "blupow/gateway/response", "garbage", 1, False)

    assert "D8B673BF4F75" not in hub.gateways
    assert "malformed info message from BluPow gateway gateway" in caplog.text
    assert all(not gw.online for gw in hub.gateways.values())

    # Malformed entries of a device list are dropped, the rest kept.
    announce_gateway(hass, devices=[DEVICE_FROM_COMMAND, {"mac_address": 5}, "x"], retain=False)
    assert hub.gateways["gateway"].devices == [DEVICE_FROM_COMMAND]


async def test_state_changes_are_logged_once(
    hass: HomeAssistant, entry: MockConfigEntry, caplog: pytest.LogCaptureFixture
) -> None:
    announce_gateway(hass)
    with caplog.at_level(logging.INFO, logger="custom_components.blupow"):
        set_gateway_state(hass, "gateway", "offline")
        set_gateway_state(hass, "gateway", "offline")
        set_gateway_state(hass, "gateway", "online")

    assert caplog.text.count("BluPow gateway gateway is now offline") == 1
    assert caplog.text.count("BluPow gateway gateway is now online") == 1


async def test_cleared_info_forgets_the_gateway(hass: HomeAssistant, entry: MockConfigEntry) -> None:
    hub = get_hub(hass)
    assert hub is not None
    announce_gateway(hass, "garage")
    assert "garage" in hub.gateways

    async_fire_mqtt_message(hass, "blupow/garage/info", "", 1, False)
    async_fire_mqtt_message(hass, "blupow/never-seen/info", "", 1, False)

    assert "garage" not in hub.gateways
    assert "never-seen" not in hub.gateways


async def test_supported_types_tolerates_malformed_info(hass: HomeAssistant, entry: MockConfigEntry) -> None:
    hub = get_hub(hass)
    assert hub is not None
    announce_gateway(hass, info=gateway_info(supported_types="nope"))
    assert hub.gateways["gateway"].supported_types == []

    async_fire_mqtt_message(
        hass,
        "blupow/gateway/info",
        json.dumps(gateway_info(supported_types=[{"type": "renogy_dcc"}, {"type": 3}, "x"])),
        1,
        False,
    )
    assert hub.gateways["gateway"].supported_types == [{"type": "renogy_dcc"}]
    assert hub.gateways["gateway"].type_info("renogy_dcc") == {"type": "renogy_dcc"}
    assert hub.gateways["gateway"].type_info("renogy_battery") is None


async def test_non_ok_answer_without_error_text(
    hass: HomeAssistant, entry: MockConfigEntry, mqtt_mock: MqttMockHAClient
) -> None:
    announce_gateway(hass)
    hub = get_hub(hass)
    assert hub is not None
    task = hass.async_create_task(hub.async_send_command("gateway", "health_check"))
    request = await next_command(mqtt_mock)
    response = {"command": "health_check", "transaction": request["transaction"], "status": "weird", "data": {}}
    async_fire_mqtt_message(hass, "blupow/gateway/response", json.dumps(response), 1, False)

    with pytest.raises(gateway_module.GatewayCommandError, match=r"^status 'weird'$"):
        await task


async def test_ok_answer_with_non_object_data(
    hass: HomeAssistant, entry: MockConfigEntry, mqtt_mock: MqttMockHAClient
) -> None:
    announce_gateway(hass)
    hub = get_hub(hass)
    assert hub is not None
    task = hass.async_create_task(gateway_module.async_send_command(hass, hub.gateways["gateway"], "poll_now"))
    request = await next_command(mqtt_mock)
    response = {"command": "poll_now", "transaction": request["transaction"], "status": "ok", "data": [1]}
    async_fire_mqtt_message(hass, "blupow/gateway/response", json.dumps(response), 1, False)

    assert await task == {}


async def test_sending_needs_an_online_gateway(hass: HomeAssistant, mqtt_mock: MqttMockHAClient) -> None:
    # Not loaded at all.
    with pytest.raises(gateway_module.GatewayUnavailableError):
        await gateway_module.async_send_command(hass, "gateway", "health_check")

    config_entry = MockConfigEntry(domain=DOMAIN, data={}, unique_id=DOMAIN)
    config_entry.add_to_hass(hass)
    assert await hass.config_entries.async_setup(config_entry.entry_id)
    await hass.async_block_till_done()
    announce_gateway(hass, "attic", state="offline")
    for gateway_id in ("attic", "unknown"):
        with pytest.raises(gateway_module.GatewayUnavailableError, match=f"'{gateway_id}' is not online"):
            await gateway_module.async_send_command(hass, gateway_id, "health_check")
    assert mqtt_mock.async_publish.call_count == 0


def test_command_timeout() -> None:
    assert command_timeout("add_device", {}) == gateway_module.COMMAND_TIMEOUT
    assert command_timeout("scan", {"seconds": 7}) == gateway_module.COMMAND_TIMEOUT + 7
    assert command_timeout("scan", {"seconds": "x"}) == gateway_module.COMMAND_TIMEOUT + 5


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("D8:B6:73:BF:4F:75", "D8:B6:73:BF:4F:75"),
        (" d8:b6:73:bf:4f:75 ", "D8:B6:73:BF:4F:75"),
        ("d8-b6-73-bf-4f-75", "D8:B6:73:BF:4F:75"),
        ("d8b673bf4f75", "D8:B6:73:BF:4F:75"),
        ("D8:B6:73-BF:4F:75", None),
        ("D8:B6:73:BF:4F", None),
        ("D8:B6:73:BF:4F:75:00", None),
        ("D8:B6:73:BF:4F:7G", None),
        ("D8.B6.73.BF.4F.75", None),
        ("", None),
    ],
)
def test_normalize_mac(text: str, expected: str | None) -> None:
    assert normalize_mac(text) == expected


def test_parse_config() -> None:
    assert parse_config('{"fields": []}') == {"fields": []}
    assert parse_config({"fields": []}) == {"fields": []}
    with pytest.raises(InvalidConfigError, match=r"^invalid JSON: Expecting"):
        parse_config("{")
    with pytest.raises(InvalidConfigError, match="JSON object"):
        parse_config("3")


def test_decode_json() -> None:
    assert decode_json(b'{"a": 1}') == {"a": 1}
    assert decode_json(b"\xff\xfe") is None
    assert decode_json("  ") is None
    assert decode_json("{") is None


def test_manifest() -> None:
    manifest = json.loads((INTEGRATION_DIR / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["domain"] == DOMAIN
    assert manifest["mqtt"] == ["blupow/+/info"]
    assert manifest["dependencies"] == ["mqtt"]
    assert manifest["single_config_entry"] is True
    assert manifest["config_flow"] is True
    assert manifest["version"] == "0.2.0"
    for key in ("name", "codeowners", "documentation", "issue_tracker", "iot_class", "integration_type"):
        assert manifest[key]
    hacs = json.loads((INTEGRATION_DIR.parents[1] / "hacs.json").read_text(encoding="utf-8"))
    assert hacs["homeassistant"] == "2024.3.0"


def test_translations_match_strings() -> None:
    strings = json.loads((INTEGRATION_DIR / "strings.json").read_text(encoding="utf-8"))
    assert strings == EN


def test_brand_icon_is_a_square_png() -> None:
    data = (INTEGRATION_DIR / "brand" / "icon.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert width == height
    assert width in (256, 128)

"""Diagnostics: gateway info, device list and poll stats, with every credential redacted."""

from __future__ import annotations

import json

from conftest import DEVICE_FROM_COMMAND, announce_gateway, gateway_info
from homeassistant.core import HomeAssistant
from homeassistant.setup import async_setup_component
from pytest_homeassistant_custom_component.common import MockConfigEntry
from pytest_homeassistant_custom_component.typing import ClientSessionGenerator

from custom_components.blupow.diagnostics import async_get_config_entry_diagnostics

REDACTED = "**REDACTED**"


def _leaky_info() -> dict:
    """An info payload that (wrongly) carries credentials, to prove none reaches diagnostics."""
    info = gateway_info()
    info["settings"]["mqtt"].update(password="hunter2-secret", username="addons-user")
    info["settings"]["token"] = "tok-123456"
    return info


async def test_diagnostics_redacts_credentials(hass: HomeAssistant, entry: MockConfigEntry) -> None:
    device = {**DEVICE_FROM_COMMAND, "config": {"password": "dev-pass-1"}}
    announce_gateway(hass, info=_leaky_info(), devices=[device])
    announce_gateway(hass, "attic", state="offline")

    result = await async_get_config_entry_diagnostics(hass, entry)

    text = json.dumps(result)
    for secret in ("hunter2-secret", "addons-user", "tok-123456", "dev-pass-1"):
        assert secret not in text
    gw = result["gateways"]["gateway"]
    assert gw["online"] is True
    assert gw["state"] == "online"
    assert gw["info"]["settings"]["mqtt"] == {
        "host": "core-mosquitto",
        "port": 1883,
        "username": REDACTED,
        "password": REDACTED,
        "tls": False,
    }
    assert gw["info"]["settings"]["token"] == REDACTED
    assert gw["info"]["supported_types"][0]["type"] == "renogy_battery"
    assert gw["devices"][0]["stats"] == DEVICE_FROM_COMMAND["stats"]
    assert gw["devices"][0]["config"] == {"password": REDACTED}
    assert result["gateways"]["attic"]["online"] is False
    assert result["entry"] == {"title": "BluPow", "data": {}, "options": {}}


async def test_diagnostics_over_http(
    hass: HomeAssistant, entry: MockConfigEntry, hass_client: ClientSessionGenerator
) -> None:
    """The platform is found by Home Assistant's diagnostics integration (download button)."""
    assert await async_setup_component(hass, "diagnostics", {})
    await hass.async_block_till_done()
    announce_gateway(hass, info=_leaky_info())
    client = await hass_client()

    response = await client.get(f"/api/diagnostics/config_entry/{entry.entry_id}")

    assert response.status == 200
    body = await response.json()
    assert "hunter2-secret" not in json.dumps(body)
    assert body["data"]["gateways"]["gateway"]["info"]["settings"]["mqtt"]["password"] == REDACTED


async def test_diagnostics_when_not_loaded(hass: HomeAssistant) -> None:
    config_entry = MockConfigEntry(domain="blupow", title="BluPow", data={})

    result = await async_get_config_entry_diagnostics(hass, config_entry)

    assert result == {"entry": {"title": "BluPow", "data": {}, "options": {}}, "gateways": {}}

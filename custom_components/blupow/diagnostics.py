"""Diagnostics: what the integration knows about each gateway (info, device list, poll stats)."""

from __future__ import annotations

from typing import Any

from homeassistant.components.diagnostics import async_redact_data
from homeassistant.config_entries import ConfigEntry
from homeassistant.core import HomeAssistant

from .gateway import get_hub

# The gateway never sends its MQTT password, but diagnostics get pasted into public issues:
# redact every key that could hold a credential, wherever it appears (settings.mqtt, devices, ...).
TO_REDACT = {
    "password",
    "mqtt_password",
    "username",
    "mqtt_username",
    "user",
    "token",
    "access_token",
    "api_key",
    "secret",
}


async def async_get_config_entry_diagnostics(hass: HomeAssistant, entry: ConfigEntry) -> dict[str, Any]:
    hub = get_hub(hass)
    gateways = {
        gateway.gateway_id: {
            "online": gateway.online,
            "state": gateway.state,
            "info": gateway.info,
            "devices": gateway.devices,
        }
        for gateway in (hub.gateways.values() if hub else [])
    }
    data = {
        "entry": {"title": entry.title, "data": dict(entry.data), "options": dict(entry.options)},
        "gateways": gateways,
    }
    return async_redact_data(data, TO_REDACT)

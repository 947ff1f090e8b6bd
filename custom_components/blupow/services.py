"""Services `blupow.add_device` and `blupow.remove_device` (registered in async_setup)."""

from __future__ import annotations

from typing import Any

import voluptuous as vol
from homeassistant.core import HomeAssistant, ServiceCall, ServiceResponse, SupportsResponse, callback
from homeassistant.exceptions import HomeAssistantError, ServiceValidationError
from homeassistant.helpers import config_validation as cv

from .const import (
    CONF_CONFIG,
    CONF_GATEWAY_ID,
    CONF_MAC_ADDRESS,
    CONF_MODBUS_ID,
    CONF_NAME,
    CONF_TYPE,
    CONF_VARIANT,
    DOMAIN,
    SERVICE_ADD_DEVICE,
    SERVICE_REMOVE_DEVICE,
)
from .gateway import (
    Gateway,
    GatewayCommandError,
    GatewayNoResponseError,
    GatewayUnavailableError,
    async_send_command,
    get_hub,
)
from .validation import InvalidConfigError, normalize_mac, parse_config

ADD_DEVICE_SCHEMA = vol.Schema(
    {
        vol.Required(CONF_MAC_ADDRESS): cv.string,
        vol.Required(CONF_TYPE): cv.string,
        vol.Optional(CONF_NAME): cv.string,
        vol.Optional(CONF_MODBUS_ID): vol.All(vol.Coerce(int), vol.Range(min=0, max=255)),
        vol.Optional(CONF_VARIANT): cv.string,
        # An object (YAML mapping) or the same as JSON text.
        vol.Optional(CONF_CONFIG): vol.Any(dict, cv.string),
        vol.Optional(CONF_GATEWAY_ID): cv.string,
    }
)
REMOVE_DEVICE_SCHEMA = vol.Schema(
    {
        vol.Required(CONF_MAC_ADDRESS): cv.string,
        vol.Optional(CONF_GATEWAY_ID): cv.string,
    }
)


@callback
def async_register_services(hass: HomeAssistant) -> None:
    # ServiceCall has no `hass` attribute before 2024.10, so the handlers get it bound here.
    async def add_device(call: ServiceCall) -> ServiceResponse:
        return await _async_add_device(hass, call)

    async def remove_device(call: ServiceCall) -> ServiceResponse:
        return await _async_remove_device(hass, call)

    hass.services.async_register(DOMAIN, SERVICE_ADD_DEVICE, add_device, ADD_DEVICE_SCHEMA, SupportsResponse.OPTIONAL)
    hass.services.async_register(
        DOMAIN, SERVICE_REMOVE_DEVICE, remove_device, REMOVE_DEVICE_SCHEMA, SupportsResponse.OPTIONAL
    )


async def _async_add_device(hass: HomeAssistant, call: ServiceCall) -> ServiceResponse:
    payload: dict[str, Any] = {
        CONF_MAC_ADDRESS: _mac(call.data[CONF_MAC_ADDRESS]),
        CONF_TYPE: call.data[CONF_TYPE],
    }
    for key in (CONF_NAME, CONF_MODBUS_ID, CONF_VARIANT):
        if key in call.data:
            payload[key] = call.data[key]
    if CONF_CONFIG in call.data:
        try:
            payload[CONF_CONFIG] = parse_config(call.data[CONF_CONFIG])
        except InvalidConfigError as err:
            raise _validation_error("invalid_config", error=str(err)) from err
    return await _async_call(hass, call, SERVICE_ADD_DEVICE, payload)


async def _async_remove_device(hass: HomeAssistant, call: ServiceCall) -> ServiceResponse:
    payload = {CONF_MAC_ADDRESS: _mac(call.data[CONF_MAC_ADDRESS])}
    return await _async_call(hass, call, SERVICE_REMOVE_DEVICE, payload)


async def _async_call(hass: HomeAssistant, call: ServiceCall, command: str, payload: dict[str, Any]) -> ServiceResponse:
    """Send to the chosen gateway and wait: the call only returns once the gateway agreed."""
    gateway = _select_gateway(hass, call.data.get(CONF_GATEWAY_ID))
    try:
        data = await async_send_command(hass, gateway, command, payload)
    except GatewayCommandError as err:
        raise _validation_error("gateway_error", error=err.error) from err
    except GatewayNoResponseError as err:
        raise HomeAssistantError(
            str(err),
            translation_domain=DOMAIN,
            translation_key="no_response",
            translation_placeholders={CONF_GATEWAY_ID: gateway.gateway_id, "timeout": f"{err.timeout:g}"},
        ) from err
    except GatewayUnavailableError as err:
        raise _validation_error("gateway_offline", gateway_id=gateway.gateway_id) from err
    return data if call.return_response else None


def _mac(value: str) -> str:
    mac = normalize_mac(value)
    if mac is None:
        raise _validation_error("invalid_mac", mac_address=value)
    return mac


def _select_gateway(hass: HomeAssistant, gateway_id: str | None) -> Gateway:
    """The named gateway, or the only one online (a gateway_id is needed when there are several)."""
    hub = get_hub(hass)
    if hub is None:
        raise _validation_error("not_loaded")
    online = hub.online_gateways()
    if gateway_id is not None:
        gateway = hub.gateways.get(gateway_id)
        if gateway is None or not gateway.online:
            raise _validation_error("gateway_offline", gateway_id=gateway_id)
        return gateway
    if not online:
        raise _validation_error("no_gateway")
    if len(online) > 1:
        raise _validation_error("gateway_id_required", gateways=", ".join(gw.gateway_id for gw in online))
    return online[0]


# English texts of the exception translations (strings.json "exceptions"), used as the message too
# so that str(err) reads the same on every Home Assistant version.
_MESSAGES = {
    "invalid_mac": "'{mac_address}' is not a MAC address (expected AA:BB:CC:DD:EE:FF)",
    "invalid_config": "The device config is not valid: {error}",
    "gateway_error": "The gateway refused the request: {error}",
    "gateway_offline": "BluPow gateway '{gateway_id}' is not online",
    "no_gateway": "No BluPow gateway is online",
    "gateway_id_required": "Several BluPow gateways are online ({gateways}): set gateway_id",
    "not_loaded": "The BluPow integration is not set up",
}


def _validation_error(key: str, **placeholders: str) -> ServiceValidationError:
    return ServiceValidationError(
        _MESSAGES[key].format(**placeholders),
        translation_domain=DOMAIN,
        translation_key=key,
        translation_placeholders=placeholders,
    )

"""The gateways' devices on the BluPow integration page, and *Delete* on a device page.

The gateway creates its devices through MQTT discovery, so they belong to the MQTT config entry
(identifiers `("mqtt", "blupow_<unit id>")`). This module also puts every such device under the
BluPow config entry, so the integration page lists them, and takes it off again once MQTT let the
device go (HA deletes a device that belongs to no entry any more). *Delete* on a device page asks
the gateway to remove the unit and shows the gateway's refusal word for word.
"""

from __future__ import annotations

import logging
from typing import Any

from homeassistant.config_entries import ConfigEntry
from homeassistant.const import EVENT_HOMEASSISTANT_STARTED
from homeassistant.core import CALLBACK_TYPE, CoreState, Event, HomeAssistant, callback
from homeassistant.exceptions import HomeAssistantError
from homeassistant.helpers import device_registry as dr

from .gateway import BluPowError, Gateway, GatewayCommandError, async_send_command, get_hub, unit_selector

_LOGGER = logging.getLogger(__name__)

MQTT = "mqtt"
PREFIX = "blupow_"
GATEWAY_PREFIX = "blupow_gateway_"  # the gateway's own device (docs/mqtt-api.md)


def blupow_id(device: dr.DeviceEntry) -> str | None:
    """`C464E3383D0E` for a device the gateway published, None for any other device."""
    for domain, identifier in device.identifiers:
        if domain == MQTT and identifier.startswith(PREFIX):
            return identifier.removeprefix(PREFIX)
    return None


class DeviceLinker:
    """Keeps the BluPow config entry on exactly the devices MQTT holds for the gateways."""

    def __init__(self, hass: HomeAssistant, entry: ConfigEntry) -> None:
        self.hass = hass
        self.entry = entry
        self._deleted: set[str] = set()  # device ids the user deleted here: never linked again

    @callback
    def async_start(self) -> CALLBACK_TYPE:
        """Link what exists now and follow the registry; returns the stop callback."""
        self._link_all()
        stops = [self.hass.bus.async_listen(dr.EVENT_DEVICE_REGISTRY_UPDATED, self._on_registry_updated)]
        if self.hass.state is not CoreState.running:  # MQTT discovery may still be creating devices

            @callback
            def started(_event: Event) -> None:
                stops.pop()  # fired: nothing to unsubscribe any more
                self._link_all()

            stops.append(self.hass.bus.async_listen_once(EVENT_HOMEASSISTANT_STARTED, started))

        @callback
        def stop() -> None:
            for unsubscribe in stops:
                unsubscribe()

        return stop

    @callback
    def deleted(self, device_id: str) -> None:
        """The user deleted the device from the BluPow entry: do not put it back."""
        self._deleted.add(device_id)

    @callback
    def _link_all(self) -> None:
        for device in list(dr.async_get(self.hass).devices.values()):
            self._reconcile(device)

    @callback
    def _on_registry_updated(self, event: Event) -> None:
        if event.data.get("action") == "remove":
            self._deleted.discard(event.data["device_id"])
            return
        if (device := dr.async_get(self.hass).async_get(event.data["device_id"])) is not None:
            self._reconcile(device)

    @callback
    def _reconcile(self, device: dr.DeviceEntry) -> None:
        if blupow_id(device) is None:
            return
        mine = self.entry.entry_id in device.config_entries
        held_by_mqtt = any(self._is_mqtt(entry_id) for entry_id in device.config_entries)
        if held_by_mqtt and not mine and device.id not in self._deleted:
            dr.async_get(self.hass).async_update_device(device.id, add_config_entry_id=self.entry.entry_id)
        elif mine and not held_by_mqtt:  # the gateway cleared it: let Home Assistant delete it
            dr.async_get(self.hass).async_update_device(device.id, remove_config_entry_id=self.entry.entry_id)

    def _is_mqtt(self, entry_id: str) -> bool:
        entry = self.hass.config_entries.async_get_entry(entry_id)
        return entry is not None and entry.domain == MQTT


async def async_remove_device(hass: HomeAssistant, device: dr.DeviceEntry) -> bool:
    """*Delete* on a device page: the gateway removes the unit first, or says why it will not."""
    unit_id = blupow_id(device)
    if unit_id is None:
        return True
    if unit_id.startswith(GATEWAY_PREFIX.removeprefix(PREFIX)):
        raise HomeAssistantError("This is the BluPow gateway itself: it goes when the BluPow add-on is uninstalled.")
    if unit_id.endswith("_bank") or unit_id.startswith("bank_"):
        raise HomeAssistantError(
            "This is a battery bank: it goes when its batteries are removed or taken out of the bank "
            "(Configure → Group batteries into a battery bank)."
        )
    found = _find_unit(hass, unit_id)
    if found is None:
        return True  # no gateway has it (any more): nothing to ask
    gateway, unit = found
    try:
        await async_send_command(hass, gateway, "remove_device", unit_selector(gateway.devices, unit))
    except GatewayCommandError as err:
        raise HomeAssistantError(f"Gateway {gateway.gateway_id} refused: {err.error}") from err
    except BluPowError as err:
        raise HomeAssistantError(str(err)) from err
    _LOGGER.info("Removed %s from BluPow gateway %s", unit.get("name") or unit_id, gateway.gateway_id)
    return True


def _find_unit(hass: HomeAssistant, unit_id: str) -> tuple[Gateway, dict[str, Any]] | None:
    hub = get_hub(hass)
    for gateway in hub.gateways.values() if hub is not None else ():
        for unit in gateway.devices:
            if unit.get("unit_id") == unit_id:
                return gateway, unit
    return None

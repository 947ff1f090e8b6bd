"""BluPow companion integration: manage the BluPow gateways' devices from Home Assistant.

The gateway (the BluPow add-on) creates the entities itself through MQTT discovery; this
integration only follows the gateways' retained topics and sends them commands (options flow,
services). What a loaded entry keeps is in runtime.py.
"""

from __future__ import annotations

from homeassistant.components import mqtt
from homeassistant.config_entries import ConfigEntry
from homeassistant.core import HomeAssistant
from homeassistant.exceptions import ConfigEntryNotReady
from homeassistant.helpers import config_validation as cv
from homeassistant.helpers import device_registry as dr
from homeassistant.helpers.typing import ConfigType

from .const import DOMAIN
from .devices import DeviceLinker, async_remove_device
from .gateway import BluPowHub
from .runtime import EntryRuntime
from .services import async_register_services

CONFIG_SCHEMA = cv.config_entry_only_config_schema(DOMAIN)


async def async_setup(hass: HomeAssistant, config: ConfigType) -> bool:
    """Register the services once, whether or not an entry is loaded (they say so if not)."""
    async_register_services(hass)
    return True


async def async_setup_entry(hass: HomeAssistant, entry: ConfigEntry) -> bool:
    if not await mqtt.async_wait_for_mqtt_client(hass):
        raise ConfigEntryNotReady("MQTT is not available yet")
    hub = BluPowHub(hass)
    # Registered one by one so that a failure half-way still undoes what was subscribed.
    for unsubscribe in await hub.async_subscribe():
        entry.async_on_unload(unsubscribe)
    entry.async_on_unload(hub.async_shutdown)
    linker = DeviceLinker(hass, entry)  # the gateways' devices on the BluPow page too
    entry.async_on_unload(linker.async_start())
    hass.data.setdefault(DOMAIN, {})[entry.entry_id] = EntryRuntime(hub, linker)
    return True


async def async_remove_config_entry_device(
    hass: HomeAssistant, entry: ConfigEntry, device_entry: dr.DeviceEntry
) -> bool:
    """*Delete* on a device page: the gateway removes the device (or the page shows why not)."""
    removed = await async_remove_device(hass, device_entry)
    if removed and (runtime := hass.data.get(DOMAIN, {}).get(entry.entry_id)) is not None:
        runtime.linker.deleted(device_entry.id)
    return removed


async def async_unload_entry(hass: HomeAssistant, entry: ConfigEntry) -> bool:
    """Nothing to unload but our state; the MQTT unsubscribes run as on_unload callbacks."""
    hass.data.get(DOMAIN, {}).pop(entry.entry_id, None)
    return True

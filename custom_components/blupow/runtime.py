"""What a loaded BluPow entry keeps while it runs, in hass.data[DOMAIN][entry_id].

ConfigEntry.runtime_data only exists from Home Assistant 2024.5; this integration supports 2024.3.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from homeassistant.core import HomeAssistant

from .const import DOMAIN

if TYPE_CHECKING:  # both import this module
    from .devices import DeviceLinker
    from .gateway import BluPowHub


@dataclass
class EntryRuntime:
    hub: BluPowHub  # the gateways seen on MQTT, and the commands waiting for an answer
    linker: DeviceLinker  # the gateways' devices on the BluPow page


def get_runtime(hass: HomeAssistant) -> EntryRuntime | None:
    """The runtime of the loaded config entry (there is at most one: single_config_entry), or None."""
    runtimes: dict[str, EntryRuntime] = hass.data.get(DOMAIN, {})
    return next(iter(runtimes.values()), None)

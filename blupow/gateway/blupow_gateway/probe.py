"""Finding the units behind one Bluetooth module (``probe_module``).

A BT-2 on a daisy-chained battery bank, or on a Communication Hub, reaches
several Modbus slaves; which IDs answer is not advertised. The probe sweeps the
IDs each driver lists (``probe_ids``, from the reference: batteries 48-55, 33-35
and 247, controllers 96/97 and 16/17, the DC-DC charger 96/97, the inverter 32)
and asks each ID for the registers that name its model (``identity_block``):

* silence (a timeout) means nobody is at that ID: the next ID;
* a Modbus exception means a slave of another family is there: the next family
  that lists the ID is asked;
* a reply is decoded by the family's own table; ``claims_model`` tells a DC-DC
  charger from a controller (they share the model register) and
  ``variant_for_model`` picks the variant.

Only 0x03 reads are sent: the probe never writes to a device. 0xFF is asked
only when no other ID answered (one device alone on its module), because on a
shared bus every slave answers it at once. Each request waits at most
``within`` seconds (real modules answer in 70-350 ms), so the whole probe is bounded by
the number of IDs tried times ``within``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from . import devices as registry
from .devices import BaseDevice
from .modbus import ModbusException
from .modules import BROADCAST_ID

_LOGGER = logging.getLogger(__name__)

PROBE_TIMEOUT = 1.0
FAMILY_WORDS = {
    "renogy_battery": ("battery", "batteries"),
    "renogy_charge_controller": ("charge controller", "charge controllers"),
    "renogy_dcc": ("DC-DC charger", "DC-DC chargers"),
    "renogy_inverter": ("inverter", "inverters"),
}


class ProbeLink(Protocol):
    async def read_registers(self, slave_id: int, start: int, count: int, *, within: float | None = None) -> Any: ...


@dataclass
class FoundUnit:
    modbus_id: int
    type: str
    variant: str | None
    model: str | None
    serial: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "modbus_id": self.modbus_id,
            "type": self.type,
            "variant": self.variant,
            "model": self.model,
            "serial": self.serial,
        }


@dataclass
class ProbeResult:
    units: list[FoundUnit] = field(default_factory=list)
    tried: list[int] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        """In words: ``4 batteries (48, 49, 50, 51) and a charge controller (97)``."""
        groups: dict[str, list[int]] = {}
        for unit in self.units:
            groups.setdefault(unit.type, []).append(unit.modbus_id)
        parts = []
        for type_name, ids in groups.items():
            one, many = FAMILY_WORDS.get(type_name, (type_name, type_name))
            head = f"{len(ids)} {many}" if len(ids) > 1 else f"{'an' if one[0] in 'aeiou' else 'a'} {one}"
            parts.append(f"{head} ({', '.join(str(i) for i in ids)})")
        if not parts:
            return "nothing"
        return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def candidates() -> list[tuple[int, list[type[BaseDevice]]]]:
    """Every ID some driver lists, in the drivers' order, with the families to ask there."""
    order: dict[int, list[type[BaseDevice]]] = {}
    for cls in registry.drivers().values():
        for modbus_id in cls.probe_ids:
            order.setdefault(modbus_id, []).append(cls)
    return list(order.items())


async def probe(link: ProbeLink, within: float = PROBE_TIMEOUT) -> ProbeResult:
    """Sweep the candidate IDs over ``link`` (connected by the caller); read-only."""
    started = time.monotonic()
    result = ProbeResult()
    for modbus_id, families in candidates():
        result.tried.append(modbus_id)
        found = await _identify(link, modbus_id, families, within)
        if found is not None:
            result.units.append(found)
    if not result.units:  # alone on its module: the universal address is safe then
        result.tried.append(BROADCAST_ID)
        families = [c for c in registry.drivers().values() if c.model_field]
        found = await _identify(link, BROADCAST_ID, families, within)
        if found is not None:
            result.units.append(found)
    result.seconds = round(time.monotonic() - started, 2)
    return result


async def _identify(
    link: ProbeLink, modbus_id: int, families: Iterable[type[BaseDevice]], within: float
) -> FoundUnit | None:
    for cls in families:
        device = cls(modbus_id=modbus_id)
        block = device.identity_block()
        if block is None:
            continue
        try:
            words = await link.read_registers(modbus_id, block.start, block.count, within=within)
        except ModbusException:
            continue  # a slave is there, but not of this family (or without this block)
        except TimeoutError:
            return None  # nobody at this ID
        values = device.decode(dict(zip(block.registers, words, strict=False)))
        model = values.get(device.model_field or "")
        if not isinstance(model, str) or not model or not cls.claims_model(model):
            continue
        serial = values.get(device.serial_field or "")
        _LOGGER.debug("Modbus id %d answers as %s (%s)", modbus_id, cls.type_name, model)
        return FoundUnit(
            modbus_id=modbus_id,
            type=cls.type_name,
            variant=cls.variant_for_model(model, modbus_id) if cls.variants else None,
            model=model,
            serial=serial if isinstance(serial, str) and serial else None,
        )
    return None

"""Device drivers, one module per family, found automatically.

Every module in this package is imported once; every concrete
:class:`~.base.BaseDevice` subclass it defines becomes a driver whose ``type``
is derived from the class name (``RenogyInverter`` -> ``renogy_inverter``).
Adding a family means adding a module; nothing else has to be registered.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache
from typing import Any

from .base import BaseDevice, Block, Category, Control, Enc, Field, Reading, Variant, type_name_for

__all__ = [
    "BaseDevice",
    "Block",
    "Category",
    "Control",
    "Enc",
    "Field",
    "Reading",
    "Variant",
    "create_device",
    "driver",
    "drivers",
    "known_types",
    "recognise",
    "type_name_for",
]


@cache
def drivers() -> dict[str, type[BaseDevice]]:
    """All drivers by type name, in a stable order."""
    found: dict[str, type[BaseDevice]] = {}
    for module_info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if module_info.name.startswith("_") or module_info.name == "base":
            continue
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        for obj in vars(module).values():
            if (
                isinstance(obj, type)
                and issubclass(obj, BaseDevice)
                and obj.__module__ == module.__name__
                and not obj.abstract
            ):
                if obj.type_name in found:
                    raise RuntimeError(f"two drivers claim type {obj.type_name!r}")
                found[obj.type_name] = obj
    return dict(sorted(found.items()))


def known_types() -> list[str]:
    return list(drivers())


def driver(type_name: str) -> type[BaseDevice]:
    try:
        return drivers()[type_name]
    except KeyError:
        raise KeyError(f"unknown type {type_name!r} (known: {', '.join(known_types())})") from None


def create_device(
    type_name: str,
    *,
    modbus_id: int | None = None,
    variant: str | None = None,
    config: dict[str, Any] | None = None,
) -> BaseDevice:
    return driver(type_name)(modbus_id=modbus_id, variant=variant, config=config)


def recognise(name: str | None, manufacturer_ids: list[int] | None = None) -> list[str]:
    """Types a scanned device may be, best guess first.

    ``BT-TH-…`` modules do not say what they are attached to, so several types
    can match; built-in BLE devices (``RNGRBP…``, ``BTRIC…``) match one.
    """
    manufacturer_ids = manufacturer_ids or []
    matches: list[tuple[int, int, str]] = []
    for type_name, cls in drivers().items():
        score = 0
        if any(m in cls.manufacturer_ids for m in manufacturer_ids):
            score += 2
        if cls.matches_name(name):
            # a specific prefix (RNGRBP*) beats the generic BT-TH-* module name
            specific = cls.variant_for_name(name) is not None or not (name or "").strip().upper().startswith("BT-TH-")
            score += 3 if specific else 1
        if score:
            matches.append((-score, cls.scan_priority, type_name))
    return [t for *_, t in sorted(matches)]

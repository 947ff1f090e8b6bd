"""Shorthands for the field kinds every family uses, so each table row states only what differs.

Precision follows the register resolution (0.1 V -> 1 decimal) unless given.
"""

from __future__ import annotations

from typing import Any

from .base import Category, Enc, Field, _decimals

DIAG = Category.DIAGNOSTIC


def measurement(
    key: str,
    reg: int | None,
    description: str,
    *,
    unit: str,
    device_class: str | None,
    scale: float = 1.0,
    enc: Enc = Enc.U16,
    **kw: Any,
) -> Field:
    kw.setdefault("precision", _decimals(scale))
    return Field(
        key,
        reg,
        enc,
        scale=scale,
        unit=unit,
        device_class=device_class,
        state_class="measurement",
        description=description,
        **kw,
    )


def voltage(key: str, reg: int, description: str, scale: float = 0.1, **kw: Any) -> Field:
    return measurement(key, reg, description, unit="V", device_class="voltage", scale=scale, **kw)


def current(key: str, reg: int, description: str, scale: float = 0.01, **kw: Any) -> Field:
    return measurement(key, reg, description, unit="A", device_class="current", scale=scale, **kw)


def power(
    key: str, reg: int | None, description: str, unit: str = "W", device_class: str = "power", **kw: Any
) -> Field:
    """A power in W; with ``reg`` None, derived by ``compute``."""
    return measurement(key, reg, description, unit=unit, device_class=device_class, **kw)


def integrated_energy(key: str, source: str, direction: int, description: str, **kw: Any) -> Field:
    """An energy counter the gateway keeps from the power field ``source`` (energy.py): for the
    Energy dashboard, in kWh with Wh resolution, never decreasing."""
    return Field(
        key,
        None,
        integrates=source,
        direction=direction,
        unit="kWh",
        device_class="energy",
        state_class="total_increasing",
        precision=3,
        description=f"{description} (integrated by the gateway from {source}; unknown across gaps)",
        **kw,
    )


def temperature(key: str, reg: int, enc: Enc, description: str, scale: float = 1.0, **kw: Any) -> Field:
    return measurement(key, reg, description, unit="°C", device_class="temperature", scale=scale, enc=enc, **kw)


def frequency(key: str, reg: int, description: str) -> Field:
    return measurement(key, reg, description, unit="Hz", device_class="frequency", scale=0.01)


def soc(key: str, reg: int, description: str) -> Field:
    return measurement(key, reg, description, unit="%", device_class="battery")


def flag(key: str, reg: int, bit: int, description: str, **kw: Any) -> Field:
    """One bit of a status register as a binary sensor."""
    return Field(key, reg, mask=1, shift=bit, boolean=True, component="binary_sensor", description=description, **kw)

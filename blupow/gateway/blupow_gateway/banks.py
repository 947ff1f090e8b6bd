"""Battery banks: the batteries behind one module, shown as one more device.

A daisy-chained bank on a BT-2 (or the batteries behind a Communication Hub) is
several units of one module. Besides each battery, the gateway publishes a
"Battery bank" device whose values are computed from the members' readings of
the same module poll (one session reads them all):

* totals: current, power, remaining and full capacity, stored energy;
* capacity-weighted SOC (Σ remaining / Σ full, not a mean of SOCs, so a small
  battery does not count as much as a big one), the spread of SOC between
  members, the lowest and highest cell voltage and the highest temperature
  anywhere in the bank.

A bank value is computed only from a fresh reading of **every** member. When a
member did not answer in that poll, the bank's values are unavailable and its
two status entities (which stay available) say which member is missing: never a
total that silently lacks a battery. A member without a field (a pack without
temperature sensors) makes that one aggregate unavailable, not partial.

One table (``BatteryBank.fields``) drives the computation, the entities and the
device reference, like a driver's register table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .devices.base import BaseDevice, Category, Field, is_finite

BANK_SUFFIX = "_bank"
MEMBER_TYPE = "renogy_battery"
# Entities of a bank that stay available when a member is missing: they say which one.
STATUS_KEYS = frozenset({"members_reporting", "missing_members"})
DIAG = Category.DIAGNOSTIC


def _members(v: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The members' values; only when every member answered in this poll."""
    if v["missing"]:
        raise ValueError("a member is missing")
    members: list[Mapping[str, Any]] = v["members"]
    return members


def _total(key: str) -> Any:
    def compute(v: Mapping[str, Any]) -> float:
        return sum(m[key] for m in _members(v))

    return compute


def _soc(v: Mapping[str, Any]) -> float:
    members = _members(v)
    full = sum(m["capacity"] for m in members)
    return min(100.0, 100.0 * sum(m["remaining_capacity"] for m in members) / full)


def _soc_spread(v: Mapping[str, Any]) -> float:
    socs = [m["battery_soc"] for m in _members(v)]
    return max(socs) - min(socs)


def _temperatures(m: Mapping[str, Any]) -> list[float]:
    found = list(m.get("cell_temperatures") or []) + list(m.get("environment_temperatures") or [])
    if "bms_temperature" in m:
        found.append(m["bms_temperature"])
    if not found:
        raise KeyError("no temperature")
    return found


def _measure(unit: str, device_class: str, precision: int, description: str, **extra: Any) -> dict[str, Any]:
    return {
        "unit": unit,
        "device_class": device_class,
        "state_class": "measurement",
        "precision": precision,
        "description": description,
        **extra,
    }


class BatteryBank(BaseDevice):
    """Not a driver (it is not in ``devices/``, so it cannot be added): the bank's entity table."""

    type_name = "battery_bank"
    description = "Battery bank: the batteries behind one Bluetooth module as one device"
    model_hint = "Battery bank"
    fields = (
        Field(
            "members_reporting",
            None,
            compute=lambda v: f"{len(v['members'])} of {len(v['members']) + len(v['missing'])}",
            category=DIAG,
            description="Members that answered in the last poll, e.g. 3 of 4 (stays available)",
        ),
        Field(
            "missing_members",
            None,
            compute=lambda v: ", ".join(v["missing"]) or "none",
            category=DIAG,
            description="Names of the members that did not answer in the last poll, or none (stays available)",
        ),
        Field(
            "current",
            None,
            compute=_total("current"),
            **_measure("A", "current", 2, "Total current of the bank: positive while charging"),
        ),
        Field("power", None, compute=_total("power"), **_measure("W", "power", 0, "Total power of the bank")),
        Field(
            "battery_soc",
            None,
            compute=_soc,
            **_measure("%", "battery", 1, "State of charge, weighted by capacity (Σ remaining / Σ full)"),
        ),
        Field(
            "remaining_capacity",
            None,
            compute=_total("remaining_capacity"),
            unit="Ah",
            state_class="measurement",
            precision=1,
            description="Remaining capacity of all members",
        ),
        Field(
            "capacity",
            None,
            compute=_total("capacity"),
            unit="Ah",
            precision=1,
            category=DIAG,
            description="Full capacity of all members",
        ),
        Field(
            "stored_energy",
            None,
            compute=_total("stored_energy"),
            **_measure("kWh", "energy_storage", 2, "Energy stored in all members"),
        ),
        Field(
            "soc_spread",
            None,
            compute=_soc_spread,
            unit="%",
            state_class="measurement",
            precision=1,
            category=DIAG,
            description="Highest minus lowest member SOC: a growing spread means the bank drifts apart",
        ),
        Field(
            "cell_voltage_min",
            None,
            name="Lowest cell voltage",
            compute=lambda v: min(m["cell_voltage_min"] for m in _members(v)),
            **_measure("V", "voltage", 3, "Lowest cell voltage in the bank"),
        ),
        Field(
            "cell_voltage_max",
            None,
            name="Highest cell voltage",
            compute=lambda v: max(m["cell_voltage_max"] for m in _members(v)),
            **_measure("V", "voltage", 3, "Highest cell voltage in the bank"),
        ),
        Field(
            "temperature_max",
            None,
            name="Highest temperature",
            compute=lambda v: max(max(_temperatures(m)) for m in _members(v)),
            **_measure("°C", "temperature", 1, "Highest temperature of any sensor in the bank"),
        ),
    )

    def aggregate(self, members: Sequence[Mapping[str, Any]], missing: Sequence[str]) -> dict[str, Any]:
        """The bank's values from the fresh ``members`` and the names of the ``missing`` ones."""
        inputs = {"members": list(members), "missing": list(missing)}
        values: dict[str, Any] = {}
        for f in self.active_fields():
            assert f.compute is not None
            try:
                value = f.compute(inputs)
            except (KeyError, TypeError, ValueError, ZeroDivisionError):
                continue  # missing member, or a member without this field: no value, never a partial one
            if isinstance(value, float):
                value = round(value, 3)  # sums of decoded values carry float noise
            if is_finite(value):
                values[f.key] = value
        return values


def bank_key(mac_key: str) -> str:
    return f"{mac_key}{BANK_SUFFIX}"


def is_member(record_type: str) -> bool:
    return record_type == MEMBER_TYPE


def status_always_available(configs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The bank's status entities follow only the gateway's availability, not the bank's."""
    patched = {}
    for topic, payload in configs.items():
        status = any(str(payload.get("unique_id", "")).endswith(f"_{key}") for key in STATUS_KEYS)
        patched[topic] = {**payload, "availability": payload["availability"][:1]} if status else payload
    return patched

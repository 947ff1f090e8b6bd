"""The Energy dashboard in one step: which BluPow counters go where, added to the user's preferences.

What goes where (docs/devices.md lists the counters):

* solar: a charge controller's lifetime generation, an inverter's solar energy;
* battery: energy out of / into a battery: from the Smart Shunt when there is one (it measures the
  whole bank), else from each battery (a battery bank device has no counter of its own: summing its
  members' would go down when a member is removed);
* grid consumption: what an inverter takes from its AC input (grid, shore power, a generator);
* individual devices: a controller's DC load, an inverter's AC output.

A DC-DC charger's output is energy moved from the alternator (or its own solar input) into the
house battery: no dashboard slot fits it, so it is left for the user to place.

Everything the user had stays; a statistic already used anywhere in the preferences is never added
again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from homeassistant.components.energy.data import async_get_manager
from homeassistant.core import HomeAssistant
from homeassistant.helpers import entity_registry as er

SOLAR = {"renogy_charge_controller": "power_generation_total", "renogy_inverter": "solar_energy"}
CONSUMPTION = {"renogy_charge_controller": "power_consumption_total", "renogy_inverter": "load_energy"}
GRID = {"renogy_inverter": "ac_input_energy"}
BATTERY_TYPES = ("renogy_shunt", "renogy_battery")  # the first one present is used


@dataclass
class EnergyPlan:
    """Statistics (entity ids) to add, by dashboard section."""

    solar: list[str] = field(default_factory=list)
    batteries: list[tuple[str, str]] = field(default_factory=list)  # (energy out of, energy into)
    consumption: list[str] = field(default_factory=list)
    grid: list[str] = field(default_factory=list)  # energy from the grid (an inverter's AC input)

    def __bool__(self) -> bool:
        return bool(self.solar or self.batteries or self.consumption or self.grid)

    def describe(self) -> str:
        """In words, for the dialog: one line per section."""
        lines = []
        if self.solar:
            lines.append(f"Solar production: {', '.join(self.solar)}")
        if self.batteries:
            lines.append("Battery storage: " + "; ".join(f"{out} (out), {into} (in)" for out, into in self.batteries))
        if self.grid:
            lines.append(f"Grid consumption: {', '.join(self.grid)}")
        if self.consumption:
            lines.append(f"Individual devices: {', '.join(self.consumption)}")
        return "\n".join(f"- {line}" for line in lines)


def _entity_id(registry: er.EntityRegistry, device: dict[str, Any], key: str) -> str | None:
    unit = device.get("unit_id") or str(device.get("mac_address", "")).replace(":", "").upper()
    return registry.async_get_entity_id("sensor", "mqtt", f"blupow_{unit}_{key}")


def _used(prefs: dict[str, Any] | None) -> set[str]:
    """Every statistic the preferences already use, anywhere."""
    used: set[str] = set()
    for source in (prefs or {}).get("energy_sources", []):
        for key in ("stat_energy_from", "stat_energy_to"):
            if source.get(key):
                used.add(source[key])
        for flow in [*source.get("flow_from", []), *source.get("flow_to", [])]:
            used.update(v for k, v in flow.items() if k.startswith("stat_") and v)
    used.update(d["stat_consumption"] for d in (prefs or {}).get("device_consumption", []))
    return used


async def async_plan(hass: HomeAssistant, devices: list[dict[str, Any]]) -> EnergyPlan:
    """What adding BluPow's counters would add now (nothing the preferences already have)."""
    registry = er.async_get(hass)
    used = _used((await async_get_manager(hass)).data)
    plan = EnergyPlan()

    def new(entity_id: str | None) -> str | None:
        return entity_id if entity_id is not None and entity_id not in used else None

    for device in devices:
        kind = device.get("type")
        if kind in SOLAR and (solar := new(_entity_id(registry, device, SOLAR[kind]))):
            plan.solar.append(solar)
        if kind in CONSUMPTION and (load := new(_entity_id(registry, device, CONSUMPTION[kind]))):
            plan.consumption.append(load)
        if kind in GRID and (grid := new(_entity_id(registry, device, GRID[kind]))):
            plan.grid.append(grid)
    measured = next((t for t in BATTERY_TYPES if any(d.get("type") == t for d in devices)), None)
    for device in devices:
        if device.get("type") != measured:
            continue
        out, into = (_entity_id(registry, device, key) for key in ("discharge_energy", "charge_energy"))
        if out and into and new(out) and new(into):
            plan.batteries.append((out, into))
    return plan


async def async_apply(hass: HomeAssistant, plan: EnergyPlan) -> None:
    """Add ``plan`` to the preferences, after what is there."""
    manager = await async_get_manager(hass)
    prefs: dict[str, Any] = dict(manager.data or manager.default_preferences())
    sources = list(prefs.get("energy_sources", []))
    sources += [{"type": "solar", "stat_energy_from": s, "config_entry_solar_forecast": None} for s in plan.solar]
    sources += [{"type": "battery", "stat_energy_from": out, "stat_energy_to": into} for out, into in plan.batteries]
    if plan.grid:
        sources = _with_grid(sources, plan.grid)
    consumption = list(prefs.get("device_consumption", []))
    consumption += [{"stat_consumption": c} for c in plan.consumption]
    await manager.async_update({"energy_sources": sources, "device_consumption": consumption})  # type: ignore[typeddict-item]


def _with_grid(sources: list[dict[str, Any]], stats: list[str]) -> list[dict[str, Any]]:
    """``sources`` with ``stats`` as grid consumption: in the grid source the user has (there is
    one at most, as the dashboard's own dialog keeps it), else in a new one."""
    flows = [
        {"stat_energy_from": stat, "stat_cost": None, "entity_energy_price": None, "number_energy_price": None}
        for stat in stats
    ]
    for index, source in enumerate(sources):
        if source.get("type") == "grid":
            grid = {**source, "flow_from": [*source.get("flow_from", []), *flows]}
            return [*sources[:index], grid, *sources[index + 1 :]]
    return [*sources, {"type": "grid", "flow_from": flows, "flow_to": [], "cost_adjustment_day": 0.0}]

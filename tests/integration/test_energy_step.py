"""Options flow → "Add the energy counters to the Energy dashboard": what it shows, what it adds,
what it keeps, and that it never adds a statistic twice."""

from __future__ import annotations

from typing import Any

from conftest import announce_gateway, assert_translated
from homeassistant.components.energy.data import async_get_manager
from homeassistant.core import HomeAssistant
from homeassistant.data_entry_flow import FlowResult, FlowResultType
from homeassistant.helpers import entity_registry as er
from pytest_homeassistant_custom_component.common import MockConfigEntry
from pytest_homeassistant_custom_component.typing import MqttMockHAClient

CONTROLLER = {"mac_address": "C4:64:E3:38:3D:0E", "unit_id": "C464E3383D0E", "type": "renogy_charge_controller",
              "name": "Rover", "origin": "command", "status": "online", "stats": {}}  # fmt: skip
BATTERY = {"mac_address": "C4:64:E3:00:00:30", "unit_id": "C464E3000030", "type": "renogy_battery",
           "name": "Battery", "origin": "command", "status": "online", "stats": {}}  # fmt: skip
SHUNT = {"mac_address": "4C:E1:74:57:85:E3", "unit_id": "4CE1745785E3", "type": "renogy_shunt",
         "name": "Shunt", "origin": "command", "status": "online", "stats": {}}  # fmt: skip
INVERTER = {"mac_address": "D8:B6:73:BF:4F:75", "unit_id": "D8B673BF4F75", "type": "renogy_inverter",
            "name": "Inverter", "origin": "command", "status": "online", "stats": {}}  # fmt: skip
GRID_IN = {"stat_energy_from": "sensor.grid_in", "stat_cost": None, "entity_energy_price": None,
           "number_energy_price": None}  # fmt: skip
GRID = {"type": "grid", "flow_from": [GRID_IN], "flow_to": [], "cost_adjustment_day": 0.0}


def _sensor(hass: HomeAssistant, device: dict[str, Any], key: str) -> str:
    """The entity MQTT discovery would have made for a counter of ``device``."""
    entry = er.async_get(hass).async_get_or_create(
        "sensor", "mqtt", f"blupow_{device['unit_id']}_{key}", suggested_object_id=f"{device['name']}_{key}".lower()
    )
    return entry.entity_id


async def _open_energy_step(hass: HomeAssistant, entry: MockConfigEntry) -> FlowResult:
    result = assert_translated(await hass.config_entries.options.async_init(entry.entry_id))
    return assert_translated(
        await hass.config_entries.options.async_configure(result["flow_id"], {"next_step_id": "energy"})
    )


async def test_adds_solar_battery_and_loads_and_keeps_what_was_there(
    hass: HomeAssistant, entry: MockConfigEntry, mqtt_mock: MqttMockHAClient
) -> None:
    solar = _sensor(hass, CONTROLLER, "power_generation_total")
    load = _sensor(hass, CONTROLLER, "power_consumption_total")
    out, into = _sensor(hass, BATTERY, "discharge_energy"), _sensor(hass, BATTERY, "charge_energy")
    ac = _sensor(hass, INVERTER, "load_energy")
    inverter_solar = _sensor(hass, INVERTER, "solar_energy")
    manager = await async_get_manager(hass)
    mine = {"type": "solar", "stat_energy_from": inverter_solar, "config_entry_solar_forecast": None}
    await manager.async_update(
        {"energy_sources": [GRID, mine], "device_consumption": [{"stat_consumption": "sensor.fridge"}]}
    )
    announce_gateway(hass, devices=[CONTROLLER, BATTERY, INVERTER])

    result = await _open_energy_step(hass, entry)
    assert result["type"] == FlowResultType.FORM and result["step_id"] == "energy"
    plan = result["description_placeholders"]["plan"]
    assert plan == (
        f"- Solar production: {solar}\n"  # not the inverter's solar: the user had it already
        f"- Battery storage: {out} (out), {into} (in)\n"
        f"- Individual devices: {load}, {ac}"
    )
    result = assert_translated(await hass.config_entries.options.async_configure(result["flow_id"], {}))
    assert result["type"] == FlowResultType.ABORT and result["reason"] == "energy_done"

    prefs = manager.data
    assert prefs is not None
    assert prefs["energy_sources"] == [
        GRID,
        mine,
        {"type": "solar", "stat_energy_from": solar, "config_entry_solar_forecast": None},
        {"type": "battery", "stat_energy_from": out, "stat_energy_to": into},
    ]
    assert prefs["device_consumption"] == [
        {"stat_consumption": "sensor.fridge"},
        {"stat_consumption": load},
        {"stat_consumption": ac},
    ]

    again = await _open_energy_step(hass, entry)  # nothing twice
    assert again["type"] == FlowResultType.ABORT and again["reason"] == "energy_nothing_to_add"
    assert manager.data == prefs


async def test_a_shunt_measures_the_bank_so_the_batteries_are_not_added_too(
    hass: HomeAssistant, entry: MockConfigEntry, mqtt_mock: MqttMockHAClient
) -> None:
    _sensor(hass, BATTERY, "discharge_energy"), _sensor(hass, BATTERY, "charge_energy")
    out, into = _sensor(hass, SHUNT, "discharge_energy"), _sensor(hass, SHUNT, "charge_energy")
    announce_gateway(hass, devices=[BATTERY, SHUNT])

    result = await _open_energy_step(hass, entry)

    assert result["description_placeholders"]["plan"] == f"- Battery storage: {out} (out), {into} (in)"


async def test_nothing_to_add_before_the_first_poll(
    hass: HomeAssistant, entry: MockConfigEntry, mqtt_mock: MqttMockHAClient
) -> None:
    announce_gateway(hass, devices=[BATTERY])  # no entities yet: MQTT discovery has not made them
    result = await _open_energy_step(hass, entry)
    assert result["type"] == FlowResultType.ABORT and result["reason"] == "energy_nothing_to_add"


async def test_an_inverter_ac_input_joins_the_grid_the_user_has(
    hass: HomeAssistant, entry: MockConfigEntry, mqtt_mock: MqttMockHAClient
) -> None:
    shore = _sensor(hass, INVERTER, "ac_input_energy")
    manager = await async_get_manager(hass)
    await manager.async_update({"energy_sources": [GRID]})
    announce_gateway(hass, devices=[INVERTER])

    result = await _open_energy_step(hass, entry)
    assert result["description_placeholders"]["plan"] == f"- Grid consumption: {shore}"
    result = assert_translated(await hass.config_entries.options.async_configure(result["flow_id"], {}))
    assert result["type"] == FlowResultType.ABORT and result["reason"] == "energy_done"

    assert manager.data is not None
    shore_in = {**GRID_IN, "stat_energy_from": shore}
    assert manager.data["energy_sources"] == [{**GRID, "flow_from": [GRID_IN, shore_in]}]  # one grid, both meters
    again = await _open_energy_step(hass, entry)
    assert again["type"] == FlowResultType.ABORT and again["reason"] == "energy_nothing_to_add"


async def test_an_inverter_ac_input_becomes_the_grid_when_there_is_none(
    hass: HomeAssistant, entry: MockConfigEntry, mqtt_mock: MqttMockHAClient
) -> None:
    shore = _sensor(hass, INVERTER, "ac_input_energy")
    announce_gateway(hass, devices=[INVERTER])

    result = await _open_energy_step(hass, entry)
    await hass.config_entries.options.async_configure(result["flow_id"], {})

    manager = await async_get_manager(hass)
    assert manager.data is not None
    assert manager.data["energy_sources"] == [
        {
            "type": "grid",
            "flow_from": [{**GRID_IN, "stat_energy_from": shore}],
            "flow_to": [],
            "cost_adjustment_day": 0.0,
        }
    ]

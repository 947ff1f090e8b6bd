"""Renogy smart lithium batteries: BT-2 "legacy" (id 0x30) and built-in BLE Pro / RNGPRO (id 0xFF).

Register map: "Lithium Iron Battery BMS Modbus Protocol V1.7" and a full register
capture of an RBT100LFP12SH-G1. Temperatures and current are two's complement
(s16), unlike the controllers' sign-magnitude bytes. The BMS has no SOC
register: SOC, power and stored energy are derived from the pack values.

Variants differ in Modbus id and in the scale of the current register (5042):
0.01 A on legacy and RNGPRO (vendor doc, captured frames), 0.1 A on the Pro
(RNGRBP/RNGC) batteries (renogy-ble, aiobmsble). See docs/devices.md.
"""

from __future__ import annotations

from typing import Any

from ._fields import flag, integrated_energy
from .base import BaseDevice, Block, Category, Enc, Field, Variant

DIAG = Category.DIAGNOSTIC
PRO_MANUFACTURER_ID = 0xE14C


def _two_bit_alarms(names: list[str]) -> dict[int, str]:
    """2 bits per item, item 1 in the lowest bits: 01 = low, 10 = high (11 sets both)."""
    flags: dict[int, str] = {}
    for index, name in enumerate(names):
        flags[2 * index] = f"{name}_low"
        flags[2 * index + 1] = f"{name}_high"
    return flags


CELL_VOLTAGE_ALARMS = _two_bit_alarms([f"cell_{i}_voltage" for i in range(1, 17)])
CELL_TEMPERATURE_ALARMS = _two_bit_alarms([f"cell_temperature_{i}" for i in range(1, 17)])
# Other alarms from b31 down: board temp, env temp 1/2, heater temp 1/2, charge
# current, discharge current; each 2 bits, the pair's upper bit = "high".
OTHER_ALARMS: dict[int, str] = {}
for _pos, _name in enumerate(
    [
        "bms_temperature",
        "environment_temperature_1",
        "environment_temperature_2",
        "heater_temperature_1",
        "heater_temperature_2",
        "charge_current",
        "discharge_current",
    ]
):
    _hi = 31 - 2 * _pos
    OTHER_ALARMS[_hi] = f"{_name}_high"
    OTHER_ALARMS[_hi - 1] = f"{_name}_low"

PROTECTIONS = {  # status 1 (5106) except the MOSFET / power bits
    15: "module_under_voltage",
    14: "charge_over_temperature",
    13: "charge_under_temperature",
    12: "discharge_over_temperature",
    11: "discharge_under_temperature",
    10: "discharge_over_current_1",
    9: "charge_over_current_1",
    8: "cell_over_voltage",
    7: "cell_under_voltage",
    6: "module_over_voltage",
    5: "discharge_over_current_2",
    4: "charge_over_current_2",
    0: "short_circuit",
}

WARNINGS = {  # status 2 (5107) bits 0-7
    7: "discharge_high_temperature",
    6: "discharge_low_temperature",
    5: "charge_high_temperature",
    4: "charge_low_temperature",
    3: "module_high_voltage",
    2: "module_low_voltage",
    1: "cell_high_voltage",
    0: "cell_low_voltage",
}

CELL_VOLTAGE_ERRORS = {i: f"cell_{i + 1}" for i in range(16)}


def _soc(v: dict[str, Any]) -> float | None:
    total = v["capacity"]
    return None if not total else min(100.0, 100.0 * v["remaining_capacity"] / total)


def _cells(v: dict[str, Any]) -> list[float]:
    cells = v["cell_voltages"]
    if not cells:
        raise ValueError("no cells")
    return cells


def _any(*keys: str) -> Any:
    def compute(v: dict[str, Any]) -> bool:
        return any(v[k] for k in keys)

    return compute


def _limit(key: str, reg: int, scale: float, unit: str, dc: str, description: str, enc: Enc = Enc.U16) -> Field:
    return Field(
        key,
        reg,
        enc,
        scale=scale,
        unit=unit,
        device_class=dc,
        precision=1 if scale == 0.1 else 2,
        category=DIAG,
        enabled_default=False,
        description=description,
    )


class RenogyBattery(BaseDevice):
    description = "Renogy smart lithium battery: BT-2 legacy (id 0x30) or built-in BLE Pro/RNGPRO (id 0xFF)"
    model_hint = "Smart lithium battery"
    name_patterns = ("BT-TH-*",)
    manufacturer_ids = (PRO_MANUFACTURER_ID,)
    variants = (
        Variant(
            "legacy",
            0x30,
            "Smart battery read through a BT-2 module (RBT100LFP12S…, RBT50LFP48S)",
            name_patterns=("BT-TH-*BATT*",),
        ),
        Variant(
            "pro",
            0xFF,
            "Pro / Core batteries with built-in BLE (RNGRBP…, RNGC…); current in 0.1 A",
            name_patterns=("RNGRBP*", "RNGC*"),
        ),
        Variant("rngpro", 0xFF, "RNGPRO batteries with built-in BLE (RBT12500LFP-SHBT)", name_patterns=("RNGPRO*",)),
    )
    default_variant = "legacy"
    default_modbus_id = 0x30
    # 0x30 upward behind a hub or BT-2 chain; 33-35 reported for a plain chain; 0xF7 a pack never
    # auto-addressed (reference §1.2: the sources disagree, so all are tried)
    probe_ids = (*range(48, 56), 33, 34, 35, 247)

    @classmethod
    def variant_for_model(cls, model: str, modbus_id: int) -> str | None:
        return "legacy"  # behind a BT-2 (built-in-BLE packs are alone on their radio, at 0xFF)

    scan_priority = 30
    model_field = "model"
    serial_field = "serial_number"
    sw_field = "software_version"

    blocks = (
        Block(5000, 34, name="cells and temperatures"),
        Block(5035, 7, name="board, environment and heater temperatures", optional=True),
        Block(5042, 7, name="pack status"),
        Block(5049, 4, name="charge and discharge limits", static=True, optional=True),
        Block(5100, 4, name="cell alarms"),
        Block(5104, 28, name="alarms, status, identity"),
    )

    fields = (
        Field("cell_count", 5000, category=DIAG, description="Number of cells"),
        Field(
            "cell_voltages",
            5001,
            Enc.ARRAY_U16,
            count_register=5000,
            scale=0.1,
            unit="V",
            device_class="voltage",
            state_class="measurement",
            precision=1,
            description="Cell voltages, one entry per cell (list)",
        ),
        Field(
            "cell_temperature_count",
            5017,
            category=DIAG,
            enabled_default=False,
            description="Number of cell temperature sensors",
        ),
        Field(
            "cell_temperatures",
            5018,
            Enc.ARRAY_S16,
            count_register=5017,
            scale=0.1,
            unit="°C",
            device_class="temperature",
            state_class="measurement",
            precision=1,
            description="Cell temperature sensors (list)",
        ),
        Field(
            "bms_temperature",
            5035,
            Enc.S16,
            scale=0.1,
            unit="°C",
            device_class="temperature",
            state_class="measurement",
            precision=1,
            category=DIAG,
            description="BMS board temperature",
        ),
        Field(
            "environment_temperatures",
            5037,
            Enc.ARRAY_S16,
            count_register=5036,
            max_items=2,
            scale=0.1,
            unit="°C",
            device_class="temperature",
            state_class="measurement",
            precision=1,
            description="Environment temperature sensors (list, 0-2 entries)",
        ),
        Field(
            "heater_temperatures",
            5040,
            Enc.ARRAY_S16,
            count_register=5039,
            max_items=2,
            scale=0.1,
            unit="°C",
            device_class="temperature",
            state_class="measurement",
            precision=1,
            category=DIAG,
            description="Heater temperature sensors (list, 0-2 entries)",
        ),
        Field(
            "current",
            5042,
            Enc.S16,
            scale=0.01,
            unit="A",
            device_class="current",
            state_class="measurement",
            precision=2,
            variants=("legacy", "rngpro"),
            description="Battery current: positive while charging, negative while discharging",
        ),
        Field(
            "current",
            5042,
            Enc.S16,
            scale=0.1,
            unit="A",
            device_class="current",
            state_class="measurement",
            precision=1,
            variants=("pro",),
            description="Battery current: positive while charging, negative while discharging",
        ),
        Field(
            "voltage",
            5043,
            scale=0.1,
            unit="V",
            device_class="voltage",
            state_class="measurement",
            precision=1,
            description="Battery (module) voltage",
        ),
        Field(
            "remaining_capacity",
            5044,
            Enc.U32,
            scale=0.001,
            unit="Ah",
            state_class="measurement",
            precision=2,
            icon="mdi:battery-50",
            description="Remaining charge",
        ),
        Field(
            "capacity",
            5046,
            Enc.U32,
            scale=0.001,
            unit="Ah",
            precision=1,
            category=DIAG,
            icon="mdi:battery",
            description="Full capacity",
        ),
        Field(
            "cycle_count",
            5048,
            state_class="total_increasing",
            precision=0,
            icon="mdi:battery-sync",
            category=DIAG,
            description="Charge cycles",
        ),
        _limit("charge_voltage_limit", 5049, 0.1, "V", "voltage", "Charge voltage limit"),
        _limit("discharge_voltage_limit", 5050, 0.1, "V", "voltage", "Discharge voltage limit"),
        _limit("charge_current_limit", 5051, 0.01, "A", "current", "Charge current limit"),
        _limit("discharge_current_limit", 5052, 0.01, "A", "current", "Discharge current limit (negative)", Enc.S16),
        Field(
            "cell_voltage_alarms",
            5100,
            Enc.BITS,
            words=2,
            flags=CELL_VOLTAGE_ALARMS,
            category=DIAG,
            description="Cells outside their voltage limits, e.g. cell_3_voltage_low (list)",
        ),
        Field(
            "cell_temperature_alarms",
            5102,
            Enc.BITS,
            words=2,
            flags=CELL_TEMPERATURE_ALARMS,
            category=DIAG,
            description="Cell temperature sensors outside their limits (list)",
        ),
        Field(
            "other_alarms",
            5104,
            Enc.BITS,
            words=2,
            flags=OTHER_ALARMS,
            category=DIAG,
            description="Board/environment/heater temperature and current alarms (list)",
        ),
        Field(
            "protections",
            5106,
            Enc.BITS,
            flags=PROTECTIONS,
            category=DIAG,
            icon="mdi:shield-alert",
            description="Active BMS protections from status 1 (list)",
        ),
        flag("charge_mosfet", 5106, 1, "Charge MOSFET is on", category=DIAG),
        flag("discharge_mosfet", 5106, 2, "Discharge MOSFET is on", category=DIAG),
        Field(
            "warnings",
            5107,
            Enc.BITS,
            flags=WARNINGS,
            category=DIAG,
            icon="mdi:alert",
            description="Active BMS warnings from status 2 (list)",
        ),
        # Running/Not running; the "heat" class would show Hot/Normal
        flag("heater_on", 5107, 13, "Cell heater is running", device_class="running", name="Heater"),
        flag("fully_charged", 5107, 11, "BMS reports the battery fully charged"),
        Field(
            "cell_voltage_errors",
            5108,
            Enc.BITS,
            flags=CELL_VOLTAGE_ERRORS,
            category=DIAG,
            description="Cells with a voltage error from status 3 (list)",
        ),
        flag("charge_enabled", 5109, 6, "BMS allows charging", category=DIAG),
        flag("discharge_enabled", 5109, 7, "BMS allows discharging", category=DIAG),
        Field("serial_number", 5110, Enc.ASCII, words=8, category=DIAG, description="Serial number"),
        Field("model", 5122, Enc.ASCII, words=8, category=DIAG, description="Battery model, e.g. RBT100LFP12-BT"),
        Field("software_version", 5130, Enc.ASCII, words=2, category=DIAG, description="BMS firmware version"),
        Field(
            "battery_soc",
            None,
            compute=_soc,
            unit="%",
            device_class="battery",
            state_class="measurement",
            precision=1,
            description="State of charge: remaining_capacity / capacity (derived)",
        ),
        Field(
            "power",
            None,
            compute=lambda v: v["voltage"] * v["current"],
            unit="W",
            device_class="power",
            state_class="measurement",
            precision=1,
            description="Battery power, positive while charging (derived: voltage x current)",
        ),
        Field(
            "stored_energy",
            None,
            compute=lambda v: v["voltage"] * v["remaining_capacity"] / 1000,
            unit="kWh",
            device_class="energy_storage",
            state_class="measurement",
            precision=3,
            description="Energy left in the battery (derived: voltage x remaining capacity)",
        ),
        # The BMS has no energy counter (docs/devices.md): the gateway integrates the power.
        integrated_energy("charge_energy", "power", 1, "Energy into the battery", name="Energy charged"),
        integrated_energy("discharge_energy", "power", -1, "Energy out of the battery", name="Energy discharged"),
        Field(
            "cell_voltage_min",
            None,
            compute=lambda v: min(_cells(v)),
            unit="V",
            device_class="voltage",
            state_class="measurement",
            precision=1,
            category=DIAG,
            description="Lowest cell voltage (derived)",
        ),
        Field(
            "cell_voltage_max",
            None,
            compute=lambda v: max(_cells(v)),
            unit="V",
            device_class="voltage",
            state_class="measurement",
            precision=1,
            category=DIAG,
            description="Highest cell voltage (derived)",
        ),
        Field(
            "cell_voltage_delta",
            None,
            compute=lambda v: max(_cells(v)) - min(_cells(v)),
            unit="V",
            device_class="voltage",
            state_class="measurement",
            precision=1,
            category=DIAG,
            description="Spread between highest and lowest cell (derived)",
        ),
        Field(
            "alarm_active",
            None,
            compute=_any(
                "protections",
                "warnings",
                "cell_voltage_alarms",
                "cell_temperature_alarms",
                "other_alarms",
                "cell_voltage_errors",
            ),
            component="binary_sensor",
            device_class="problem",
            category=DIAG,
            description="True while any protection, warning or alarm is active (derived)",
        ),
    )

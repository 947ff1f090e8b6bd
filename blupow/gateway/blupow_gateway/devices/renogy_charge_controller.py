"""Renogy solar charge controllers: Rover, Rover Elite, Wanderer, Adventurer (BT-1 / BT-2).

Register map: Rover Modbus DOCX Table 1 and CC V1.7 PDF. Decisions where
sources disagree are recorded in docs/devices.md ("Decisions").
"""

from __future__ import annotations

from ._srne import (
    DIAG,
    DYNAMIC_BLOCK,
    FAULT_PROBLEM,
    IDENTITY_FIELDS,
    MODEL_BLOCK,
    VERSION_BLOCK,
    amp_hours,
    counter,
    current,
    energy_kwh,
    energy_wh,
    power,
    soc,
    temperature,
    voltage,
)
from .base import BaseDevice, Block, Control, Enc, Field
from .renogy_dcc import DCC_MODEL

CHARGING_STATES = {
    0: "deactivated",
    1: "activated",
    2: "mppt",
    3: "equalizing",
    4: "boost",
    5: "floating",
    6: "current_limiting",
}

BATTERY_TYPES = {1: "flooded", 2: "sealed", 3: "gel", 4: "lithium", 5: "user"}

SYSTEM_VOLTAGES = {12: "12V", 24: "24V", 36: "36V", 48: "48V", 96: "96V", 255: "auto"}

# What the Renogy app calls them, where the key alone does not say it
STATE_LABELS = {"deactivated": "Not charging", "activated": "Starting", "floating": "Float"}
BATTERY_TYPE_LABELS = {"sealed": "Sealed (AGM)", "user": "User defined"}
VOLTAGE_LABELS = {v: v.replace("V", " V") for v in SYSTEM_VOLTAGES.values() if v.endswith("V")}

# u32 = 0x0121 << 16 | 0x0122. Bit numbers follow DOCX Table 1 (B17 over-voltage,
# B18 under-voltage warning); the DOCX §3.15 example swaps them, Table 1 and
# solarthing agree, so Table 1 wins. 0x0122 (B0-B15) is reserved on controllers.
FAULTS = {
    31: "fan_alarm",
    30: "charge_mos_short_circuit",
    29: "anti_reverse_mos_short",
    28: "pv_reverse_polarity",
    27: "pv_working_point_over_voltage",
    26: "pv_counter_current",
    25: "pv_input_over_voltage",
    24: "pv_input_short_circuit",
    23: "pv_input_overpower",
    22: "ambient_over_temperature",
    21: "controller_over_temperature",
    20: "load_overpower",
    19: "load_short_circuit",
    18: "battery_under_voltage_warning",
    17: "battery_over_voltage",
    16: "battery_over_discharge",
}


class RenogyChargeController(BaseDevice):
    probe_ids = (96, 97, 16, 17)  # behind a hub (0x60, 0x61); on a daisy chain 16/17

    @classmethod
    def claims_model(cls, model: str) -> bool:
        return not DCC_MODEL.match(model.strip().upper())

    description = "Renogy MPPT/PWM charge controller (Rover, Rover Elite, Wanderer, Adventurer) via BT-1/BT-2"
    model_hint = "Charge controller"
    default_modbus_id = 0xFF
    scan_priority = 10
    name_patterns = ("BT-TH-*",)
    model_field = "model"
    serial_field = "serial_number"
    sw_field = "software_version"

    blocks = (
        MODEL_BLOCK,
        VERSION_BLOCK,
        Block(0x000A, 2, name="ratings", static=True, optional=True),
        Block(0xE004, 1, name="battery type", static=True, optional=True),
        DYNAMIC_BLOCK,
    )

    fields = (
        *IDENTITY_FIELDS,
        Field(
            "max_system_voltage",
            0x000A,
            Enc.U8_HI,
            options=SYSTEM_VOLTAGES,
            labels=VOLTAGE_LABELS,
            category=DIAG,
            description="Highest battery system voltage the controller supports",
        ),
        Field(
            "rated_charging_current",
            0x000A,
            Enc.U8_LO,
            unit="A",
            category=DIAG,
            precision=0,
            description="Rated charging current",
        ),
        Field(
            "rated_discharging_current",
            0x000B,
            Enc.U8_HI,
            unit="A",
            category=DIAG,
            precision=0,
            enabled_default=False,
            description="Rated load (discharging) current",
        ),
        Field(
            "battery_type",
            0xE004,
            options=BATTERY_TYPES,
            labels=BATTERY_TYPE_LABELS,
            category=DIAG,
            icon="mdi:car-battery",
            description="Configured battery type: flooded, sealed, gel, lithium or user",
        ),
        soc("battery_soc", 0x0100, "Battery state of charge as estimated by the controller"),
        voltage("battery_voltage", 0x0101, "Battery voltage"),
        current("charging_current", 0x0102, "Current flowing into the battery"),
        temperature(
            "controller_temperature", 0x0103, Enc.SM8_HI, "Controller temperature (sign-magnitude byte: 0x8B = -11 °C)"
        ),
        temperature(
            "battery_temperature",
            0x0103,
            Enc.SM8_LO,
            "Battery temperature from the remote sensor (sign-magnitude byte)",
        ),
        voltage("load_voltage", 0x0104, "Load output voltage"),
        current("load_current", 0x0105, "Load output current"),
        power("load_power", 0x0106, "Load output power"),
        voltage("pv_voltage", 0x0107, "Solar panel voltage"),
        current("pv_current", 0x0108, "Solar panel current"),
        power("pv_power", 0x0109, "Charging power (solar input)"),
        voltage("battery_min_voltage_today", 0x010B, "Lowest battery voltage today"),
        voltage("battery_max_voltage_today", 0x010C, "Highest battery voltage today"),
        current("max_charging_current_today", 0x010D, "Highest charging current today"),
        current("max_discharging_current_today", 0x010E, "Highest load current today"),
        power("max_charging_power_today", 0x010F, "Highest charging power today"),
        power("max_discharging_power_today", 0x0110, "Highest load power today"),
        amp_hours("charging_amp_hours_today", 0x0111, "Charge delivered to the battery today"),
        amp_hours("discharging_amp_hours_today", 0x0112, "Charge drawn by the load today"),
        energy_wh("power_generation_today", 0x0113, "Solar energy generated today", name="Solar energy today"),
        energy_wh("power_consumption_today", 0x0114, "Energy consumed by the load today", name="Load energy today"),
        counter(
            "total_operating_days",
            0x0115,
            "Days the controller has been running",
            unit="d",
            device_class="duration",
            category=DIAG,
        ),
        counter("total_battery_over_discharges", 0x0116, "Number of battery over-discharge events", category=DIAG),
        counter("total_battery_full_charges", 0x0117, "Number of times the battery was fully charged", category=DIAG),
        amp_hours("total_charging_amp_hours", 0x0118, "Lifetime charge delivered to the battery", Enc.U32),
        amp_hours("total_discharging_amp_hours", 0x011A, "Lifetime charge drawn by the load", Enc.U32),
        energy_kwh("power_generation_total", 0x011C, "Lifetime solar energy generated", name="Solar energy total"),
        energy_kwh("power_consumption_total", 0x011E, "Lifetime energy consumed by the load", name="Load energy total"),
        Field(
            "load_on",
            0x0120,
            mask=0x1,
            shift=15,
            boolean=True,
            component="binary_sensor",  # On/Off: the "power" class would show Detected/Clear
            description="Load output is switched on",
        ),
        Field(
            "street_light_brightness",
            0x0120,
            mask=0x7F,
            shift=8,
            unit="%",
            precision=0,
            enabled_default=False,
            category=DIAG,
            description="Street-light brightness (load dimming)",
        ),
        Field(
            "charging_state",
            0x0120,
            Enc.U8_LO,
            options=CHARGING_STATES,
            labels=STATE_LABELS,
            icon="mdi:solar-power",
            description="Charging stage",
        ),
        Field(
            "faults",
            0x0121,
            Enc.BITS,
            words=2,
            flags=FAULTS,
            icon="mdi:alert-circle-outline",
            category=DIAG,
            description="Active faults and warnings (list of names)",
        ),
        FAULT_PROBLEM,
    )

    controls = (
        Control(
            "load",
            0x010A,
            state_field="load_on",
            icon="mdi:lightbulb",
            description="Switch the load output on or off (controller load mode must be manual)",
        ),
    )

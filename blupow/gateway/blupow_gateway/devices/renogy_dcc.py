"""Renogy DC-DC chargers with MPPT: DCC30S/DCC50S, RBC20D1U/RBC30D1S/RBC50D1S (G1/G4/G6), via BT-2.

Register map: Renogy "DCC series register mappings" sheet and "DCC Charger
Controller Modbus Protocol V1.0". The 0x0104-0x0106 registers that a controller
uses for its load are the alternator (starter battery) input on a DCC, which is
why they get their own names here.

G6 quirk: RBC50D1S-G6 units never answer the 0x0120 status read and have
nothing past 0x0121; they do answer 0x0100 x 34, which covers the charging state
and the high fault word. The 0x0120 block is therefore skipped when the model
ends in "-G6" or the ``g6`` variant is configured.
"""

from __future__ import annotations

import re
from typing import Any

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
from .base import BaseDevice, Block, Enc, Field, Variant

CHARGING_STATES = {
    0: "deactivated",
    2: "mppt",
    3: "equalizing",
    4: "boost",
    5: "floating",
    6: "current_limiting",
    8: "direct_charging",
}

CHARGING_MODES = {
    0: "standby",
    1: "alternator_to_house",
    2: "house_to_starter",
    3: "solar_to_house",
    4: "solar_and_alternator_to_house",
    5: "solar_to_starter",
}

BATTERY_TYPES = {0: "user", 1: "flooded", 2: "sealed", 3: "gel", 4: "lithium"}

# What the Renogy app calls them, where the key alone does not say it
STATE_LABELS = {"deactivated": "Not charging", "floating": "Float", "direct_charging": "Charging from the alternator"}
MODE_LABELS = {
    "alternator_to_house": "Alternator to house battery",
    "house_to_starter": "House battery to starter battery",
    "solar_to_house": "Solar to house battery",
    "solar_and_alternator_to_house": "Solar and alternator to house battery",
    "solar_to_starter": "Solar to starter battery",
}
BATTERY_TYPE_LABELS = {"sealed": "Sealed (AGM)", "user": "User defined"}

# u32 = 0x0121 << 16 | 0x0122 (DCC sheet; solarthing DcdcErrorMode). The bit map
# differs from the controller's.
FAULTS = {
    16 + 11: "low_temperature_charge_stop",
    16 + 10: "bms_over_charge_protection",
    16 + 9: "starter_battery_reverse_polarity",
    16 + 8: "alternator_over_voltage",
    16 + 5: "alternator_over_current",
    16 + 4: "controller_over_temperature_2",
    12: "solar_reverse_polarity",
    9: "solar_over_voltage",
    8: "fan_alarm",
    7: "solar_input_too_high",
    6: "battery_over_temperature",
    5: "controller_over_temperature",
    2: "battery_under_voltage_warning",
    1: "battery_over_voltage",
    0: "battery_over_discharge",
}


def _not_g6(values: dict[str, Any]) -> bool:
    return not str(values.get("model", "")).upper().endswith("-G6")


# DC-DC chargers share the controllers' model register: DCC30S/DCC50S, RBC50D1S-G1 ... (reference §1.7)
DCC_MODEL = re.compile(r"^(DCC|RBC\d+D)")


class RenogyDcc(BaseDevice):
    description = "Renogy DC-DC charger with MPPT (DCC30S/DCC50S, RBC…D1S) via BT-2"
    model_hint = "DC-DC charger"
    default_modbus_id = 0xFF
    scan_priority = 20
    name_patterns = ("BT-TH-*",)
    variants = (
        Variant("standard", 0xFF, "DCC30S/DCC50S and RBC G1/G4: full status block at 0x0120"),
        Variant("g6", 0xFF, "RBC…-G6: no 0x0120 status block (detected from the model as well)"),
    )
    default_variant = "standard"
    probe_ids = (96, 97)  # behind a Communication Hub (cyrils/renogy-bt#59: 96)

    @classmethod
    def claims_model(cls, model: str) -> bool:
        return bool(DCC_MODEL.match(model.strip().upper()))

    @classmethod
    def variant_for_model(cls, model: str, modbus_id: int) -> str | None:
        return "g6" if model.strip().upper().endswith("-G6") else "standard"

    model_field = "model"
    serial_field = "serial_number"
    sw_field = "software_version"

    blocks = (
        MODEL_BLOCK,
        VERSION_BLOCK,
        Block(0xE001, 1, name="charging current setting", static=True, optional=True),
        Block(0xE004, 1, name="battery type", static=True, optional=True),
        DYNAMIC_BLOCK,
        Block(0x0120, 8, name="status", when=_not_g6, variants=("standard",)),
    )

    fields = (
        *IDENTITY_FIELDS,
        Field(
            "max_charging_current_setting",
            0xE001,
            scale=0.01,
            unit="A",
            precision=0,
            category=DIAG,
            description="Configured maximum charging current",
        ),
        Field(
            "battery_type",
            0xE004,
            options=BATTERY_TYPES,
            labels=BATTERY_TYPE_LABELS,
            category=DIAG,
            icon="mdi:car-battery",
            description="Configured house battery type: user, flooded, sealed, gel or lithium",
        ),
        soc("battery_soc", 0x0100, "House (auxiliary) battery state of charge"),
        voltage("battery_voltage", 0x0101, "House battery voltage"),
        current("charging_current", 0x0102, "Total charging current into the house battery (solar + alternator)"),
        temperature(
            "controller_temperature",
            0x0103,
            Enc.SM8_HI,
            "Charger temperature, the higher of its two sensors (sign-magnitude byte)",
        ),
        temperature("battery_temperature", 0x0103, Enc.SM8_LO, "House battery temperature (sign-magnitude byte)"),
        voltage("alternator_voltage", 0x0104, "Alternator / starter battery input voltage"),
        current("alternator_current", 0x0105, "Alternator charging current"),
        power("alternator_power", 0x0106, "Alternator charging power"),
        voltage("solar_voltage", 0x0107, "Solar input voltage"),
        current("solar_current", 0x0108, "Solar input current"),
        power("solar_power", 0x0109, "Solar input power"),
        voltage("battery_min_voltage_today", 0x010B, "Lowest house battery voltage today"),
        voltage("battery_max_voltage_today", 0x010C, "Highest house battery voltage today"),
        current("max_charging_current_today", 0x010D, "Highest charging current today (solar + alternator)"),
        power("max_charging_power_today", 0x010F, "Highest input power today"),
        amp_hours("charging_amp_hours_today", 0x0111, "Charge delivered to the house battery today"),
        energy_wh("power_generation_today", 0x0113, "Energy delivered today", name="Energy delivered today"),
        counter(
            "total_operating_days",
            0x0115,
            "Days the charger has been running",
            unit="d",
            device_class="duration",
            category=DIAG,
        ),
        counter("total_battery_over_discharges", 0x0116, "Number of over-discharge events", category=DIAG),
        counter("total_battery_full_charges", 0x0117, "Number of full charges", category=DIAG),
        amp_hours("total_charging_amp_hours", 0x0118, "Lifetime charge delivered", Enc.U32),
        energy_kwh("power_generation_total", 0x011C, "Lifetime energy delivered", name="Energy delivered total"),
        Field(
            "charging_state",
            0x0120,
            Enc.U8_LO,
            options=CHARGING_STATES,
            labels=STATE_LABELS,
            icon="mdi:battery-charging",
            description="Charging stage; direct_charging means charging from the alternator",
        ),
        Field(
            "faults",
            0x0121,
            Enc.BITS,
            words=2,
            flags=FAULTS,
            icon="mdi:alert-circle-outline",
            category=DIAG,
            description="Active faults and warnings (list of names); on G6 units only the 0x0121 bits are available",
        ),
        FAULT_PROBLEM,
        power("output_power", 0x0124, "Charging power delivered to the house battery"),
        Field(
            "charging_mode",
            0x0125,
            options=CHARGING_MODES,
            labels=MODE_LABELS,
            icon="mdi:swap-horizontal",
            description="Which source charges which battery",
        ),
        Field(
            "ignition",
            0x0126,
            mask=0x1,
            boolean=True,
            component="binary_sensor",  # On/Off: the "power" class would show Detected/Clear
            description="Ignition (D+) signal detected",
        ),
    )

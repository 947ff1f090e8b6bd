"""Renogy inverters and inverter/chargers (RIV…, REGO) at Modbus id 0x20.

Register map: renogy-bt InverterClient and renogy-ble's inverter read specs (the
vendor has published no inverter table). Built-in BLE inverters want one read of
characteristic ffd4 after connecting and slower request pacing (renogy-ble).
The RIV4835CSH1S does not answer the model block at 4311, so it is optional.
"""

from __future__ import annotations

from .base import BaseDevice, Block, Category, Enc, Field

DIAG = Category.DIAGNOSTIC

CHARGING_STATUS = {
    0: "deactivated",
    1: "constant_current",
    2: "constant_voltage",
    4: "floating",
    6: "battery_activation",
    7: "battery_disconnecting",
}


def _v(key: str, reg: int, description: str) -> Field:
    return Field(
        key,
        reg,
        scale=0.1,
        unit="V",
        device_class="voltage",
        state_class="measurement",
        precision=1,
        description=description,
    )


def _a(key: str, reg: int, description: str, scale: float = 0.01, enc: Enc = Enc.U16) -> Field:
    return Field(
        key,
        reg,
        enc,
        scale=scale,
        unit="A",
        device_class="current",
        state_class="measurement",
        precision=2 if scale == 0.01 else 1,
        description=description,
    )


def _hz(key: str, reg: int, description: str) -> Field:
    return Field(
        key,
        reg,
        scale=0.01,
        unit="Hz",
        device_class="frequency",
        state_class="measurement",
        precision=2,
        description=description,
    )


def _w(key: str, reg: int, description: str, unit: str = "W", dc: str = "power") -> Field:
    return Field(key, reg, unit=unit, device_class=dc, state_class="measurement", precision=0, description=description)


class RenogyInverter(BaseDevice):
    description = "Renogy inverter or inverter/charger (RIV…, REGO) at Modbus id 0x20"
    model_hint = "Inverter"
    default_modbus_id = 0x20
    scan_priority = 40
    name_patterns = ("BTRIC*", "RNGRIU*", "BT-TH-*")
    init_read_uuid = "0000ffd4-0000-1000-8000-00805f9b34fb"
    init_delay = 1.0
    request_pacing = 0.3
    model_field = "model"

    blocks = (
        Block(4109, 1, name="device id", static=True, optional=True),
        Block(4311, 8, name="model", static=True, optional=True),
        Block(4000, 10, name="AC and battery"),
        Block(4327, 7, name="battery and solar charging"),
        Block(4408, 6, name="load"),
    )

    fields = (
        Field("device_id", 4109, category=DIAG, enabled_default=False, description="Modbus id stored in the inverter"),
        Field("model", 4311, Enc.ASCII, words=8, category=DIAG, description="Model, e.g. RIV1230RCH-SPS"),
        _v("ac_input_voltage", 4000, "AC input (grid/shore) voltage"),
        _a("ac_input_current", 4001, "AC input current"),
        _v("ac_output_voltage", 4002, "AC output voltage"),
        _a("ac_output_current", 4003, "AC output current"),
        _hz("ac_output_frequency", 4004, "AC output frequency"),
        _v("battery_voltage", 4005, "Battery voltage"),
        Field(
            "temperature",
            4006,
            Enc.S16,
            scale=0.1,
            unit="°C",
            device_class="temperature",
            state_class="measurement",
            precision=1,
            description="Inverter temperature",
        ),
        _hz("ac_input_frequency", 4009, "AC input frequency"),
        Field(
            "battery_soc",
            4327,
            unit="%",
            device_class="battery",
            state_class="measurement",
            precision=0,
            description="Battery state of charge",
        ),
        _a("charging_current", 4328, "Battery charging current (s16)", scale=0.1, enc=Enc.S16),
        _v("solar_voltage", 4329, "Solar input voltage"),
        _a("solar_current", 4330, "Solar input current", scale=0.1),
        _w("solar_power", 4331, "Solar input power"),
        Field(
            "charging_status", 4332, options=CHARGING_STATUS, icon="mdi:battery-charging", description="Charger stage"
        ),
        _w("charging_power", 4333, "Battery charging power"),
        # 4408 load current: x0.1 A in renogy-bt and renogy-ble's RIV4835 path,
        # x0.01 A in renogy-ble's generic path; two sources against one, and the
        # x0.1 reading keeps load_current x ac_output_voltage close to the
        # apparent power. Recorded in docs/devices.md.
        _a("load_current", 4408, "Load current", scale=0.1),
        _w("load_active_power", 4409, "Load active power"),
        _w("load_apparent_power", 4410, "Load apparent power", unit="VA", dc="apparent_power"),
        _a("line_charging_current", 4412, "Charging current from the AC line", scale=0.1),
        Field(
            "load_percentage",
            4413,
            unit="%",
            state_class="measurement",
            precision=0,
            icon="mdi:gauge",
            description="Load as a percentage of rated power",
        ),
    )

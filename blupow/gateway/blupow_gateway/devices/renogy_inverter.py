"""Renogy inverters and inverter/chargers (RIV…, REGO) at Modbus id 0x20.

Register map: renogy-bt InverterClient and renogy-ble's inverter read specs (the
vendor has published no inverter table). Built-in BLE inverters want one read of
characteristic ffd4 after connecting and slower request pacing (renogy-ble).
The RIV4835CSH1S does not answer the model block at 4311, so it is optional.
"""

from __future__ import annotations

from ._fields import DIAG, current, frequency, integrated_energy, power, voltage
from .base import BaseDevice, Block, Enc, Field

CHARGING_STATUS = {
    0: "deactivated",
    1: "constant_current",
    2: "constant_voltage",
    4: "floating",
    6: "battery_activation",
    7: "battery_disconnecting",
}


class RenogyInverter(BaseDevice):
    probe_ids = (32,)  # behind a hub and on a chain (0x20)

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
        voltage("ac_input_voltage", 4000, "AC input (grid/shore) voltage"),
        current("ac_input_current", 4001, "AC input current"),
        voltage("ac_output_voltage", 4002, "AC output voltage"),
        current("ac_output_current", 4003, "AC output current"),
        frequency("ac_output_frequency", 4004, "AC output frequency"),
        voltage("battery_voltage", 4005, "Battery voltage"),
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
        frequency("ac_input_frequency", 4009, "AC input frequency"),
        Field(
            "battery_soc",
            4327,
            unit="%",
            device_class="battery",
            state_class="measurement",
            precision=0,
            description="Battery state of charge",
        ),
        current("charging_current", 4328, "Battery charging current (s16)", scale=0.1, enc=Enc.S16),
        voltage("solar_voltage", 4329, "Solar input voltage"),
        current("solar_current", 4330, "Solar input current", scale=0.1),
        power("solar_power", 4331, "Solar input power"),
        Field(
            "charging_status",
            4332,
            options=CHARGING_STATUS,
            labels={"deactivated": "Not charging", "floating": "Float"},
            icon="mdi:battery-charging",
            description="Charger stage",
        ),
        power("charging_power", 4333, "Battery charging power"),
        power(
            "battery_power",
            None,
            "Battery power, positive while charging (derived: battery voltage x charging current)",
            compute=lambda v: v["battery_voltage"] * v["charging_current"],
        ),
        power(
            "ac_input_power",
            None,
            "Power taken from the AC input (derived: voltage x current, which is the apparent power: "
            "a little above the real power when the load's power factor is poor)",
            compute=lambda v: v["ac_input_voltage"] * v["ac_input_current"],
            name="AC input power",
        ),
        # 4408 load current: x0.1 A in renogy-bt and renogy-ble's RIV4835 path,
        # x0.01 A in renogy-ble's generic path; two sources against one, and the
        # x0.1 reading keeps load_current x ac_output_voltage close to the
        # apparent power. Recorded in docs/devices.md.
        current("load_current", 4408, "Load current", scale=0.1),
        power("load_active_power", 4409, "Load active power"),
        power("load_apparent_power", 4410, "Load apparent power", unit="VA", device_class="apparent_power"),
        # The V1.8 statistics registers (4501-4567) are read by no peer over BLE yet, and their units
        # are in doubt (renogy-hub-and-shunt.md §3.1): the gateway integrates the power instead.
        integrated_energy(
            "load_energy", "load_active_power", 1, "Energy delivered to the AC load", name="AC output energy"
        ),
        integrated_energy("solar_energy", "solar_power", 1, "Solar energy into the inverter", name="Solar energy"),
        integrated_energy(
            "ac_input_energy",
            "ac_input_power",
            1,
            "Energy taken from the AC input: grid, shore power or a generator",
            name="AC input energy",
        ),
        integrated_energy(
            "battery_charge_energy", "battery_power", 1, "Energy into the battery", name="Battery charge energy"
        ),
        integrated_energy(
            "battery_discharge_energy",
            "battery_power",
            -1,
            "Energy out of the battery",
            name="Battery discharge energy",
        ),
        current("line_charging_current", 4412, "Charging current from the AC line", scale=0.1),
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

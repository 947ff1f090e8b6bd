"""Simulated Renogy inverter/charger with built-in BLE (``BTRIC…``) at Modbus id 0x20.

Registers (§C.4 of the protocol notes; renogy-bt InverterClient, renogy-ble):
4000-4009 AC and battery, 4109 device id, 4311-4318 model, 4327-4333 battery
and solar charging, 4408-4413 load. The load current at 4408 is written in
0.1 A. The charging current at 4328 is the net battery current (s16 0.1 A,
positive while charging).

The RIV4835CSH1S has no model block: a read starting at 4311 gets no reply at
all (renogy-ble: it "does not answer"), so a poller sees a timeout there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .base import SimulatedDevice, lfp_voltage

MODEL_REGISTER = 4311
STATUS_NAMES = {0: "deactivated", 1: "constant_current", 2: "constant_voltage", 4: "floating"}
DEACTIVATED, CONSTANT_CURRENT, CONSTANT_VOLTAGE, FLOATING = 0, 1, 2, 4
EFFICIENCY = 0.9


@dataclass
class SimulatedInverter(SimulatedDevice):
    family: str = "inverter"
    type_name: str = "renogy_inverter"
    model: str = "RIV1230RCH-SPS"
    answers_model: bool = True  # False: RIV4835CSH1S, no reply at 4311
    nominal_voltage: int = 12  # battery bank: 12 or 48 V
    rated_va: float = 3000.0
    pv_peak_watts: float = 600.0
    capacity_ah: float = 200.0
    load_va: float = 250.0  # average AC load
    power_factor: float = 0.9
    shore_power: bool = False  # AC input present: the load passes through and the line charges
    line_charge_amps: float = 20.0
    initial_soc: float = 65.0

    def default_modbus_id(self) -> int:
        return 0x20

    def default_name(self) -> str:
        tail = int("".join(self.mac.split(":")[3:]), 16)
        return f"BTRIC134{tail % 10**6:06d}"

    def setup(self) -> None:
        self.soc = self.initial_soc
        for reg in (*range(4000, 4010), *range(4327, 4334), *range(4408, 4414)):
            self.registers[reg] = 0
        assert self.modbus_id is not None
        self.put(4109, self.modbus_id, key="device_id")
        if self.answers_model:
            self.put_text(MODEL_REGISTER, self.model, 8, key="model")
        else:
            self.missing_blocks = ((MODEL_REGISTER, 8),)

    # --- model ---

    def cells(self) -> int:
        return 16 if self.nominal_voltage >= 48 else 4

    def ac_load(self, t: float) -> float:
        """Apparent power of the AC load (VA); the inverter shuts down on an empty battery."""
        if self.soc <= 0 and not self.shore_power:
            return 0.0
        return self.load_va * (1 + 0.8 * max(0.0, math.sin(t / 3100.0 + self.seed)))

    def powers(self, t: float) -> tuple[float, float, float]:
        """(solar W, line charging W, DC load W) for the current state."""
        v = lfp_voltage(self.soc, cells=self.cells())
        charge_cap = v * (self.line_charge_amps if self.soc < 100 else 0.0)
        solar = self.pv_peak_watts * self.solar(t) if self.soc < 100 else 0.0
        line = charge_cap if self.shore_power and self.soc < 95 else 0.0
        dc_load = 0.0 if self.shore_power else self.ac_load(t) * self.power_factor / EFFICIENCY
        if self.soc >= 100:  # full: solar only covers the load
            solar = min(self.pv_peak_watts * self.solar(t), dc_load)
        return solar, line, dc_load

    def step(self, t: float, dt: float) -> None:
        solar, line, dc_load = self.powers(t)
        v = lfp_voltage(self.soc, cells=self.cells())
        net = (solar + line - dc_load) / v
        self.soc = max(0.0, min(100.0, self.soc + 100.0 * net * dt / 3600.0 / self.capacity_ah))

    # --- registers ---

    def refresh(self, t: float) -> None:
        solar, line, dc_load = self.powers(t)
        ocv = lfp_voltage(self.soc, cells=self.cells())
        net = (solar + line - dc_load) / ocv
        battery_v = ocv + 0.01 * net * self.cells() / 4
        va = self.ac_load(t)
        out_v = 120.0 + 0.4 * math.sin(t / 777.0)
        out_a = va / out_v
        in_v = 121.5 if self.shore_power else 0.0
        in_a = (va + line / EFFICIENCY) / in_v if in_v else 0.0
        stored_in_v = self.put(4000, in_v, 0.1, key="ac_input_voltage")
        stored_in_a = self.put(4001, in_a, 0.01, key="ac_input_current")
        self.put(4002, out_v, 0.1, key="ac_output_voltage")
        self.put(4003, out_a, 0.01, key="ac_output_current")
        self.put(4004, 60.0, 0.01, key="ac_output_frequency")
        stored_battery_v = self.put(4005, battery_v, 0.1, key="battery_voltage")
        self.put(4006, self.ambient(t) + 8 + va / 150.0, 0.1, signed=True, key="temperature")
        self.put(4009, 60.02 if self.shore_power else 0.0, 0.01, key="ac_input_frequency")
        self.put(4327, self.soc, key="battery_soc")
        stored_net = self.put(4328, net, 0.1, signed=True, key="charging_current")
        # what the gateway derives, from the values it reads
        self.truth["battery_power"] = round(stored_battery_v * stored_net)
        self.truth["ac_input_power"] = round(stored_in_v * stored_in_a)
        sunlight = self.solar(t)
        solar_v = (36.0 + 3.0 * sunlight if solar > 0 else 43.0) if sunlight > 0 else 0.0
        self.put(4329, solar_v, 0.1, key="solar_voltage")
        self.put(4330, solar / solar_v if solar_v else 0.0, 0.1, key="solar_current")
        self.put(4331, solar, key="solar_power")
        status = self.charging_status(solar + line)
        self.put(4332, status)
        self.truth["charging_status"] = STATUS_NAMES[status]
        # the power going into the battery: what is left of solar and line charging after the load
        self.put(4333, max(0.0, stored_net) * stored_battery_v, key="charging_power")
        self.put(4408, out_a, 0.1, key="load_current")
        self.put(4409, va * self.power_factor, key="load_active_power")
        self.put(4410, va, key="load_apparent_power")
        self.put(4412, line / ocv, 0.1, key="line_charging_current")
        self.put(4413, 100 * va / self.rated_va, key="load_percentage")

    def charging_status(self, charging_w: float) -> int:
        if charging_w <= 0:
            return DEACTIVATED
        if self.soc >= 99:
            return FLOATING
        return CONSTANT_VOLTAGE if self.soc >= 90 else CONSTANT_CURRENT

"""Simulated Renogy Rover-type MPPT charge controller behind a BT-2 (Modbus id 0xFF).

Registers (Rover Modbus DOCX Table 1, CC V1.7): 0x000A-0x001A system
information, 0x0100-0x0122 dynamic data, 0xE001-0xE02F settings. The only
writable register is 0x010A (load on/off command, 0 or 1), which sets bit 7 of
0x0120's high byte; every other write gets exception 02.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ._srne import Flow, SrneCharger, fault_names

LOAD_REGISTER = 0x010A

# 0x0120 low byte (DOCX): the charging stages this model uses
DEACTIVATED, MPPT, BOOST, FLOATING = 0, 2, 4, 5
STATE_NAMES = {0: "deactivated", 1: "activated", 2: "mppt", 3: "equalizing", 4: "boost", 5: "floating"}
BATTERY_TYPE_NAMES = {1: "flooded", 2: "sealed", 3: "gel", 4: "lithium", 5: "user"}
SYSTEM_VOLTAGE_NAMES = {12: "12V", 24: "24V", 36: "36V", 48: "48V", 96: "96V", 255: "auto"}

# u32 0x0121<<16 | 0x0122 (DOCX Table 1): the faults this model can raise
OVER_DISCHARGE, OVER_VOLTAGE, UNDER_VOLTAGE_WARNING = 16, 17, 18
FAULT_NAMES = {16: "battery_over_discharge", 17: "battery_over_voltage", 18: "battery_under_voltage_warning"}

UNDER_VOLTAGE_WARNING_V = 12.0  # 0xE00C
EFFICIENCY = 0.97  # MPPT conversion


@dataclass
class SimulatedController(SrneCharger):
    family: str = "controller"
    type_name: str = "renogy_charge_controller"
    model: str = "RNG-CTRL-RVR40"
    max_system_voltage: int = 24  # 0x000A high byte
    rated_current: int = 40  # A, 0x000A low byte
    rated_load_current: int = 20  # A, 0x000B high byte
    battery_type: int = 4  # 0xE004: lithium
    pv_peak_watts: float = 400.0
    load_watts: float = 24.0
    load_on: bool = True
    brightness: int = 100  # street-light dimming %, 0xE001

    def setup(self) -> None:
        super().setup()
        self.lvd = False  # low-voltage disconnect of the load
        self.put(0x000A, self.max_system_voltage << 8 | self.rated_current)
        self.truth["max_system_voltage"] = SYSTEM_VOLTAGE_NAMES[self.max_system_voltage]
        self.truth["rated_charging_current"] = self.rated_current
        self.put(0x000B, self.rated_load_current << 8 | 0)  # low byte 0 = controller
        self.truth["rated_discharging_current"] = self.rated_load_current
        self.put_identity(self.model, address=self.stored_address())
        self._put_settings()

    def _put_settings(self) -> None:
        for reg in range(0xE001, 0xE030):
            self.registers[reg] = 0
        self.put(0xE001, self.brightness)
        self.put(0xE002, self.capacity_ah)
        self.put(0xE003, 0xFF << 8 | 12)  # auto, recognised 12 V
        self.put(0xE004, self.battery_type)
        self.truth["battery_type"] = BATTERY_TYPE_NAMES[self.battery_type]
        # 0xE005-0xE00E in 0.1 V: over-voltage, charge limit, equalize, boost, float,
        # boost recovery, over-discharge recovery, under-voltage warning, over-discharge, discharge limit
        volts = (15.5, 14.6, 14.4, 14.4, 13.8, 13.2, 12.6, UNDER_VOLTAGE_WARNING_V, 11.1, 10.6)
        for reg, value in zip(range(0xE005, 0xE00F), volts, strict=True):
            self.put(reg, value, 0.1)
        self.put(0xE00F, 100 << 8 | 50)
        self.put(0xE010, 5)  # over-discharge delay s
        self.put(0xE012, 120)  # boost time min
        self.put(0xE01D, 0x0F)  # load mode: manual, as app control needs

    # --- model ---

    def load_power(self, t: float) -> float:
        if not self.load_on or self.lvd:
            return 0.0
        return self.load_watts * (1 + 0.25 * math.sin(t / 2400.0 + self.seed))

    def flows(self, t: float) -> Flow:
        ocv = self.ocv()
        load_w = self.load_power(t)
        available = self.pv_peak_watts * self.solar(t)
        # a full battery floats: the panel only covers the load
        used = min(available, load_w / EFFICIENCY) if self.soc >= 100.0 else min(available, self.rated_current * ocv)
        charge_i = EFFICIENCY * used / ocv
        load_i = load_w / ocv
        net = charge_i - load_i
        return Flow(
            battery_v=ocv + 0.01 * net,
            charge_i=charge_i,
            charge_power_w=used,
            gen_w=used,
            load_i=load_i,
            load_w=load_w,
            net_i=net,
        )

    def step(self, t: float, dt: float) -> None:
        super().step(t, dt)
        # low-voltage disconnect with hysteresis, as the over-discharge settings do
        if self.soc <= 0.0:
            self.lvd = True
        elif self.soc > 10.0:
            self.lvd = False

    def charging_state(self, f: Flow) -> int:
        if f.charge_power_w <= 0:
            return DEACTIVATED
        if self.soc >= 100.0:
            return FLOATING
        return BOOST if self.soc >= 95.0 else MPPT

    # --- registers ---

    def refresh(self, t: float) -> None:
        f = self.flows(t)
        self.track(f)
        sunlight = self.solar(t)
        self.put(0x0100, self.soc, key="battery_soc")
        self.put(0x0101, f.battery_v, 0.1, key="battery_voltage")
        self.put(0x0102, f.charge_i, 0.01, key="charging_current")
        ambient = self.ambient(t)
        self.put_temperatures(ambient + 4 + f.charge_power_w / 25.0, ambient + 1)
        load_v = f.battery_v if f.load_w > 0 else 0.0
        self.put(0x0104, load_v, 0.1, key="load_voltage")
        self.put(0x0105, f.load_i, 0.01, key="load_current")
        self.put(0x0106, f.load_w, key="load_power")
        # operating point near Vmp while charging, open circuit while floating, ~0 at night
        pv_v = (17.0 + 1.5 * sunlight if f.charge_power_w > 0 else 21.0) if sunlight > 0 else 0.0
        self.put(0x0107, pv_v, 0.1, key="pv_voltage")
        self.put(0x0108, f.charge_power_w / pv_v if pv_v else 0.0, 0.01, key="pv_current")
        self.put(0x0109, f.charge_power_w, key="pv_power")
        self.registers[LOAD_REGISTER] = 0  # write-only command register
        self.put(0x010B, self.v_min, 0.1, key="battery_min_voltage_today")
        self.put(0x010C, self.v_max, 0.1, key="battery_max_voltage_today")
        self.put(0x010D, self.i_charge_max, 0.01, key="max_charging_current_today")
        self.put(0x010E, self.i_load_max, 0.01, key="max_discharging_current_today")
        self.put(0x010F, self.p_charge_max, key="max_charging_power_today")
        self.put(0x0110, self.p_load_max, key="max_discharging_power_today")
        self.put(0x0111, self.charge_ah_today, key="charging_amp_hours_today")
        self.put(0x0112, self.discharge_ah_today, key="discharging_amp_hours_today")
        self.put(0x0113, self.gen_wh_today, key="power_generation_today")
        self.put(0x0114, self.cons_wh_today, key="power_consumption_today")
        self.put(0x0115, self.days(t), key="total_operating_days")
        self.put(0x0116, self.over_discharges, key="total_battery_over_discharges")
        self.put(0x0117, self.full_charges, key="total_battery_full_charges")
        self.put(0x0118, self.total_charge_ah, words=2, key="total_charging_amp_hours")
        self.put(0x011A, self.total_discharge_ah, words=2, key="total_discharging_amp_hours")
        # lifetime energy registers count Wh; the gateway publishes kWh
        self.truth["power_generation_total"] = self.put(0x011C, self.gen_wh_total, words=2) / 1000
        self.truth["power_consumption_total"] = self.put(0x011E, self.cons_wh_total, words=2) / 1000
        state = self.charging_state(f)
        self.put(0x0120, int(self.load_on) << 15 | self.brightness << 8 | state)
        self.truth["load_on"] = self.load_on
        self.truth["street_light_brightness"] = self.brightness
        self.truth["charging_state"] = STATE_NAMES[state]
        self._put_faults(f)

    def _put_faults(self, f: Flow) -> None:
        active = set()
        if f.battery_v < UNDER_VOLTAGE_WARNING_V:
            active.add(UNDER_VOLTAGE_WARNING)
        if self.lvd:
            active.add(OVER_DISCHARGE)
        self.put_flags(0x0121, active, words=2)  # 0x0122 (B0-B15) is reserved: always 0
        self.truth["faults"] = fault_names(FAULT_NAMES, active)
        self.truth["fault_active"] = bool(active)

    # --- load control ---

    def write_error(self, register: int, value: int) -> int | None:
        if register != LOAD_REGISTER:
            return 0x02
        return None if value in (0, 1) else 0x03

    def on_write(self, register: int, value: int) -> None:
        self.load_on = bool(value)

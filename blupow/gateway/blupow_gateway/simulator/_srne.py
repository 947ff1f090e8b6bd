"""Shared model of SRNE-type firmware (charge controllers and DC-DC chargers).

Both families keep a house battery whose SOC the device estimates, the same
system-information block (0x000A-0x001A) and the same 0x0100 counters. Values
are written from the Rover Modbus DOCX Table 1 / DCC register sheet in device
units (0.1 V, 0.01 A, W, Ah, Wh), see docs/devices.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .base import DAY, SimulatedDevice, lfp_voltage, sign_magnitude_byte


@dataclass
class Flow:
    """Instantaneous electrical state that the counters integrate."""

    battery_v: float
    charge_i: float = 0.0  # A into the battery from the device (0x0102)
    charge_power_w: float = 0.0  # W the "max charging power today" register tracks
    gen_w: float = 0.0  # W the "power generation" energy counters integrate
    load_i: float = 0.0  # A out of the load terminals (controllers only)
    load_w: float = 0.0
    net_i: float = 0.0  # A into the battery from everything (SOC drift)


@dataclass
class SrneCharger(SimulatedDevice):
    """A charger with a house battery and the SRNE daily / lifetime counters."""

    capacity_ah: float = 100.0
    initial_soc: float = 60.0
    software_version: tuple[int, int, int] = (1, 0, 7)
    hardware_version: tuple[int, int, int] = (1, 0, 2)

    def setup(self) -> None:
        rng = self.rng
        self.soc = self.initial_soc
        self.operating_days = rng.randint(100, 700)
        self.full_charges = rng.randint(40, 300)
        self.over_discharges = rng.randint(0, 4)
        self.total_charge_ah = rng.uniform(3000, 20000)
        self.total_discharge_ah = self.total_charge_ah * rng.uniform(0.6, 0.9)
        self.gen_wh_total = self.total_charge_ah * 13.2
        self.cons_wh_total = self.total_discharge_ah * 13.1
        self.serial = (0x2104 << 16) | rng.randint(0, 0xFFFF)
        # a full charge / over-discharge counts once per cycle, not at every dip around 100 % / 0 %
        self.full_armed = self.soc < 100.0
        self.empty_armed = self.soc > 0.0
        self.new_day()

    def new_day(self) -> None:
        self.charge_ah_today = 0.0
        self.discharge_ah_today = 0.0
        self.gen_wh_today = 0.0
        self.cons_wh_today = 0.0
        self.v_min = math.inf
        self.v_max = 0.0
        self.i_charge_max = 0.0
        self.i_load_max = 0.0
        self.p_charge_max = 0.0
        self.p_load_max = 0.0

    def flows(self, t: float) -> Flow:
        raise NotImplementedError

    def ocv(self) -> float:
        return lfp_voltage(self.soc)

    def step(self, t: float, dt: float) -> None:
        f = self.flows(t)
        self.track(f)
        hours = dt / 3600.0
        self.soc = max(0.0, min(100.0, self.soc + 100.0 * f.net_i * hours / self.capacity_ah))
        if self.soc >= 100.0 and self.full_armed:
            self.full_charges += 1
            self.full_armed = False
        elif self.soc < 95.0:
            self.full_armed = True
        if self.soc <= 0.0 and self.empty_armed:
            self.over_discharges += 1
            self.empty_armed = False
        elif self.soc > 10.0:
            self.empty_armed = True
        self.charge_ah_today += f.charge_i * hours
        self.discharge_ah_today += f.load_i * hours
        self.gen_wh_today += f.gen_w * hours
        self.cons_wh_today += f.load_w * hours
        self.total_charge_ah += f.charge_i * hours
        self.total_discharge_ah += f.load_i * hours
        self.gen_wh_total += f.gen_w * hours
        self.cons_wh_total += f.load_w * hours

    def track(self, f: Flow) -> None:
        """Update today's extremes with an instantaneous state."""
        self.v_min = min(self.v_min, f.battery_v)
        self.v_max = max(self.v_max, f.battery_v)
        self.i_charge_max = max(self.i_charge_max, f.charge_i)
        self.i_load_max = max(self.i_load_max, f.load_i)
        self.p_charge_max = max(self.p_charge_max, f.charge_power_w)
        self.p_load_max = max(self.p_load_max, f.load_w)

    def days(self, t: float) -> int:
        return self.operating_days + int(t // DAY)

    # --- register writers shared by both families ---

    def put_identity(self, model: str, *, address: int) -> None:
        """0x000C-0x001A: model (16 ASCII, space padded), versions, serial, address."""
        self.put_text(0x000C, model, 8, key="model")
        for reg, key, version in (
            (0x0014, "software_version", self.software_version),
            (0x0016, "hardware_version", self.hardware_version),
        ):
            major, minor, patch = version
            self.put(reg, major << 16 | minor << 8 | patch, words=2)  # top byte unused
            self.truth[key] = f"V{major:02d}.{minor:02d}.{patch:02d}"
        self.put(0x0018, self.serial, words=2)
        self.truth["serial_number"] = f"{self.serial:08X}"
        self.put(0x001A, address & 0xFF, key="device_address")

    def put_temperatures(self, controller_c: float, battery_c: float) -> None:
        """0x0103: two sign-magnitude bytes (b7 = minus), whole °C."""
        hi, lo = sign_magnitude_byte(controller_c), sign_magnitude_byte(battery_c)
        self.registers[0x0103] = hi << 8 | lo
        self.truth["controller_temperature"] = -(hi & 0x7F) if hi & 0x80 else hi
        self.truth["battery_temperature"] = -(lo & 0x7F) if lo & 0x80 else lo

    def stored_address(self) -> int:
        """What 0x001A holds: the module's own address (the BT-2 is polled at 0xFF)."""
        assert self.modbus_id is not None
        return self.modbus_id if 1 <= self.modbus_id <= 247 else 1


def fault_names(bits: dict[int, str], active: set[int]) -> list[str]:
    """Published fault list for a set of active u32 bit numbers, highest bit first."""
    return [bits[b] for b in sorted(active, reverse=True) if b in bits]

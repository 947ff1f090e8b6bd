"""Simulated Renogy smart lithium battery: BT-2 "legacy" (id 0x30) or built-in BLE Pro (id 0xFF).

Registers ("Lithium Iron Battery BMS Modbus Protocol V1.7", §C.3 of the
protocol notes): 5000-5052 cells, temperatures and pack status, 5100-5141
alarms, status and identity, 5200-5229 limits and address. Cell voltages are
0.1 V, temperatures s16 0.1 °C, capacities u32 in mAh; the current at 5042 is
s16 in 0.01 A on the legacy battery and 0.1 A on the Pro.

The Pro advertises as ``RNGRBP…`` with manufacturer id 0xE14C and a 4-byte payload.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .base import SimulatedDevice, lfp_voltage, relax

PRO_MANUFACTURER_ID = 0xE14C

# Status 1 (5106), status 2 (5107) and charge/discharge status (5109) bits
CHARGE_MOSFET, DISCHARGE_MOSFET, USING_MODULE_POWER = 1, 2, 3
CHARGE_UNDER_TEMPERATURE = 13
HEATER_ON, FULLY_CHARGED, EFFECTIVE_CHARGE, EFFECTIVE_DISCHARGE = 13, 11, 15, 14
WARN_CHARGE_LOW_TEMPERATURE = 4
CHARGE_ENABLE, DISCHARGE_ENABLE = 6, 7

SERIAL_REGISTER, SERIAL_WORDS = 5110, 8  # 16 ASCII characters
CHARGE_MIN_C = 0.0  # charge under-temperature limit (5207)
CELL_UNDER_V, CELL_OVER_V = 2.5, 3.7  # 5203 / 5200


@dataclass
class SimulatedBattery(SimulatedDevice):
    family: str = "battery"
    type_name: str = "renogy_battery"
    variant: str | None = "legacy"
    model: str = ""  # empty: RBT100LFP12-BT (legacy) / RBT100LFP12SH-G1 (pro)
    capacity_ah: float = 100.0
    cells: int = 4
    temperature_sensors: int = 0  # 0: 4 (legacy) / 2 (pro)
    environment_sensors: int = 2
    heater: bool | None = None  # None: the Pro has a self-heater, the legacy battery not
    charge_amps_peak: float = 25.0  # solar charging at noon
    load_amps: float = 6.0
    initial_soc: float = 70.0
    software: str = "0119"

    @property
    def pro(self) -> bool:
        return self.variant == "pro"

    def default_modbus_id(self) -> int:
        return 0xFF if self.pro else 0x30

    def default_name(self) -> str:
        if self.pro:
            tail = int("".join(self.mac.split(":")[3:]), 16)
            return f"RNGRBP12{tail % 10**8:08d}"
        return super().default_name()

    def setup(self) -> None:
        if self.pro:
            self.manufacturer_id = PRO_MANUFACTURER_ID
        self.model = self.model or ("RBT100LFP12SH-G1" if self.pro else "RBT100LFP12-BT")
        self.temperature_sensors = self.temperature_sensors or (2 if self.pro else 4)
        self.has_heater = self.pro if self.heater is None else self.heater
        rng = self.rng
        self.soc = self.initial_soc
        self.cell_offsets = [rng.uniform(-0.02, 0.02) for _ in range(self.cells)]
        self.sensor_offsets = [rng.uniform(-0.4, 0.4) for _ in range(self.temperature_sensors)]
        self.temperature = self.ambient(self.sim_time())  # cells start at ambient
        self.heating = False
        self.cycles0 = rng.randint(5, 400)
        self.discharged_ah = rng.uniform(0, self.capacity_ah)
        self._put_static(rng.randint(0, 10**10))

    def _put_static(self, serial: int) -> None:
        regs = self.registers
        for reg in (*range(5000, 5053), *range(5100, 5142)):
            regs.setdefault(reg, 0)
        self.put(5000, self.cells, key="cell_count")
        self.put(5017, self.temperature_sensors, key="cell_temperature_count")
        self.put(5036, self.environment_sensors)
        self.put(5039, 1 if self.has_heater else 0)
        self.truth["capacity"] = self.put(5046, self.capacity_ah * 1000, words=2) / 1000  # mAh
        self.put(5049, 14.8, 0.1, key="charge_voltage_limit")
        self.put(5050, 10.0, 0.1, key="discharge_voltage_limit")
        self.put(5051, 50.0, 0.01, key="charge_current_limit")
        self.put(5052, -100.0, 0.01, signed=True, key="discharge_current_limit")
        self.put_text(SERIAL_REGISTER, f"21{serial:014d}", SERIAL_WORDS, key="serial_number")
        self.put_text(5118, "01", 1)
        self.put_text(5119, "0100", 2)
        self.put_text(5121, "17", 1)
        self.put_text(5122, self.model, 8, key="model")
        self.put_text(5130, self.software, 2, key="software_version")
        self.put_text(5132, "RENOGY", 10)
        limits = (3.7, 3.5, 3.0, 2.5)  # cell over / high / low / under voltage, 0.1 V
        for reg, value in zip(range(5200, 5204), limits, strict=True):
            self.put(reg, value, 0.1)
        for reg, value in zip(range(5204, 5208), (55.0, 50.0, 5.0, CHARGE_MIN_C), strict=True):
            self.put(reg, value, 0.1, signed=True)
        assert self.modbus_id is not None
        self.put(5223, self.modbus_id if 3 <= self.modbus_id <= 247 else 0x30)

    # --- model ---

    def charge_allowed(self) -> bool:
        return self.min_cell_temperature() >= CHARGE_MIN_C

    def min_cell_temperature(self) -> float:
        return min(self.temperature + o for o in self.sensor_offsets)

    def current(self, t: float) -> float:
        """Pack current, + charging / - discharging, as the BMS measures it."""
        load = self.load_amps * (1 + 0.3 * math.sin(t / 1900.0 + self.seed)) if self.soc > 0 else 0.0
        charge = self.charge_amps_peak * self.solar(t) if self.charge_allowed() else 0.0
        if self.soc >= 100.0:
            charge = min(charge, load)  # full: the charger only covers the load
        return charge - load

    def step(self, t: float, dt: float) -> None:
        current = self.current(t)
        hours = dt / 3600.0
        self.soc = max(0.0, min(100.0, self.soc + 100.0 * current * hours / self.capacity_ah))
        if current < 0:
            self.discharged_ah -= current * hours
        # the heater switches on below 2 °C and off above 6 °C; cells follow ambient slowly
        lowest = self.min_cell_temperature()
        if self.has_heater and lowest < 2.0:
            self.heating = True
        elif lowest > 6.0:
            self.heating = False
        target = self.ambient(t) + abs(current) * 0.05 + (15.0 if self.heating else 0.0)
        self.temperature = relax(self.temperature, target, dt, 3 * 3600.0)

    # --- registers ---

    def refresh(self, t: float) -> None:
        current = self.current(t)
        t_cells = [self.temperature + o for o in self.sensor_offsets]
        cells_v = [lfp_voltage(self.soc, cells=1) + 0.002 * current + o for o in self.cell_offsets]
        quantized_cells = [self.put(5001 + i, v, 0.1) for i, v in enumerate(cells_v)]
        self.truth["cell_voltages"] = quantized_cells
        self.truth["cell_temperatures"] = [self.put(5018 + i, c, 0.1, signed=True) for i, c in enumerate(t_cells)]
        self.put(5035, self.temperature + 1.5, 0.1, signed=True, key="bms_temperature")
        ambient = self.ambient(t)
        self.truth["environment_temperatures"] = [
            self.put(5037 + i, ambient + 0.3 * i, 0.1, signed=True) for i in range(self.environment_sensors)
        ]
        heater_c = self.temperature + (8.0 if self.heating else 0.0)
        self.truth["heater_temperatures"] = [self.put(5040, heater_c, 0.1, signed=True)] if self.has_heater else []
        amps = self.put(5042, current, 0.1 if self.pro else 0.01, signed=True, key="current")
        volts = self.put(5043, sum(cells_v), 0.1, key="voltage")
        remaining = self.put(5044, self.soc / 100 * self.capacity_ah * 1000, words=2) / 1000
        self.truth["remaining_capacity"] = remaining
        self.put(5048, self.cycles0 + int(self.discharged_ah // self.capacity_ah), key="cycle_count")
        self._put_status(current, cells_v, t_cells)
        self._derived(volts, amps, remaining, quantized_cells)

    def _put_status(self, current: float, cells_v: list[float], t_cells: list[float]) -> None:
        cell_alarms = 0
        for i, v in enumerate(cells_v):  # 2 bits per cell: 01 below limit, 10 above
            cell_alarms |= (0b01 if v < CELL_UNDER_V else 0b10 if v > CELL_OVER_V else 0) << (2 * i)
        self.put(5100, cell_alarms, words=2)
        temp_alarms = 0
        for i, c in enumerate(t_cells):
            temp_alarms |= (0b01 if c < CHARGE_MIN_C else 0) << (2 * i)
        self.put(5102, temp_alarms, words=2)
        self.put(5104, 0, words=2)
        cold = not self.charge_allowed()
        full = self.soc >= 100.0
        status1 = {USING_MODULE_POWER, DISCHARGE_MOSFET} if self.soc > 0 else {USING_MODULE_POWER}
        if not cold:
            status1.add(CHARGE_MOSFET)
        else:
            status1.add(CHARGE_UNDER_TEMPERATURE)
        status2 = set()
        if self.heating:
            status2.add(HEATER_ON)
        if full:
            status2.add(FULLY_CHARGED)
        if current > 0:
            status2.add(EFFECTIVE_CHARGE)
        elif current < 0:
            status2.add(EFFECTIVE_DISCHARGE)
        if cold:
            status2.add(WARN_CHARGE_LOW_TEMPERATURE)
        self.put_flags(5106, status1)
        self.put_flags(5107, status2)
        self.put(5108, 0)
        enable = {b for b, on in ((CHARGE_ENABLE, not cold), (DISCHARGE_ENABLE, self.soc > 0)) if on}
        self.put_flags(5109, enable)
        truth = self.truth
        # bit lists are published highest bit first, i.e. the last cell first
        truth["cell_voltage_alarms"] = [
            f"cell_{i + 1}_voltage_{'low' if v < CELL_UNDER_V else 'high'}"
            for i, v in reversed(list(enumerate(cells_v)))
            if v < CELL_UNDER_V or v > CELL_OVER_V
        ]
        truth["cell_temperature_alarms"] = [
            f"cell_temperature_{i + 1}_low" for i, c in reversed(list(enumerate(t_cells))) if c < CHARGE_MIN_C
        ]
        truth["other_alarms"] = []
        truth["protections"] = ["charge_under_temperature"] if cold else []
        truth["charge_mosfet"] = CHARGE_MOSFET in status1
        truth["discharge_mosfet"] = DISCHARGE_MOSFET in status1
        truth["warnings"] = ["charge_low_temperature"] if cold else []
        truth["heater_on"] = self.heating
        truth["fully_charged"] = full
        truth["cell_voltage_errors"] = []
        truth["charge_enabled"] = CHARGE_ENABLE in enable
        truth["discharge_enabled"] = DISCHARGE_ENABLE in enable

    def _derived(self, volts: Any, amps: Any, remaining: float, cells: list[Any]) -> None:
        """What the gateway derives (the BMS has no SOC register), from the stored values."""
        truth = self.truth
        truth["battery_soc"] = round(min(100.0, 100.0 * remaining / self.capacity_ah), 1)
        truth["power"] = round(volts * amps, 1)
        truth["stored_energy"] = round(volts * remaining / 1000, 3)
        truth["cell_voltage_min"] = round(min(cells), 1)
        truth["cell_voltage_max"] = round(max(cells), 1)
        truth["cell_voltage_delta"] = round(max(cells) - min(cells), 1)
        truth["alarm_active"] = any(
            truth[k]
            for k in (
                "protections",
                "warnings",
                "cell_voltage_alarms",
                "cell_temperature_alarms",
                "other_alarms",
                "cell_voltage_errors",
            )
        )

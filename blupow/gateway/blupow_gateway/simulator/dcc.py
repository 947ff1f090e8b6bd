"""Simulated Renogy DC-DC charger with MPPT (DCC50S / RBC50D1S) behind a BT-2 (Modbus id 0xFF).

Registers (DCC register sheet, §C.2 of the protocol notes): 0x000A-0x001A
system information, 0x0100-0x0127 dynamic data (0x0104-0x0106 are the
alternator input), 0xE001-0xE014, 0xE020 and 0xE038 settings. Nothing is
writable here.

G6 units (model ending ``-G6``) have no registers past 0x0121 and never answer
a read that starts at 0x0120; their 0x0100 x 34 read still covers 0x0120/0x0121.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._srne import Flow, SrneCharger, fault_names
from .base import DAY

DEACTIVATED, MPPT, BOOST, FLOATING, DIRECT = 0, 2, 4, 5, 8
STATE_NAMES = {0: "deactivated", 2: "mppt", 3: "equalizing", 4: "boost", 5: "floating", 8: "direct_charging"}
STANDBY, ALTERNATOR, SOLAR, SOLAR_AND_ALTERNATOR = 0, 1, 3, 4
MODE_NAMES = {0: "standby", 1: "alternator_to_house", 3: "solar_to_house", 4: "solar_and_alternator_to_house"}
BATTERY_TYPE_NAMES = {0: "user", 1: "flooded", 2: "sealed", 3: "gel", 4: "lithium"}

# u32 0x0121<<16 | 0x0122 (DCC sheet): the faults this model can raise
LOW_TEMPERATURE_CHARGE_STOP = 16 + 11
OVER_DISCHARGE, UNDER_VOLTAGE_WARNING = 0, 2
FAULT_NAMES = {
    LOW_TEMPERATURE_CHARGE_STOP: "low_temperature_charge_stop",
    OVER_DISCHARGE: "battery_over_discharge",
    UNDER_VOLTAGE_WARNING: "battery_under_voltage_warning",
}
UNDER_VOLTAGE_WARNING_V = 12.0
EFFICIENCY = 0.96

# The engine runs (ignition / D+ present) 07:30-09:00 and 17:00-18:00 every day.
DRIVES = ((7.5, 9.0), (17.0, 18.0))


@dataclass
class SimulatedDcc(SrneCharger):
    family: str = "dcc"
    type_name: str = "renogy_dcc"
    variant: str | None = "standard"
    model: str = "RBC50D1S-G1"
    rated_current: int = 50
    charging_current_setting: float = 50.0  # A, 0xE001
    battery_type: int = 4  # 0xE004 (DCC numbering): lithium
    pv_peak_watts: float = 300.0
    house_load_amps: float = 3.0
    initial_soc: float = 55.0
    ignition: bool | None = None  # None: follow the daily driving schedule

    @property
    def g6(self) -> bool:
        return self.model.upper().endswith("-G6")

    def setup(self) -> None:
        super().setup()
        if self.g6:
            self.variant = "g6"
            self.missing_blocks = ((0x0120, 0x10),)
        self.put(0x000A, 12 << 8 | self.rated_current)
        self.put(0x000B, 0)  # no load output; product type 0
        self.put_identity(self.model, address=self.stored_address())
        for reg in range(0xE001, 0xE015):
            self.registers[reg] = 0
        self.truth["max_charging_current_setting"] = self.put(0xE001, self.charging_current_setting, 0.01)
        self.put(0xE002, self.capacity_ah)
        self.put(0xE003, 12 << 8 | 12)
        self.put(0xE004, self.battery_type)
        self.truth["battery_type"] = BATTERY_TYPE_NAMES[self.battery_type]
        volts = (15.5, 14.6, 14.4, 14.4, 13.8, 13.2, 12.6, UNDER_VOLTAGE_WARNING_V, 11.1, 10.6)
        for reg, value in zip(range(0xE005, 0xE00F), volts, strict=True):
            self.put(reg, value, 0.1)
        self.put(0xE012, 120)
        self.put(0xE020, 13.2, 0.1)  # reverse charging voltage
        self.put(0xE038, 0.5, 0.01)  # solar cutoff current

    # --- model ---

    def ignition_on(self, t: float) -> bool:
        if self.ignition is not None:
            return self.ignition
        hour = (t % DAY) / 3600.0
        return any(a <= hour < b for a, b in DRIVES)

    def battery_temperature(self, t: float) -> float:
        return self.ambient(t) + 1.0

    def charge_blocked(self, t: float) -> bool:
        """Lithium is not charged below 0 °C (fault 'low-temperature charge stop')."""
        return self.battery_type == 4 and self.battery_temperature(t) < 0

    def sources(self, t: float) -> tuple[float, float]:
        """Input power used from (solar, alternator), W."""
        if self.charge_blocked(t):
            return 0.0, 0.0
        ocv = self.ocv()
        limit = self.charging_current_setting * ocv
        if self.soc >= 100.0:
            limit = min(limit, self.house_load_amps * ocv / EFFICIENCY)
        solar = min(self.pv_peak_watts * self.solar(t), limit)
        alternator = min(60 * 14.2, limit - solar) if self.ignition_on(t) else 0.0
        return solar, alternator

    def flows(self, t: float) -> Flow:
        ocv = self.ocv()
        solar, alternator = self.sources(t)
        output = EFFICIENCY * (solar + alternator)
        charge_i = output / ocv
        net = charge_i - self.house_load_amps
        return Flow(
            battery_v=ocv + 0.01 * net,
            charge_i=charge_i,
            charge_power_w=solar + alternator,
            gen_w=output,
            net_i=net,
        )

    def charging_state(self, solar: float, alternator: float) -> int:
        if solar + alternator <= 0:
            return DEACTIVATED
        if self.soc >= 100.0:
            return FLOATING
        if solar > 0:  # the sheet: while solar charges, the solar stage is shown
            return BOOST if self.soc >= 95.0 else MPPT
        return DIRECT

    # --- registers ---

    def refresh(self, t: float) -> None:
        f = self.flows(t)
        self.track(f)
        solar, alternator = self.sources(t)
        ignition = self.ignition_on(t)
        self.put(0x0100, self.soc, key="battery_soc")
        self.put(0x0101, f.battery_v, 0.1, key="battery_voltage")
        self.put(0x0102, f.charge_i, 0.01, key="charging_current")
        self.put_temperatures(self.ambient(t) + 5 + f.gen_w / 40.0, self.battery_temperature(t))
        # 0x0104-0x0106: the starter side; it rests near 12.6 V with the engine off
        alt_v = 14.1 if ignition else 12.6
        self.put(0x0104, alt_v, 0.1, key="alternator_voltage")
        self.put(0x0105, alternator / alt_v, 0.01, key="alternator_current")
        self.put(0x0106, alternator, key="alternator_power")
        sunlight = self.solar(t)
        solar_v = (18.0 + 1.5 * sunlight if solar > 0 else 21.5) if sunlight > 0 else 0.0
        self.put(0x0107, solar_v, 0.1, key="solar_voltage")
        self.put(0x0108, solar / solar_v if solar_v else 0.0, 0.01, key="solar_current")
        self.put(0x0109, solar, key="solar_power")
        for reserved in (0x010A, 0x010E, 0x0110, 0x0112, 0x0114, 0x011A, 0x011B, 0x011E, 0x011F):
            self.registers[reserved] = 0
        self.put(0x010B, self.v_min, 0.1, key="battery_min_voltage_today")
        self.put(0x010C, self.v_max, 0.1, key="battery_max_voltage_today")
        self.put(0x010D, self.i_charge_max, 0.01, key="max_charging_current_today")
        self.put(0x010F, self.p_charge_max, key="max_charging_power_today")
        self.put(0x0111, self.charge_ah_today, key="charging_amp_hours_today")
        self.put(0x0113, self.gen_wh_today, key="power_generation_today")
        self.put(0x0115, self.days(t), key="total_operating_days")
        self.put(0x0116, self.over_discharges, key="total_battery_over_discharges")
        self.put(0x0117, self.full_charges, key="total_battery_full_charges")
        self.put(0x0118, self.total_charge_ah, words=2, key="total_charging_amp_hours")
        self.truth["power_generation_total"] = self.put(0x011C, self.gen_wh_total, words=2) / 1000
        state = self.charging_state(solar, alternator)
        self.put(0x0120, state)  # high byte unused on a DCC
        self.truth["charging_state"] = STATE_NAMES[state]
        self._put_faults(t, f)
        if not self.g6:
            self.registers[0x0123] = 0
            self.put(0x0124, f.gen_w, key="output_power")
            mode = {(False, False): STANDBY, (False, True): ALTERNATOR, (True, False): SOLAR}.get(
                (solar > 0, alternator > 0), SOLAR_AND_ALTERNATOR
            )
            self.put(0x0125, mode)
            self.truth["charging_mode"] = MODE_NAMES[mode]
            self.put(0x0126, int(ignition))
            self.truth["ignition"] = ignition
            self.registers[0x0127] = 0

    def _put_faults(self, t: float, f: Flow) -> None:
        active = set()
        if self.charge_blocked(t):
            active.add(LOW_TEMPERATURE_CHARGE_STOP)
        if not self.g6:  # a G6 has no 0x0122, so no low-word faults at all
            if f.battery_v < UNDER_VOLTAGE_WARNING_V:
                active.add(UNDER_VOLTAGE_WARNING)
            if self.soc <= 0.0:
                active.add(OVER_DISCHARGE)
        high = sum(1 << (b - 16) for b in active if b >= 16)
        self.put(0x0121, high)
        if not self.g6:
            self.put(0x0122, sum(1 << b for b in active if b < 16))
        self.truth["faults"] = fault_names(FAULT_NAMES, active)
        self.truth["fault_active"] = bool(active)

"""Driver tables: every field of every family decoded from frames built from the vendor tables.

The frames below are written register by register from the vendor documents
(raw device units) and the expected values are the physical values those
documents give; they do not come from the decoder tables, so a wrong scale,
offset or encoding in a driver fails here.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pytest

from blupow_gateway import modbus
from blupow_gateway.devices import create_device, driver, drivers, known_types, recognise, type_name_for
from blupow_gateway.devices.base import BaseDevice, Enc, Field
from blupow_gateway.schema import ConfigError

DOCS = Path(__file__).resolve().parents[2] / "docs" / "devices.md"


def reply(slave: int, words: list[int]) -> bytes:
    body = bytes([slave, 0x03, 2 * len(words)]) + b"".join(w.to_bytes(2, "big") for w in words)
    return modbus.with_crc(body)


def ascii_words(text: str, words: int) -> list[int]:
    raw = text.encode().ljust(2 * words, b" ")
    return [int.from_bytes(raw[i : i + 2], "big") for i in range(0, 2 * words, 2)]


# (type, variant, slave, start, words, expected subset)
CASES: list[tuple[str, str | None, int, int, list[int], dict[str, Any]]] = [
    # --- charge controller: system information (DOCX Table 1) ---
    (
        "renogy_charge_controller",
        None,
        0xFF,
        0x000A,
        [0x0C28, 0x1400],
        {"max_system_voltage": "12V", "rated_charging_current": 40, "rated_discharging_current": 20},
    ),
    (
        "renogy_charge_controller",
        None,
        0xFF,
        0x000A,
        [0xFF1E],
        {"max_system_voltage": "auto", "rated_charging_current": 30},
    ),
    ("renogy_charge_controller", None, 0xFF, 0x000C, ascii_words("RNG-CTRL-RVR40", 8), {"model": "RNG-CTRL-RVR40"}),
    (
        "renogy_charge_controller",
        None,
        0xFF,
        0x0014,
        [0x0003, 0x0201, 0x0001, 0x0000, 0x1501, 0xFFFF, 0x0011],
        {
            "software_version": "V03.02.01",
            "hardware_version": "V01.00.00",
            "serial_number": "1501FFFF",
            "device_address": 17,
        },
    ),
    ("renogy_charge_controller", None, 0xFF, 0xE004, [4], {"battery_type": "lithium"}),
    ("renogy_charge_controller", None, 0xFF, 0xE004, [1], {"battery_type": "flooded"}),
    # --- charge controller: dynamic block, every register set to a distinct raw value ---
    (
        "renogy_charge_controller",
        None,
        0xFF,
        0x0100,
        [
            64,  # 0x0100 SOC 64 %
            126,  # 0x0101 12.6 V
            1234,  # 0x0102 12.34 A
            0x8B8A,  # 0x0103 controller -11 °C / battery -10 °C (sign-magnitude, DOCX §3.7)
            125,  # 0x0104 load 12.5 V
            150,  # 0x0105 load 1.50 A
            19,  # 0x0106 load 19 W
            183,  # 0x0107 PV 18.3 V
            675,  # 0x0108 PV 6.75 A
            123,  # 0x0109 PV 123 W
            0,  # 0x010A load command (write only)
            119,  # 0x010B min 11.9 V
            144,  # 0x010C max 14.4 V
            1500,  # 0x010D 15.00 A
            320,  # 0x010E 3.20 A
            210,  # 0x010F 210 W
            40,  # 0x0110 40 W
            55,  # 0x0111 55 Ah
            12,  # 0x0112 12 Ah
            704,  # 0x0113 704 Wh
            150,  # 0x0114 150 Wh
            365,  # 0x0115 365 days
            3,  # 0x0116 over-discharges
            280,  # 0x0117 full charges
            0x0001,
            0x0203,  # 0x0118 66051 Ah (DOCX example)
            0x0000,
            0x1000,  # 0x011A 4096 Ah
            0x0006,
            0x8036,  # 0x011C 426038 Wh = 426.038 kWh
            0x0000,
            0x07D0,  # 0x011E 2000 Wh = 2.0 kWh
            0xE402,  # 0x0120 load on + 100 %, MPPT (DOCX example E4)
            0x0101,  # 0x0121 B24 + B16 (DOCX example 01 01 00 00)
        ],
        {
            "battery_soc": 64,
            "battery_voltage": 12.6,
            "charging_current": 12.34,
            "controller_temperature": -11,
            "battery_temperature": -10,
            "load_voltage": 12.5,
            "load_current": 1.5,
            "load_power": 19,
            "pv_voltage": 18.3,
            "pv_current": 6.75,
            "pv_power": 123,
            "battery_min_voltage_today": 11.9,
            "battery_max_voltage_today": 14.4,
            "max_charging_current_today": 15.0,
            "max_discharging_current_today": 3.2,
            "max_charging_power_today": 210,
            "max_discharging_power_today": 40,
            "charging_amp_hours_today": 55,
            "discharging_amp_hours_today": 12,
            "power_generation_today": 704,
            "power_consumption_today": 150,
            "total_operating_days": 365,
            "total_battery_over_discharges": 3,
            "total_battery_full_charges": 280,
            "total_charging_amp_hours": 66051,
            "total_discharging_amp_hours": 4096,
            "power_generation_total": 426.038,
            "power_consumption_total": 2.0,
            "load_on": True,
            "street_light_brightness": 100,
            "charging_state": "mppt",
            "faults": ["pv_input_short_circuit", "battery_over_discharge"],
            "fault_active": True,
        },
    ),
    # --- DC-DC charger (DCC sheet) ---
    (
        "renogy_dcc",
        "standard",
        0xFF,
        0x0100,
        [
            80,
            131,
            2550,
            0x2319,
            138,
            1875,
            259,
            200,
            500,
            100,
            0,
            125,
            143,
            3000,
            0,
            420,
            0,
            61,
            0,
            812,
            0,
            99,
            1,
            75,
            0x0000,
            0x3039,
            0,
            0,
            0x0001,
            0x0F2C,
            0,
            0,
            0x0008,
            0x0020,
        ],
        {
            "battery_soc": 80,
            "battery_voltage": 13.1,
            "charging_current": 25.5,
            "controller_temperature": 35,
            "battery_temperature": 25,
            "alternator_voltage": 13.8,
            "alternator_current": 18.75,
            "alternator_power": 259,
            "solar_voltage": 20.0,
            "solar_current": 5.0,
            "solar_power": 100,
            "battery_min_voltage_today": 12.5,
            "battery_max_voltage_today": 14.3,
            "max_charging_current_today": 30.0,
            "max_charging_power_today": 420,
            "charging_amp_hours_today": 61,
            "power_generation_today": 812,
            "total_operating_days": 99,
            "total_battery_over_discharges": 1,
            "total_battery_full_charges": 75,
            "total_charging_amp_hours": 12345,
            "power_generation_total": 69.42,
            "charging_state": "direct_charging",
            "faults": ["alternator_over_current"],
            "fault_active": True,
        },
    ),
    (
        "renogy_dcc",
        "standard",
        0xFF,
        0x0120,
        [0x0002, 0x0700, 0x0121, 0, 180, 4, 1, 0],
        {
            "charging_state": "mppt",
            "faults": [
                "bms_over_charge_protection",
                "starter_battery_reverse_polarity",
                "alternator_over_voltage",
                "fan_alarm",
                "controller_over_temperature",
                "battery_over_discharge",
            ],
            "output_power": 180,
            "charging_mode": "solar_and_alternator_to_house",
            "ignition": True,
        },
    ),
    (
        "renogy_dcc",
        "standard",
        0xFF,
        0x0120,
        [0x0000, 0, 0, 0, 0, 0, 0, 0],
        {
            "charging_state": "deactivated",
            "faults": [],
            "fault_active": False,
            "charging_mode": "standby",
            "ignition": False,
        },
    ),
    ("renogy_dcc", "standard", 0xFF, 0xE001, [4000], {"max_charging_current_setting": 40}),
    ("renogy_dcc", "standard", 0xFF, 0xE004, [0], {"battery_type": "user"}),
    ("renogy_dcc", "standard", 0xFF, 0x000C, ascii_words("RBC50D1S-G1", 8), {"model": "RBC50D1S-G1"}),
    (
        "renogy_dcc",
        "standard",
        0xFF,
        0x0014,
        [0x0001, 0x0105, 0x0001, 0x0000, 0x2204, 0x0042, 0x00FF],
        {
            "software_version": "V01.01.05",
            "hardware_version": "V01.00.00",
            "serial_number": "22040042",
            "device_address": 255,
        },
    ),
    # --- smart battery (BMS protocol V1.7): cells and temperatures ---
    (
        "renogy_battery",
        "legacy",
        0x30,
        5000,
        [4, 33, 33, 34, 33, *([0] * 12), 2, 0xFF9C, 250, *([0] * 14), 0, 0],
        {
            "cell_count": 4,
            "cell_voltages": [3.3, 3.3, 3.4, 3.3],
            "cell_temperature_count": 2,
            "cell_temperatures": [-10.0, 25.0],
            "cell_voltage_min": 3.3,
            "cell_voltage_max": 3.4,
            "cell_voltage_delta": 0.1,
        },
    ),
    (
        "renogy_battery",
        "legacy",
        0x30,
        5035,
        [0x00C8, 1, 0xFFE2, 0, 2, 150, 0xFF38],
        {"bms_temperature": 20.0, "environment_temperatures": [-3.0], "heater_temperatures": [15.0, -20.0]},
    ),
    (
        "renogy_battery",
        "legacy",
        0x30,
        5042,
        [0xFC18, 133, 0x0000, 0xC350, 0x0001, 0x86A0, 12],
        {
            "current": -10.0,
            "voltage": 13.3,
            "remaining_capacity": 50.0,
            "capacity": 100.0,
            "cycle_count": 12,
            "battery_soc": 50.0,
            "power": -133.0,
            "stored_energy": 0.665,
        },
    ),
    (
        "renogy_battery",
        "pro",
        0xFF,
        5042,
        [0xFC18, 133, 0x0000, 0xC350, 0x0001, 0x86A0, 12],
        {"current": -100.0, "power": -1330.0, "battery_soc": 50.0},
    ),
    (
        "renogy_battery",
        "rngpro",
        0xFF,
        5042,
        [0x01F4, 134, 0x0001, 0x3880, 0x0001, 0x86A0, 3],
        {"current": 5.0, "remaining_capacity": 80.0, "battery_soc": 80.0, "power": 67.0},
    ),
    (
        "renogy_battery",
        "legacy",
        0x30,
        5049,
        [148, 100, 5000, 0xD8F0],
        {
            "charge_voltage_limit": 14.8,
            "discharge_voltage_limit": 10.0,
            "charge_current_limit": 50.0,
            "discharge_current_limit": -100.0,
        },
    ),
    (
        "renogy_battery",
        "legacy",
        0x30,
        5100,
        [0x0000, 0x0004, 0x0000, 0x0002],
        {"cell_voltage_alarms": ["cell_2_voltage_low"], "cell_temperature_alarms": ["cell_temperature_1_high"]},
    ),
    (
        "renogy_battery",
        "legacy",
        0x30,
        5104,
        [
            0x4000,
            0x0000,
            0x800F,
            0x2880,
            0x0004,
            0x00C0,
            *ascii_words("SN1234567890ABCD", 8),
            *ascii_words("01", 1),
            *ascii_words("0100", 2),
            *ascii_words("12", 1),
            *ascii_words("RBT100LFP12-BT", 8),
            *ascii_words("0119", 2),
        ],
        {
            "other_alarms": ["bms_temperature_low"],
            "protections": ["module_under_voltage", "short_circuit"],
            "charge_mosfet": True,
            "discharge_mosfet": True,
            "warnings": ["discharge_high_temperature"],
            "heater_on": True,
            "fully_charged": True,
            "cell_voltage_errors": ["cell_3"],
            "charge_enabled": True,
            "discharge_enabled": True,
            "serial_number": "SN1234567890ABCD",
            "model": "RBT100LFP12-BT",
            "software_version": "0119",
            "alarm_active": True,
        },
    ),
    # --- inverter (renogy-bt / renogy-ble read specs) ---
    (
        "renogy_inverter",
        None,
        0x20,
        4000,
        [1200, 150, 1199, 210, 6000, 132, 0xFFCE, 0, 0, 5998],
        {
            "ac_input_voltage": 120.0,
            "ac_input_current": 1.5,
            "ac_output_voltage": 119.9,
            "ac_output_current": 2.1,
            "ac_output_frequency": 60.0,
            "battery_voltage": 13.2,
            "temperature": -5.0,
            "ac_input_frequency": 59.98,
            "ac_input_power": 180,  # 120.0 V x 1.5 A
        },
    ),
    (
        "renogy_inverter",
        None,
        0x20,
        4327,
        [85, 0xFF9C, 250, 52, 130, 4, 125],
        {
            "battery_soc": 85,
            "charging_current": -10.0,
            "solar_voltage": 25.0,
            "solar_current": 5.2,
            "solar_power": 130,
            "charging_status": "floating",
            "charging_power": 125,
            "battery_power": None,  # needs the battery voltage of the 4000 block
        },
    ),
    (
        "renogy_inverter",
        None,
        0x20,
        4408,
        [23, 250, 276, 0, 15, 12],
        {
            "load_current": 2.3,
            "load_active_power": 250,
            "load_apparent_power": 276,
            "line_charging_current": 1.5,
            "load_percentage": 12,
        },
    ),
    ("renogy_inverter", None, 0x20, 4311, ascii_words("RIV1230RCH-SPS", 8), {"model": "RIV1230RCH-SPS"}),
    ("renogy_inverter", None, 0x20, 4109, [32], {"device_id": 32}),
]


def _decode(type_name: str, variant: str | None, slave: int, start: int, words: list[int]) -> dict[str, Any]:
    device = create_device(type_name, variant=variant)
    regs = modbus.parse_read_frame(reply(slave, words), start, slave_id=slave)
    return device.decode(regs)


@pytest.mark.parametrize(("type_name", "variant", "slave", "start", "words", "expected"), CASES)
def test_vendor_frames(
    type_name: str, variant: str | None, slave: int, start: int, words: list[int], expected: dict[str, Any]
) -> None:
    values = _decode(type_name, variant, slave, start, words)
    for key, want in expected.items():
        if want is None:  # derived from registers outside this frame: must be absent, not 0
            assert key not in values, key
        else:
            assert values.get(key) == want, key


def test_golden_captured_frames() -> None:
    # §C.7: battery type frame, legacy battery model frame, S6's 7-word controller frame.
    assert _decode("renogy_charge_controller", None, 0xFF, 0xE004, [4])["battery_type"] == "lithium"
    regs = modbus.parse_read_frame(bytes.fromhex("3003105242543130304c465031322d4254202058bb"), 5122)
    assert create_device("renogy_battery").decode(regs) == {"model": "RBT100LFP12-BT"}
    regs = modbus.parse_read_frame(bytes.fromhex("ff030e0064008500001010007a000000003168"), 0x0100)
    values = create_device("renogy_charge_controller").decode(regs)
    assert values["battery_soc"] == 100 and values["battery_voltage"] == 13.3
    assert values["controller_temperature"] == 16 and values["load_voltage"] == 12.2


def test_the_inverter_battery_power_comes_from_two_blocks() -> None:
    regs = {
        **modbus.parse_read_frame(reply(0x20, [1200, 150, 0, 0, 6000, 132, 0, 0, 0, 0]), 4000, slave_id=0x20),
        **modbus.parse_read_frame(reply(0x20, [85, 0xFF9C, 0, 0, 0, 0, 0]), 4327, slave_id=0x20),
    }
    values = create_device("renogy_inverter").decode(regs)
    assert values["battery_power"] == -132  # 13.2 V x -10.0 A: discharging
    assert values["ac_input_power"] == 180


def test_missing_registers_are_omitted_not_zero() -> None:
    values = _decode("renogy_charge_controller", None, 0xFF, 0x0100, [50, 130])
    assert values == {"battery_soc": 50, "battery_voltage": 13.0}


def test_every_documented_field_is_decoded_by_a_vendor_frame() -> None:
    decoded: dict[str, set[str]] = {}
    merged: dict[tuple[str, str | None], dict[int, int]] = {}  # every frame of a device at once
    for type_name, variant, slave, start, words, _ in CASES:
        decoded.setdefault(type_name, set()).update(_decode(type_name, variant, slave, start, words))
        merged.setdefault((type_name, variant), {}).update(
            modbus.parse_read_frame(reply(slave, words), start, slave_id=slave)
        )
    for (type_name, variant), regs in merged.items():  # values derived across blocks
        decoded[type_name].update(create_device(type_name, variant=variant).decode(regs))
    for type_name, cls in drivers().items():
        if cls.requires_config:
            continue
        if cls.protocol != "modbus":
            continue  # stream drivers: every field of the shunt is checked by golden frame S3 (test_shunt.py)
        # counters the gateway integrates (energy.py) are not in any frame: tested in test_energy.py
        keys = {f.key for f in cls.fields if f.integrates is None}
        assert keys - decoded[type_name] == set(), type_name
    documented = set(re.findall(r"^\| `([a-z0-9_]+)` \|", DOCS.read_text("utf-8"), re.MULTILINE))
    all_keys = {f.key for cls in drivers().values() if not cls.requires_config for f in cls.fields}
    assert documented >= all_keys


@pytest.mark.parametrize(
    ("raw", "celsius"), [(0x00, 0), (0x01, 1), (0x7F, 127), (0x81, -1), (0x8A, -10), (0x8B, -11), (0xFF, -127)]
)
def test_sign_magnitude_temperatures(raw: int, celsius: int) -> None:
    values = _decode("renogy_charge_controller", None, 0xFF, 0x0100, [0, 0, 0, raw << 8 | raw])
    assert values["controller_temperature"] == celsius
    assert values["battery_temperature"] == celsius


def test_battery_cell_array_follows_count_register() -> None:
    words = [16, *range(30, 46), 0, *([0] * 16), 0]
    values = _decode("renogy_battery", "legacy", 0x30, 5000, words)
    assert len(values["cell_voltages"]) == 16 and values["cell_voltages"][-1] == 4.5
    assert values["cell_temperatures"] == []
    # an implausible count is capped at 16 instead of reading past the block
    values = _decode("renogy_battery", "legacy", 0x30, 5000, [999, *range(30, 46), 0, *([0] * 16), 0])
    assert len(values["cell_voltages"]) == 16


def test_type_names_derive_from_class_names() -> None:
    assert type_name_for("RenogyInverter") == "renogy_inverter"
    assert type_name_for("RenogyDcc") == "renogy_dcc"
    assert type_name_for("GenericModbus") == "generic_modbus"
    assert type_name_for("HTTPThing") == "http_thing"
    assert known_types() == sorted(known_types())
    for name, cls in drivers().items():
        assert cls.type_name == name == type_name_for(cls.__name__)


def test_new_driver_module_is_discovered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import blupow_gateway.devices as devices_pkg

    module = tmp_path / "acme_widget.py"
    module.write_text(
        "from .base import BaseDevice, Block, Field\n"
        "class AcmeWidget(BaseDevice):\n"
        "    blocks = (Block(1, 1),)\n"
        "    fields = (Field('level', 1),)\n"
    )
    monkeypatch.setattr(devices_pkg, "__path__", [*devices_pkg.__path__, str(tmp_path)])
    devices_pkg.drivers.cache_clear()
    try:
        assert "acme_widget" in devices_pkg.known_types()
    finally:
        monkeypatch.undo()
        devices_pkg.drivers.cache_clear()
    assert "acme_widget" not in devices_pkg.known_types()


def test_default_ids_and_variants() -> None:
    assert create_device("renogy_charge_controller").modbus_id == 0xFF
    assert create_device("renogy_inverter").modbus_id == 0x20
    assert create_device("renogy_battery").modbus_id == 0x30
    assert create_device("renogy_battery", variant="pro").modbus_id == 0xFF
    assert create_device("renogy_battery", variant="pro", modbus_id=0x31).modbus_id == 0x31
    with pytest.raises(ValueError, match="unknown variant 'x' for renogy_battery"):
        create_device("renogy_battery", variant="x")
    with pytest.raises(KeyError, match="unknown type 'nope'"):
        driver("nope")


def test_recognition_from_advertisements() -> None:
    assert recognise("RNGRBP1217000794") == ["renogy_battery"]
    assert recognise("BTRIC134000001") == ["renogy_inverter"]
    assert recognise("unknown", [0xE14C]) == ["renogy_battery"]
    bt_module = recognise("BT-TH-E3383D0E    ")
    assert set(bt_module) == {"renogy_charge_controller", "renogy_dcc", "renogy_battery", "renogy_inverter"}
    assert recognise("Phone") == []
    assert create_device("renogy_battery").variant_for_name("RNGPRO125BAT-EF036881") == "rngpro"


def test_field_tables_are_consistent() -> None:
    for name, cls in drivers().items():
        if cls.requires_config:
            continue
        device = cls()
        covered = {r for b in device.active_blocks() for r in b.registers}
        for f in device.active_fields():
            assert re.fullmatch(r"[a-z][a-z0-9_]*", f.key), (name, f.key)
            if f.enc is Enc.BITS:  # fault words may be partly outside the plan (G6, Rover 0x0122)
                assert set(f.registers) & covered, (name, f.key)
            elif f.register is not None:
                assert set(f.registers) <= covered, (name, f.key)
            if f.device_class == "energy":
                assert f.state_class in ("total", "total_increasing") and f.unit in ("Wh", "kWh"), f.key
            if f.state_class and not f.is_text:
                assert f.enc not in (Enc.ASCII, Enc.BITS), f.key
        keys = [f.key for f in device.active_fields()]
        assert len(keys) == len(set(keys)), name


# --- generic_modbus ---

GENERIC = {
    "modbus_id": 1,
    "manufacturer": "Acme",
    "model": "Shunt 1",
    "blocks": [{"start": 256, "count": 4}, {"start": 512, "count": 8, "static": True, "optional": True}],
    "fields": [
        {
            "key": "voltage",
            "register": 256,
            "type": "u16",
            "scale": 0.01,
            "unit": "V",
            "device_class": "voltage",
            "state_class": "measurement",
            "precision": 2,
        },
        {"key": "current", "register": 257, "type": "s16", "scale": 0.1, "offset": 0, "unit": "A"},
        {
            "key": "energy",
            "register": 258,
            "type": "u32",
            "unit": "Wh",
            "device_class": "energy",
            "state_class": "total_increasing",
        },
        {"key": "name", "register": 512, "type": "string", "length": 4},
        {"key": "alarms", "register": 516, "type": "bitfield", "bits": {"0": "low_voltage", "15": "overheat"}},
        {"key": "temp", "register": 517, "type": "sign_magnitude", "scale": 0.1},
        {"key": "mode", "register": 518, "type": "u16", "options": {"0": "idle", "1": "run"}},
        {"key": "offset_temp", "register": 519, "type": "s16", "scale": 0.5, "offset": -40},
    ],
}


def test_generic_modbus_decodes_like_a_driver() -> None:
    device = create_device("generic_modbus", config=GENERIC)
    assert device.modbus_id == 1 and device.manufacturer == "Acme"
    regs = modbus.parse_read_frame(reply(1, [1234, 0xFF9C, 0x0001, 0x0002]), 256)
    regs |= modbus.parse_read_frame(reply(1, [*ascii_words("ABCD", 4), 0x8001, 0x8005, 1, 100]), 512)
    assert device.decode(regs) == {
        "voltage": 12.34,
        "current": -10.0,
        "energy": 65538,
        "name": "ABCD",
        "alarms": ["overheat", "low_voltage"],
        "temp": -0.5,
        "mode": "run",
        "offset_temp": 10.0,
    }


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda c: c["fields"][2].__setitem__("scale", "x"), "generic_modbus config: fields[2].scale must be a number"),
        (lambda c: c["fields"][0].pop("register"), "generic_modbus config: fields[0].register is required"),
        (lambda c: c["fields"][1].__setitem__("type", "float"), "generic_modbus config: fields[1].type must be one of"),
        (lambda c: c.__setitem__("modbus_id", 300), "generic_modbus config: modbus_id must be <= 255"),
        (lambda c: c["blocks"][0].__setitem__("count", 200), "generic_modbus config: blocks[0].count must be <= 125"),
        (lambda c: c.__setitem__("colour", "red"), "generic_modbus config: the configuration: unknown key 'colour'"),
        (lambda c: c["fields"][3].pop("length"), "generic_modbus config: fields[3].length is required for type string"),
        (lambda c: c["fields"][0].__setitem__("register", 300), "fields[0].register 300 is not read by any block"),
        (lambda c: c["fields"][1].__setitem__("key", "voltage"), "fields[1].key 'voltage' is used twice"),
        (lambda c: c["fields"][0].__setitem__("key", "Bad Key"), "fields[0].key has an invalid format"),
        (lambda c: c.__setitem__("fields", []), "fields must have at least 1 entries"),
        (lambda c: c["fields"][4].__setitem__("bits", {}), "fields[4].bits is required for type bitfield"),
        (lambda c: c["fields"][4]["bits"].__setitem__("20", "x"), "fields[4].bits uses bit 20 beyond 1 register"),
        (lambda c: c.__setitem__("write_char_uuid", "ffd1"), "write_char_uuid has an invalid format"),
    ],
)
def test_generic_modbus_rejects_bad_config(mutate, message: str) -> None:
    import copy

    config = copy.deepcopy(GENERIC)
    mutate(config)
    with pytest.raises(ConfigError) as info:
        create_device("generic_modbus", config=config)
    assert message in str(info.value)


def test_generic_modbus_requires_config() -> None:
    with pytest.raises(ConfigError, match="config block is required"):
        create_device("generic_modbus")


def test_generic_modbus_custom_uuids() -> None:
    config = {**GENERIC, "write_service_uuid": "0000FFE0-0000-1000-8000-00805F9B34FB"}
    device = create_device("generic_modbus", config=config)
    assert device.gatt.write_service == "0000ffe0-0000-1000-8000-00805f9b34fb"
    assert device.gatt.notify_char == "0000fff1-0000-1000-8000-00805f9b34fb"


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        # the issue: 1e308 passed validation and the state then held Infinity
        ("scale", 1e308, 'fields[2] "energy": scale 1e+308 is out of range (allowed 1e-09 … 1e+09)'),
        ("scale", 2e9, 'fields[2] "energy": scale 2e+09 is out of range (allowed 1e-09 … 1e+09)'),
        ("scale", 1e-10, 'fields[2] "energy": scale 1e-10 is out of range (allowed 1e-09 … 1e+09)'),
        ("scale", 0, 'fields[2] "energy": scale 0 is out of range (allowed 1e-09 … 1e+09)'),
        ("scale", -0.1, 'fields[2] "energy": scale -0.1 is out of range (allowed 1e-09 … 1e+09)'),
        ("scale", 10**400, 'fields[2] "energy": scale 1e+308 or more is out of range'),  # a JSON integer literal
        ("offset", -1e308, 'fields[2] "energy": offset -1e+308 is out of range (allowed -1e+09 … 1e+09)'),
        ("offset", 1.5e9, 'fields[2] "energy": offset 1.5e+09 is out of range (allowed -1e+09 … 1e+09)'),
    ],
    ids=["1e308", "too-large", "too-small", "zero", "negative", "huge-integer", "offset-1e308", "offset-too-large"],
)
def test_generic_modbus_refuses_scale_and_offset_out_of_range(key: str, value: float, message: str) -> None:
    import copy

    config = copy.deepcopy(GENERIC)
    config["fields"][2][key] = value
    with pytest.raises(ConfigError) as info:
        create_device("generic_modbus", config=config)
    assert str(info.value).startswith(f"generic_modbus config: {message}")


def test_generic_modbus_bounds_match_the_schema() -> None:
    """The schema carries the same bounds for editors; the driver checks them first to name the field."""
    from blupow_gateway.devices.generic_modbus import OFFSET_RANGE, SCALE_RANGE
    from blupow_gateway.schema import load_schema

    props = load_schema("generic_modbus")["properties"]["fields"]["items"]["properties"]
    assert (props["scale"]["minimum"], props["scale"]["maximum"]) == SCALE_RANGE
    assert (props["offset"]["minimum"], props["offset"]["maximum"]) == OFFSET_RANGE


@pytest.mark.parametrize("enc", ["u16", "s16", "u32", "s32", "u8_hi", "u8_lo", "sign_magnitude", "sign_magnitude_lo"])
@pytest.mark.parametrize(("scale", "offset"), [(1e9, 1e9), (1e9, -1e9), (1e-9, 0.5), (1e-9, -1e9)])
def test_generic_modbus_extreme_allowed_configs_decode_finite(enc: str, scale: float, offset: float) -> None:
    """At the bounds, the largest raw values of every numeric type still give finite JSON numbers."""
    import json

    config = {
        "blocks": [{"start": 0, "count": 2}],
        "fields": [{"key": "x", "register": 0, "type": enc, "scale": scale, "offset": offset}],
    }
    device = create_device("generic_modbus", config=config)
    for words in ([0xFFFF, 0xFFFF], [0x7FFF, 0xFFFF], [0x8000, 0], [0, 0]):
        value = device.decode({0: words[0], 1: words[1]})["x"]
        assert math.isfinite(value)
        json.dumps(value, allow_nan=False)


class _Overflowing(BaseDevice):
    """A table no validated config can produce (scale 1e308), to test the decoder's own guard."""

    abstract = True  # not a driver
    fields = (
        Field("int_path", 0, scale=1e308),  # integral result: int(inf) raised OverflowError
        Field("float_path", 1, scale=1e308, offset=0.5),  # rounded result: was published as Infinity
        Field("negative", 2, Enc.S16, scale=1e308, offset=0.5),  # -Infinity
        Field("cells", 3, Enc.ARRAY_U16, scale=1e308, offset=0.5, count_register=5, max_items=2),
        Field("fine", 6),
        Field("ratio", None, compute=lambda v: v["fine"] * math.inf),
        Field("undefined", None, compute=lambda v: math.inf - math.inf),  # NaN
        Field("derived", None, compute=lambda v: v["fine"] / 4),
    )


def test_a_non_finite_decoded_value_is_dropped_like_a_missing_one() -> None:
    import json

    device = _Overflowing()
    regs = {0: 5, 1: 5, 2: 0xFFFB, 3: 1, 4: 7, 5: 2, 6: 10}
    values = device.decode(regs)
    assert values == {"fine": 10, "derived": 2.5}
    json.dumps(values, allow_nan=False)
    # a raw value that keeps it finite is still decoded: the guard is on the value, not the field
    assert set(device.decode({0: 1, 1: 0, 6: 10})) == {"int_path", "float_path", "fine", "derived"}
    assert device.fields[1].decode({1: 5}) is None  # direct callers (cli decode) get the same answer


def test_base_device_is_abstract() -> None:
    assert BaseDevice.abstract
    with pytest.raises(ValueError, match="needs a register, a compute function"):
        Field("x", None)


def test_custom_device_guide_example() -> None:
    """The worked example in docs/custom-device-guide.md validates and decodes as the guide says."""
    import json

    config = json.loads((DOCS.parent / "examples" / "rover-yesterday.json").read_text("utf-8"))
    device = create_device("generic_modbus", config=config)
    # Rover history record (vendor table): min/max V x0.1, max currents x0.01, powers W, Ah, Wh
    regs = modbus.parse_read_frame(reply(0xFF, [121, 142, 1050, 230, 150, 40, 28, 9, 370, 96]), 0xF001)
    values = device.decode(regs)
    assert values["battery_min_voltage_yesterday"] == 12.1
    assert values["max_charging_current_yesterday"] == 10.5
    assert values["power_generation_yesterday"] == 370
    guide = (DOCS.parent / "custom-device-guide.md").read_text("utf-8")
    frame = reply(0xFF, [121, 142, 1050, 230, 150, 40, 28, 9, 370, 96]).hex()
    assert frame in guide

"""Simulated devices against the real drivers, through the real Modbus bytes.

Every kind is polled with its driver's full read plan over ``SimulatedLink``
(request frame -> ``device.handle`` -> 20-byte notifications ->
``ResponseAssembler`` -> ``parse_response``) and every decoded field is
compared with the simulator's ``truth``. The simulator writes its registers from
the vendor tables in raw device units, never through the drivers' Field tables,
so a wrong scale or encoding in either shows up here.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest

from blupow_gateway import modbus
from blupow_gateway.devices import BaseDevice, Enc, create_device, recognise
from blupow_gateway.simulator import (
    KINDS,
    Behaviour,
    SimulatedDevice,
    SimulatedModule,
    create_module,
    create_simulated,
    default_mac,
)
from blupow_gateway.simulator import cli as sim_cli
from blupow_gateway.simulator.link import ReplyTimeout, SimulatedLink
from blupow_gateway.simulator.module import DEFAULT_LATE_AFTER, collide, parse_module_spec, valid_frame_end
from tests.plugins.gateway import SimBleLink, SimWorld

# Modbus kinds with a read plan: the RIV4835 cannot finish one (see below); the shunt streams
# notifications instead (tests/gateway/test_shunt.py)
PLANNED = [k for k in KINDS if k != "inverter_riv4835" and KINDS[k].type_name != "renogy_shunt"]


class ManualClock:
    """A clock the test moves by hand, so nothing changes between the requests of one poll."""

    def __init__(self, start: float = 5000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make(kind: str, **options: Any) -> tuple[SimulatedDevice, BaseDevice, SimulatedLink, ManualClock]:
    clock = ManualClock()
    behaviour = options.pop("behaviour", Behaviour(latency=0.0))
    sim = create_simulated(kind, clock=clock, behaviour=behaviour, **options)
    spec = KINDS[kind]
    drv = create_device(spec.type_name, variant=spec.variant)
    return sim, drv, SimulatedLink(sim, timeout=0.05), clock


def tolerance(field_scale: float, register: int | None, precision: int | None) -> float:
    """Half the register resolution; derived values: one unit of their published precision."""
    if register is None:
        return 10.0 ** -(3 if precision is None else precision) + 1e-9
    return field_scale / 2 + 1e-9


def assert_matches_truth(drv: BaseDevice, values: dict[str, Any], truth: dict[str, Any]) -> None:
    assert set(values) == set(truth), (
        f"decoded only: {sorted(set(values) - set(truth))}, truth only: {sorted(set(truth) - set(values))}"
    )
    for key, value in values.items():
        expected = truth[key]
        field = drv.field(key)
        assert field is not None
        if field.enc is Enc.BITS:
            assert sorted(value) == sorted(expected), key
        elif isinstance(expected, bool | str):
            assert value == expected, key
        elif isinstance(expected, list):
            tol = tolerance(field.scale, field.register, field.precision)
            assert len(value) == len(expected), key
            assert all(math.isclose(v, e, abs_tol=tol) for v, e in zip(value, expected, strict=True)), (
                key,
                value,
                expected,
            )
        else:
            tol = tolerance(field.scale, field.register, field.precision)
            assert math.isclose(value, expected, abs_tol=tol), (key, value, expected)


# --- every kind, every field ------------------------------------------------


@pytest.mark.parametrize("cold", [False, True], ids=["mild", "cold"])
@pytest.mark.parametrize("kind", PLANNED)
async def test_full_read_plan_decodes_to_truth(kind: str, cold: bool) -> None:
    sim, drv, link, clock = make(kind, cold=cold)
    for _ in range(6):  # several times of day, static blocks cached after the first poll
        reading = await drv.read(link)
        assert reading.skipped == []
        assert_matches_truth(drv, reading.values, sim.truth)
        clock.advance(47)  # ~1.9 simulated hours
    assert link.timeouts == 0


async def test_wrong_scale_would_be_caught() -> None:
    """The Pro battery writes its current in 0.1 A: decoding it as legacy (0.01 A) must disagree."""
    sim, _, link, _ = make("battery_pro")
    legacy = create_device("renogy_battery", variant="legacy", modbus_id=0xFF)
    values = (await legacy.read(link)).values
    assert abs(sim.truth["current"]) > 1
    assert not math.isclose(values["current"], sim.truth["current"], abs_tol=0.05)


async def test_riv4835_gives_no_model_and_everything_else_decodes() -> None:
    sim, drv, link, _ = make("inverter_riv4835")
    with pytest.raises(ReplyTimeout):
        await link.read_registers(0x20, 4311, 8)
    regs: dict[int, int] = {}
    for block in drv.active_blocks():
        if block.start == 4311:
            continue
        regs.update(zip(block.registers, await link.read_registers(0x20, block.start, block.count), strict=True))
    assert "model" not in sim.truth
    assert_matches_truth(drv, drv.decode(regs), sim.truth)
    assert sim.truth["battery_voltage"] > 40  # 48 V bank


async def test_riv4835_poll_survives_missing_model() -> None:
    _, drv, link, _ = make("inverter_riv4835")
    reading = await drv.read(link)
    assert "battery_soc" in reading.values
    assert any("model" in note for note in reading.skipped)
    # the silent block is not asked again until the next static refresh
    sent = len(link.sent)
    reading = await drv.read(link)
    assert "battery_soc" in reading.values
    starts = [int.from_bytes(frame[2:4], "big") for frame in link.sent[sent:]]
    assert 4311 not in starts


# --- model gaps ---------------------------------------------------------------


@pytest.mark.parametrize("variant", ["standard", "g6"])
async def test_g6_status_block_is_skipped(variant: str) -> None:
    sim = create_simulated("dcc_g6", clock=ManualClock(), behaviour=Behaviour(latency=0.0))
    drv = create_device("renogy_dcc", variant=variant)  # "standard" must notice the -G6 model
    link = SimulatedLink(sim, timeout=0.05)
    for _ in range(2):
        reading = await drv.read(link)
        assert_matches_truth(drv, reading.values, sim.truth)
    starts = [int.from_bytes(frame[2:4], "big") for frame in link.sent]
    assert 0x0120 not in starts
    assert {"output_power", "charging_mode", "ignition"}.isdisjoint(reading.values)
    assert "charging_state" in reading.values  # 0x0120 came with the 0x0100 x 34 read


async def test_g6_register_semantics() -> None:
    sim, _, link, _ = make("dcc_g6")
    words = await link.read_registers(0xFF, 0x0100, 34)  # covers 0x0120/0x0121
    assert words[0x20] == sim.registers[0x0120]
    assert sim.handle(modbus.read_request(0xFF, 0x0120, 8)) is None
    assert sim.handle(modbus.read_request(0xFF, 0x0120, 2)) is None
    with pytest.raises(ReplyTimeout):
        await link.read_registers(0xFF, 0x0120, 8)
    with pytest.raises(modbus.ModbusException) as exc:
        await link.read_registers(0xFF, 0x0100, 35)  # 0x0122 does not exist
    assert exc.value.code == 0x02
    _standard, _, std_link, _ = make("dcc")
    assert len(await std_link.read_registers(0xFF, 0x0120, 8)) == 8


# --- Modbus slave behaviour ---------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "register"),
    [("controller", 0x0200), ("dcc", 0x0130), ("battery", 5060), ("battery_pro", 5300), ("inverter", 4500)],
)
async def test_unmapped_register_gets_exception_02(kind: str, register: int) -> None:
    sim, _, link, _ = make(kind)
    assert sim.modbus_id is not None
    with pytest.raises(modbus.ModbusException) as exc:
        await link.read_registers(sim.modbus_id, register, 1)
    assert exc.value.code == 0x02
    assert exc.value.slave_id == sim.modbus_id


def test_illegal_count_and_function() -> None:
    sim, _, _, _ = make("controller")
    too_many = modbus.with_crc(bytes([0xFF, 0x03, 0x01, 0x00, 0x00, 0x7E]))
    assert sim.handle(too_many) == modbus.with_crc(bytes([0xFF, 0x83, 0x03]))
    unknown = modbus.with_crc(bytes([0xFF, 0x04, 0x01, 0x00, 0x00, 0x01]))
    assert sim.handle(unknown) == modbus.with_crc(bytes([0xFF, 0x84, 0x01]))


async def test_no_reply_for_bad_crc_or_other_id() -> None:
    sim, _, link, _ = make("controller")
    good = modbus.read_request(0xFF, 0x0100, 34)
    assert sim.handle(good) is not None
    assert sim.handle(good[:-1] + bytes([good[-1] ^ 0x01])) is None
    assert sim.handle(modbus.read_request(0x30, 0x0100, 34)) is None
    assert sim.handle(good[:5]) is None
    with pytest.raises(ReplyTimeout):
        await link.read_registers(0x30, 0x0100, 34)
    assert link.timeouts == 1


async def test_corrupted_reply_times_out() -> None:
    _sim, _, link, _ = make("battery", behaviour=Behaviour(latency=0.0, corrupt_replies=True))
    with pytest.raises(ReplyTimeout):
        await link.read_registers(0x30, 5000, 34)


async def test_dropped_replies_time_out() -> None:
    _, _, link, _ = make("inverter", behaviour=Behaviour(latency=0.0, drop_replies=True))
    with pytest.raises(ReplyTimeout):
        await link.read_registers(0x20, 4000, 10)


@pytest.mark.parametrize("junk", [b"", b"main recv da ta[ff] [", b"\xff\x03\x44\x00"])
async def test_chunked_replies_with_junk_reassemble(junk: bytes) -> None:
    _whole_sim, _, whole_link, _ = make("controller", behaviour=Behaviour(latency=0.0, chunk_size=0))
    sim, _, link, _ = make("controller", behaviour=Behaviour(latency=0.0, chunk_size=20, garbage_before_reply=junk))
    reply = sim.handle(modbus.read_request(0xFF, 0x0100, 34))
    assert reply is not None and len(reply) == 73
    chunks = list(sim.chunks(reply))
    assert all(len(c) <= 20 for c in chunks)
    assert b"".join(chunks) == junk + reply
    assert len(chunks) == math.ceil((len(junk) + 73) / 20)
    assert await link.read_registers(0xFF, 0x0100, 34) == await whole_link.read_registers(0xFF, 0x0100, 34)


async def test_link_latency_and_timeout() -> None:
    sim, _, _, _ = make("controller", behaviour=Behaviour(latency=0.03))
    link = SimulatedLink(sim, timeout=1.0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await link.read_registers(0xFF, 0x0100, 1)
    assert loop.time() - started >= 0.025
    slow = SimulatedLink(sim, timeout=0.01)  # the reply would come after the timeout
    with pytest.raises(ReplyTimeout):
        await slow.read_registers(0xFF, 0x0100, 1)


def test_golden_frames_from_the_protocol_notes() -> None:
    """§C.7: the battery-type read of a lithium controller and the RBT100LFP12-BT model read."""
    controller, _, _, _ = make("controller")
    assert controller.handle(modbus.read_request(0xFF, 0xE004, 1)) == bytes.fromhex("ff030200049053")
    battery, _, _, _ = make("battery")
    golden = bytes.fromhex("3003105242543130304c465031322d4254202058bb")
    assert battery.handle(modbus.read_request(0x30, 5122, 8)) == golden


# --- writes -------------------------------------------------------------------


async def test_load_control_switches_bit_15_of_0x0120() -> None:
    sim, drv, link, _ = make("controller")
    before = (await drv.read(link)).values
    assert before["load_on"] is True and before["load_power"] > 0
    await drv.write_control(link, "load", False)
    assert sim.writes == [(0x010A, 0)]
    assert sim.registers[0x0120] & 0x8000 == 0
    after = (await drv.read(link)).values
    assert after["load_on"] is False
    assert after["load_current"] == 0 and after["load_power"] == 0
    assert after["street_light_brightness"] == before["street_light_brightness"]
    assert after["charging_state"] == before["charging_state"]
    assert_matches_truth(drv, after, sim.truth)
    await drv.write_control(link, "load", True)
    assert sim.registers[0x0120] & 0x8000
    assert (await drv.read(link)).values["load_on"] is True


async def test_only_the_load_register_is_writable() -> None:
    sim, _, link, _ = make("controller")
    for register, value, code in ((0x010A, 2, 0x03), (0x0101, 1, 0x02), (0xE004, 1, 0x02), (0x001A, 5, 0x02)):
        with pytest.raises(modbus.ModbusException) as exc:
            await link.write_register(0xFF, register, value)
        assert exc.value.code == code, hex(register)
    with pytest.raises(modbus.ModbusException):
        await link.write_registers(0xFF, 0x0109, [0, 1])
    await link.write_registers(0xFF, 0x010A, [0])
    assert sim.writes == [(0x010A, 0)]
    assert sim.truth["load_on"] is False
    for kind in ("dcc", "battery", "inverter"):
        other, _, other_link, _ = make(kind)
        assert other.modbus_id is not None
        with pytest.raises(modbus.ModbusException):
            await other_link.write_register(other.modbus_id, 0x010A, 1)
        assert other.writes == []


# --- time -------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["controller", "dcc", "battery", "battery_pro"])
async def test_counters_never_decrease(kind: str) -> None:
    sim, drv, link, clock = make(kind)
    # the device's own counters (the ones the gateway integrates are tested in test_energy.py)
    counters = [f.key for f in drv.active_fields() if f.state_class == "total_increasing" and f.integrates is None]
    assert counters
    first = previous = (await drv.read(link)).values
    for _ in range(80):  # 80 x 71 s = ~16 simulated days, including nights and full batteries
        clock.advance(71)
        values = (await drv.read(link)).values
        assert_matches_truth(drv, values, sim.truth)
        for key in counters:
            assert values[key] >= previous[key], (key, previous[key], values[key])
        previous = values
    assert any(previous[k] > first[k] for k in counters)


async def test_clock_going_backwards_changes_nothing() -> None:
    _sim, drv, link, clock = make("controller")
    clock.advance(200)
    ahead = (await drv.read(link)).values
    clock.advance(-150)
    assert (await drv.read(link)).values == ahead


async def test_daily_reset_clears_today_but_not_totals() -> None:
    _sim, drv, link, clock = make("controller", daily_reset=True)
    clock.advance(300)  # 10:00 -> 22:00
    evening = (await drv.read(link)).values
    assert evening["power_generation_today"] > 0
    clock.advance(200)  # past midnight, before sunrise
    night = (await drv.read(link)).values
    assert night["power_generation_today"] == 0
    assert night["power_generation_total"] >= evening["power_generation_total"]
    assert night["total_operating_days"] == evening["total_operating_days"] + 1


async def test_pv_follows_the_sun_and_soc_drifts() -> None:
    _sim, drv, link, clock = make("controller", start_hour=0.0)
    night = (await drv.read(link)).values
    assert night["pv_power"] == 0 and night["charging_state"] == "deactivated"
    assert night["pv_voltage"] == 0
    clock.advance(225)  # midnight -> 09:00, battery not yet full
    morning = (await drv.read(link)).values
    assert morning["pv_power"] > 150 and morning["charging_state"] == "mppt"
    assert morning["battery_soc"] > night["battery_soc"]
    assert morning["power_generation_today"] > 0
    clock.advance(125)  # 14:00: full, the panel only covers the load
    full = (await drv.read(link)).values
    assert full["battery_soc"] == 100 and full["charging_state"] == "floating"
    assert full["pv_power"] < morning["pv_power"]


async def test_frozen_device_stays_constant() -> None:
    for kind in PLANNED:
        sim, drv, link, clock = make(kind, frozen=True)
        first = (await drv.read(link)).values
        snapshot = dict(sim.registers)
        clock.advance(1000)
        assert (await drv.read(link)).values == first, kind
        assert sim.registers == snapshot, kind


def test_same_seed_same_device_different_seed_differs() -> None:
    a, _, _, _ = make("battery", seed=7)
    b, _, _, _ = make("battery", seed=7)
    c, _, _, _ = make("battery", seed=8)
    assert a.registers == b.registers
    assert a.truth["serial_number"] != c.truth["serial_number"]


# --- cold ---------------------------------------------------------------------


async def test_controller_cold_uses_sign_magnitude_bytes() -> None:
    sim, drv, link, _ = make("controller", cold=True, start_hour=4.0)
    values = (await drv.read(link)).values
    hi, lo = sim.registers[0x0103] >> 8, sim.registers[0x0103] & 0xFF
    assert values["battery_temperature"] < 0 and values["controller_temperature"] < 0
    assert lo == 0x80 | -values["battery_temperature"]  # sign bit + magnitude, not two's complement
    assert hi == 0x80 | -values["controller_temperature"]
    assert values["battery_temperature"] == sim.truth["battery_temperature"]


@pytest.mark.parametrize("kind", ["battery", "battery_pro"])
async def test_battery_cold_uses_s16_and_blocks_charging(kind: str) -> None:
    sim, drv, link, _ = make(kind, cold=True, start_hour=4.0)
    values = (await drv.read(link)).values
    assert all(t < 0 for t in values["cell_temperatures"])
    assert sim.registers[5018] >= 0x8000  # two's complement
    assert values["cell_temperatures"][0] == pytest.approx((sim.registers[5018] - 0x10000) / 10)
    assert values["current"] < 0 and sim.registers[5042] >= 0x8000  # discharging in the dark
    assert values["power"] < 0
    assert values["charge_mosfet"] is False and values["charge_enabled"] is False
    assert "charge_under_temperature" in values["protections"]
    assert values["alarm_active"] is True
    assert_matches_truth(drv, values, sim.truth)


async def test_pro_heater_warms_the_cells() -> None:
    _sim, drv, link, clock = make("battery_pro", cold=True)
    start = (await drv.read(link)).values
    clock.advance(10)  # a simulated 24 minutes: the heater switches on
    assert (await drv.read(link)).values["heater_on"] is True
    clock.advance(200)
    warm = (await drv.read(link)).values
    assert min(warm["cell_temperatures"]) > min(start["cell_temperatures"]) + 5
    _legacy, ldrv, llink, lclock = make("battery", cold=True)
    lclock.advance(210)
    assert (await ldrv.read(llink)).values["heater_on"] is False  # no heater on the BT-2 battery


async def test_dcc_cold_stops_lithium_charging() -> None:
    _sim, drv, link, _ = make("dcc", cold=True)
    values = (await drv.read(link)).values
    assert values["battery_temperature"] < 0
    assert values["charging_current"] == 0
    assert values["faults"] == ["low_temperature_charge_stop"] and values["fault_active"] is True


# --- identity and registry ----------------------------------------------------


@pytest.mark.parametrize("kind", list(KINDS))
def test_identity_matches_the_driver(kind: str) -> None:
    spec = KINDS[kind]
    sim = create_simulated(kind, clock=ManualClock())
    assert sim.type_name == spec.type_name
    assert sim.variant == spec.variant
    assert sim.modbus_id == spec.modbus_id == create_device(spec.type_name, variant=spec.variant).modbus_id
    assert sim.mac == default_mac(kind)
    data = sim.manufacturer_data()
    assert len(data) == 1 and len(next(iter(data.values()))) == 4
    assert spec.type_name in recognise(sim.name, list(data))
    if sim.name.startswith("BT-TH-"):
        octets = sim.mac.split(":")
        assert sim.name == "BT-TH-" + "".join(octets[2:])
        assert data == {int(octets[1] + octets[0], 16): bytes.fromhex("".join(octets[2:]))}


def test_builtin_ble_names() -> None:
    pro = create_simulated("battery_pro", clock=ManualClock())
    assert pro.name.startswith("RNGRBP") and len(pro.name) == 16 and pro.name[6:].isdigit()
    assert list(pro.manufacturer_data()) == [0xE14C]
    assert recognise(pro.name, [0xE14C])[0] == "renogy_battery"
    inverter = create_simulated("inverter", clock=ManualClock())
    assert inverter.name.startswith("BTRIC") and inverter.name[5:].isdigit()
    assert recognise(inverter.name)[0] == "renogy_inverter"


def test_factory_options() -> None:
    macs = {default_mac(k) for k in KINDS}
    assert len(macs) == len(KINDS)
    assert default_mac("controller") == default_mac("controller") != default_mac("controller", 1)
    sim = create_simulated("controller", mac="aa:bb:cc:dd:ee:ff", name="BT-TH-custom", modbus_id=17)
    assert (sim.mac, sim.name, sim.modbus_id) == ("AA:BB:CC:DD:EE:FF", "BT-TH-custom", 17)
    assert sim.registers[0x001A] == 17  # the address register holds the module's own id
    assert sim.handle(modbus.read_request(0xFF, 0x0100, 1)) is None  # only answers its id
    assert create_simulated("controller", model="RNG-CTRL-WND10").truth["model"] == "RNG-CTRL-WND10"
    with pytest.raises(ValueError, match="unknown simulated kind"):
        create_simulated("toaster")
    with pytest.raises(ValueError, match="modbus_id"):
        create_simulated("controller", modbus_id=300)
    with pytest.raises(TypeError):
        create_simulated("controller", no_such_option=1)


def test_controller_model_is_space_padded_to_16() -> None:
    sim = create_simulated("controller", clock=ManualClock())
    raw = b"".join(sim.registers[r].to_bytes(2, "big") for r in range(0x000C, 0x0014))
    assert raw == b"RNG-CTRL-RVR40  "


# --- modules: several units behind one Bluetooth module ---------------------------


def module(spec: str, **options: Any) -> tuple[SimulatedModule, SimulatedLink]:
    """A module on a manual clock, answering at once, and an in-memory link to it."""
    mod = create_module(spec, clock=ManualClock(), behaviour=Behaviour(latency=0.0), **options)
    return mod, SimulatedLink(mod, timeout=0.05)


def words(device: SimulatedDevice, start: int, count: int) -> list[int]:
    return [device.registers[r] for r in range(start, start + count)]


def text(device: SimulatedDevice, start: int, count: int) -> str:
    return b"".join(w.to_bytes(2, "big") for w in words(device, start, count)).decode().strip(" \x00")


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (
            "hub:battery*4,controller@97",
            [
                ("battery", 48, ()),
                ("battery", 49, ()),
                ("battery", 50, ()),
                ("battery", 51, ()),
                ("controller", 97, ()),
            ],
        ),
        ("chain:battery@33,battery@34,battery@35", [("battery", 33, ()), ("battery", 34, ()), ("battery", 35, ())]),
        (
            "hub:battery*3,battery@51+silent",
            [("battery", 48, ()), ("battery", 49, ()), ("battery", 50, ()), ("battery", 51, ("silent",))],
        ),
        (
            "hub:battery,battery+late,battery+wrong-id",
            [("battery", 48, ()), ("battery", 49, ("late",)), ("battery", 50, ("wrong-id",))],
        ),
        # hub defaults, first free: controllers/DC-DC chargers 96 then 97, inverter 32
        (
            "hub:controller,dcc,inverter,battery",
            [("controller", 96, ()), ("dcc", 97, ()), ("inverter", 32, ()), ("battery", 48, ())],
        ),
        ("hub:dcc,controller", [("dcc", 96, ()), ("controller", 97, ())]),
        ("chain:controller*2,battery", [("controller", 16, ()), ("controller", 17, ()), ("battery", 48, ())]),
        # explicit IDs are reserved first, wherever they stand
        ("hub:battery*2,battery@49", [("battery", 48, ()), ("battery", 50, ()), ("battery", 49, ())]),
        (
            "chain:battery*2@0x40+silent+late",
            [("battery", 64, ("silent", "late")), ("battery", 65, ("silent", "late"))],
        ),
        (" hub: battery , inverter@33 ,", [("battery", 48, ()), ("inverter", 33, ())]),  # spaces, a stray comma
        ("hub:battery*16", [("battery", i, ()) for i in range(48, 64)]),
    ],
)
def test_module_spec_parses_with_default_ids(spec: str, expected: list[tuple[str, int, tuple[str, ...]]]) -> None:
    topology, units = parse_module_spec(spec)
    assert topology == spec.strip().split(":")[0]
    assert [(u.kind, u.modbus_id, u.faults) for u in units] == expected


KNOWN = "controller, dcc, dcc_g6, battery, battery_pro, inverter, inverter_riv4835"


@pytest.mark.parametrize(
    ("spec", "error"),
    [
        ("hub:", "names no unit, e.g. hub:battery*2,controller"),
        ("chain: , ", "names no unit, e.g. chain:battery*2,controller"),
        ("hub:battery@48,controller@48", "Modbus ID 48 is given to two units (battery and controller)"),
        ("chain:battery*2@33,battery@34", "Modbus ID 34 is given to two units (battery and battery)"),
        ("hub:battery@0", "Modbus ID 0 in 'battery@0' is outside 1..247"),
        ("hub:battery@248", "Modbus ID 248 in 'battery@248' is outside 1..247"),
        ("hub:battery@0xFF", "Modbus ID 255 in 'battery@0xFF' is outside 1..247"),
        ("chain:battery*3@246", "Modbus ID 248 in 'battery*3@246' is outside 1..247"),
        ("hub:toaster", f"unknown device kind 'toaster' (known: {KNOWN})"),
        ("hub:battery,toaster@5", f"unknown device kind 'toaster' (known: {KNOWN})"),
        ("hub:battery+slow", "unknown fault 'slow' in 'battery+slow' (known: silent, late, wrong-id)"),
        ("hub:battery+", "unknown fault '' in 'battery+' (known: silent, late, wrong-id)"),
        ("hub:battery*0", "count 0 in 'battery*0' is outside 1..16"),
        ("hub:battery*17", "count 17 in 'battery*17' is outside 1..16"),
        ("hub:battery*10,battery*7", "a module carries at most 16 units, this one has 17"),
        ("hub:battery%", "bad unit 'battery%': expected KIND[*COUNT][@ID][+FAULT...]"),
        ("hub:battery@x", "bad unit 'battery@x': expected KIND[*COUNT][@ID][+FAULT...]"),
        ("hub:battery+silent@48", "bad unit 'battery+silent@48': expected KIND[*COUNT][@ID][+FAULT...]"),
        ("chain:dcc", "no default Modbus ID for dcc in a chain: give one with @ID"),
        ("hub:controller*3", "no free default Modbus ID for controller behind a hub (96, 97 taken): give one with @ID"),
        (
            "hub:inverter@32,inverter",
            "no free default Modbus ID for inverter behind a hub (32 taken): give one with @ID",
        ),
    ],
)
def test_module_spec_refused_with_one_clear_line(spec: str, error: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError) as exc:
        parse_module_spec(spec)
    assert str(exc.value) == error
    # blupow-sim refuses it before starting anything: exit 2, one line naming the value
    assert sim_cli.main(["--devices", "controller", "--devices", spec]) == 2
    out = capsys.readouterr()
    assert out.err == f"blupow-sim: error: --devices {spec.strip()!r}: {error}\n"
    assert out.out == ""


def test_module_identity_is_one_bt2() -> None:
    mod, _ = module("hub:battery*2,controller@97")
    assert mod.mac == default_mac("hub") and mod.name == "BT-TH-" + "".join(mod.mac.split(":")[2:])
    data = mod.manufacturer_data()
    octets = mod.mac.split(":")
    assert data == {int(octets[1] + octets[0], 16): bytes.fromhex("".join(octets[2:]))}
    assert mod.service_uuids == create_simulated("controller").service_uuids
    assert "renogy_battery" in recognise(mod.name, list(data))
    assert all(unit.mac == mod.mac for unit in mod.units.values())  # units share the module's MAC
    assert mod.describe() == "48=renogy_battery/legacy,49=renogy_battery/legacy,97=renogy_charge_controller"
    with pytest.raises(KeyError, match=r"no unit at Modbus ID 50 behind .* \(units: 48, 49, 97\)"):
        mod.unit(50)
    with pytest.raises(ValueError, match="answers at 48"):
        SimulatedModule("hub", {49: mod.units[48]})


async def test_module_routes_each_request_to_the_unit_at_its_id() -> None:
    mod, link = module("hub:battery*2,controller@97")
    b48, b49, controller = mod.units[48], mod.units[49], mod.units[97]
    assert await link.read_registers(48, 5110, 8) == words(b48, 5110, 8)
    assert await link.read_registers(49, 5110, 8) == words(b49, 5110, 8)
    assert await link.read_registers(97, 0x000C, 8) == words(controller, 0x000C, 8)
    assert (b48.requests, b49.requests, controller.requests) == (1, 1, 1)
    reply = mod.respond(modbus.read_request(49, 5122, 8))
    assert reply is not None and reply[0][0] == 49 and modbus.crc_ok(reply[0])  # the reply echoes the ID asked
    with pytest.raises(modbus.ModbusException) as exc:  # present, but a battery has no controller registers
        await link.read_registers(48, 0x000C, 8)
    assert (exc.value.code, exc.value.slave_id) == (0x02, 48)


async def test_module_absent_id_is_silence() -> None:
    mod, link = module("hub:battery*2,controller@97")
    for absent in (47, 50, 96, 0x20):
        assert mod.respond(modbus.read_request(absent, 5000, 1)) is None
        with pytest.raises(ReplyTimeout):
            await link.read_registers(absent, 5000, 1)
    assert all(unit.requests == 0 for unit in mod.units.values())
    corrupt = modbus.read_request(48, 5000, 1)
    assert mod.respond(corrupt[:-1] + bytes([corrupt[-1] ^ 1])) is None


async def test_module_0xff_collides_with_two_units_never_a_frame() -> None:
    mod, link = module("hub:battery*2,controller@97")
    request = modbus.Request.read(0xFF, 5122, 8)
    answer = mod.respond(request.frame)
    assert answer is not None
    garbage, _delay = answer
    assert valid_frame_end(garbage) is None and not modbus.crc_ok(garbage)
    assert modbus.ResponseAssembler(request, check_id=False).feed(garbage) is None
    assert all(unit.requests == 1 for unit in mod.units.values())  # every unit answered at once
    with pytest.raises(ReplyTimeout):
        await link.read_registers(0xFF, 5122, 8)
    assert mod.collisions == 2


def test_collision_of_identical_replies_is_still_garbage() -> None:
    """Two batteries with the same serial asked at 0xFF send byte-identical frames; ORed, that is a valid frame."""
    mod, _ = module("chain:battery*2", identical_serials=True)
    request = modbus.Request.read(0xFF, 5110, 8)
    replies = [unit.answer(request) for unit in mod.units.values()]
    assert replies[0] is not None and replies[0] == replies[1] and modbus.crc_ok(replies[0])
    garbage = collide([replies[0], replies[0]])
    assert valid_frame_end(garbage) is None and len(garbage) == len(replies[0])
    answer = mod.respond(request.frame)
    assert answer is not None and valid_frame_end(answer[0]) is None


async def test_module_0xff_with_one_unit_is_an_ordinary_reply() -> None:
    mod, link = module("chain:battery@33")
    answer = mod.respond(modbus.read_request(0xFF, 5122, 8))
    assert answer is not None and answer[0][0] == 0xFF and modbus.crc_ok(answer[0])
    assert await link.read_registers(0xFF, 5122, 8) == await link.read_registers(33, 5122, 8)
    # only units that answer take part: one silent unit leaves the other's reply clean
    quiet, quiet_link = module("hub:battery,battery+silent")
    assert await quiet_link.read_registers(0xFF, 5122, 8) == words(quiet.units[48], 5122, 8)
    assert quiet.collisions == 0 and mod.collisions == 0


async def test_module_silent_unit_never_answers_its_siblings_do() -> None:
    mod, link = module("hub:battery*3,battery@51+silent")
    with pytest.raises(ReplyTimeout):
        await link.read_registers(51, 5000, 1)
    assert mod.units[51].requests == 0
    assert await link.read_registers(50, 5000, 1) == words(mod.units[50], 5000, 1)


async def test_module_late_unit_answers_after_any_timeout() -> None:
    mod, link = module("hub:battery,battery+late")
    answer = mod.respond(modbus.read_request(49, 5000, 1))
    assert answer is not None and answer[1] == DEFAULT_LATE_AFTER == 5.0
    with pytest.raises(ReplyTimeout):
        await link.read_registers(49, 5000, 1)
    with pytest.raises(ReplyTimeout):  # a link's latency override never makes a late unit punctual
        await SimulatedLink(mod, timeout=0.05, latency=0.0).read_registers(49, 5000, 1)
    assert await link.read_registers(48, 5000, 1) == words(mod.units[48], 5000, 1)
    soon, _ = module("hub:battery,battery+late", late_after=0.1)  # configurable
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await SimulatedLink(soon, timeout=1.0).read_registers(49, 5000, 1) == words(soon.units[49], 5000, 1)
    assert loop.time() - started >= 0.09


async def test_module_wrong_id_unit_answers_a_valid_frame_for_another_id() -> None:
    mod, link = module("hub:battery,battery+wrong-id")
    request = modbus.read_request(49, 5122, 8)
    answer = mod.respond(request)
    assert answer is not None
    reply = answer[0]
    mod.set_faults(49, [])  # what it says without the fault
    correct = mod.units[49].handle(request)
    assert correct is not None
    assert reply[0] == 50 and modbus.crc_ok(reply) and reply[1:-2] == correct[1:-2]
    mod.set_faults(49, ["wrong-id"])
    with pytest.raises(ReplyTimeout):  # the assembler takes only the ID it asked
        await link.read_registers(49, 5122, 8)


async def test_module_faults_change_at_run_time() -> None:
    mod, link = module("hub:battery*2")
    mod.set_faults(49, ["silent"])
    assert mod.describe() == "48=renogy_battery/legacy,49=renogy_battery/legacy+silent"
    with pytest.raises(ReplyTimeout):
        await link.read_registers(49, 5000, 1)
    mod.set_faults(49, [])
    assert await link.read_registers(49, 5000, 1) == words(mod.units[49], 5000, 1)
    assert mod.describe() == "48=renogy_battery/legacy,49=renogy_battery/legacy"
    with pytest.raises(ValueError, match="unknown fault 'slow'"):
        mod.set_faults(48, ["slow"])


async def test_module_units_decode_to_their_own_truth() -> None:
    mod, link = module("hub:battery*2,controller@97,inverter,dcc")
    assert sorted(mod.units) == [32, 48, 49, 96, 97]
    for modbus_id, unit in mod.units.items():
        drv = create_device(unit.type_name, variant=unit.variant, modbus_id=modbus_id)
        reading = await drv.read(link)
        assert reading.skipped == [], modbus_id
        assert_matches_truth(drv, reading.values, unit.truth)
    assert mod.units[48].truth["cycle_count"] != mod.units[49].truth["cycle_count"]  # two batteries, not one
    assert link.timeouts == 0


def test_module_units_carry_the_identity_registers_for_probing() -> None:
    mod, _ = module("hub:battery*3,controller@97,dcc,inverter")
    for modbus_id in (48, 49, 50):
        battery = mod.units[modbus_id]
        assert text(battery, 5122, 8) == battery.truth["model"] == "RBT100LFP12-BT"
        assert text(battery, 5110, 8) == battery.truth["serial_number"]
        assert battery.registers[5223] == modbus_id  # the device address register
    serials = {text(mod.units[i], 5110, 8) for i in (48, 49, 50)}
    assert len(serials) == 3  # distinct by default
    assert text(mod.units[97], 0x000C, 8) == "RNG-CTRL-RVR40" and mod.units[97].registers[0x001A] == 97
    assert text(mod.units[96], 0x000C, 8) == "RBC50D1S-G1" and mod.units[96].registers[0x001A] == 96
    assert text(mod.units[32], 4311, 8) == "RIV1230RCH-SPS" and mod.units[32].registers[4109] == 32
    same, _ = module("chain:battery@33,battery@34,battery@35", identical_serials=True)
    assert len({text(u, 5110, 8) for u in same.units.values()}) == 1  # as real daisy chains can report
    assert len({u.truth["serial_number"] for u in same.units.values()}) == 1
    assert len({u.truth["cycle_count"] for u in same.units.values()}) == 3  # still three batteries


def test_module_behaviour_splits_between_the_ble_side_and_the_units() -> None:
    mod = create_module("hub:battery*2", latency=0.02, chunk_size=0, garbage_before_reply="dead", late_after=1.5)
    assert (mod.behaviour.chunk_size, mod.behaviour.garbage_before_reply, mod.late_after) == (0, b"\xde\xad", 1.5)
    assert all(u.behaviour.latency == 0.02 and u.behaviour.late_after == 0 for u in mod.units.values())
    assert list(mod.chunks(b"\x01\x02")) == [b"\xde\xad\x01\x02"]
    template = Behaviour(latency=0.0)
    shared = create_module("hub:battery*2", behaviour=template)
    shared.set_faults(48, ["silent"])
    assert not shared.units[49].behaviour.drop_replies and not template.drop_replies  # a copy per unit


async def test_sim_world_module_reads_two_ids_over_one_link() -> None:
    world = SimWorld(connect_delay=0.0, latency=0.0)
    mod = world.add_module("hub:battery*2,controller@97")
    assert world.sims[mod.mac] is mod and mod.mac == default_mac("hub")
    assert world.add_module("chain:battery").mac == default_mac("chain")
    assert world.add_module("hub:battery").mac == default_mac("hub", 1)
    link = SimBleLink(world, mod.mac)
    await link.connect()
    assert await link.read_registers(48, 5110, 8) == words(mod.units[48], 5110, 8)
    assert await link.read_registers(97, 0x000C, 8) == words(mod.units[97], 0x000C, 8)
    assert world.connects[mod.mac] == 1 and world.reads[mod.mac] == 2
    assert {r.address for r in await world.scan(0.01, None)} >= {mod.mac}

"""Renogy Smart Shunt 300 (issue 13 item 1): frame reassembly, validation, golden frames, and the
gateway over real bleak and the fake BlueZ streaming ~8.5 frames/s.

Golden frames S1, S3-S5 come from the reference (renogy-hub-and-shunt §2.5), written out
by hand here, not by the simulator, so a wrong offset or scale in the shared table fails.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from blupow_gateway import cli
from blupow_gateway.devices import create_device, recognise
from blupow_gateway.devices.renogy_shunt import FRAME_LEN, RenogyShunt, ShuntFrameDecoder
from blupow_gateway.settings import DeviceOption
from blupow_gateway.simulator.fake_bluez import FakeBlueZ
from blupow_gateway.simulator.shunt import POISON_CURRENT, SimulatedShunt, build_frame
from blupow_gateway.store import mac_id
from tests.plugins.gateway import GatewayFactory, wait_until

S1 = bytes.fromhex(
    "42570119 01001630 a0240806 a1230836 a202137f a4ffddf1 a60033e5 a6100000 a70003c5 a7100000 "
    "a80bc6b0 a9000001 aa04e800 f8010000".replace(" ", "")
)


def s3(header: str = "42570119") -> bytes:
    frame = bytearray(FRAME_LEN)
    frame[0:4] = bytes.fromhex(header)
    frame[21:24] = bytes.fromhex("ffeae8")
    frame[25:28] = bytes.fromhex("003390")
    frame[30:32] = bytes.fromhex("332c")
    frame[34:36] = bytes.fromhex("0356")
    frame[66:68] = bytes.fromhex("00f5")
    return bytes(frame)


S3_VALUES = {
    "battery_voltage": 13.2,
    "current": -5.4,
    "power": -71.28,
    "starter_voltage": 13.1,
    "battery_soc": 85.4,
    "battery_temperature": 24.5,
}
S4 = s3("4257010b")
S5 = bytes.fromhex("61d20000") + s3()


def shunt() -> RenogyShunt:
    device = create_device("renogy_shunt")
    assert isinstance(device, RenogyShunt)
    return device


def with_bytes(frame: bytes, offset: int, data: str) -> bytes:
    out = bytearray(frame)
    out[offset : offset + len(bytes.fromhex(data))] = bytes.fromhex(data)
    return bytes(out)


# --- golden frames and validation ---


def test_golden_s3_decodes_to_the_reference_values() -> None:
    assert shunt().decode_frame(s3()) == (S3_VALUES, None)


def test_golden_s4_history_is_rejected_and_s5_prefixed_parses_like_s3() -> None:
    assert shunt().decode_frame(S4) == ({}, "history")
    assert shunt().decode_frame(S5) == (S3_VALUES, None)


def test_golden_s1_partial_capture_decodes_without_temperature() -> None:
    values, reason = shunt().decode_frame(S1)
    assert reason is None
    assert values == {
        "battery_voltage": 13.285,
        "current": -8.719,
        "power": -115.83,
        "starter_voltage": 0.0,
        "battery_soc": 96.5,
    }


@pytest.mark.parametrize(
    ("offset", "data", "reason"),
    [
        (25, "00176f", "implausible_battery_voltage"),  # 5.999 V
        (25, "013881", "implausible_battery_voltage"),  # 80.001 V
        (21, "07a121", "implausible_current"),  # +500.001 A
        (21, "f85edf", "implausible_current"),  # -500.001 A
    ],
)
def test_implausible_voltage_or_current_rejects_the_whole_frame(offset: int, data: str, reason: str) -> None:
    assert shunt().decode_frame(with_bytes(s3(), offset, data)) == ({}, reason)
    values, why = shunt().decode_frame(with_bytes(s3(), 25, "001770"))  # 6.000 V: the limit itself stands
    assert why is None and values["battery_voltage"] == 6.0


def test_implausible_power_rejects_the_whole_frame() -> None:
    # 79 V x 130 A = 10.27 kW: each value plausible, the power is not
    frame = with_bytes(with_bytes(s3(), 25, "0134b8"), 21, "01fbd0")
    assert shunt().decode_frame(frame) == ({}, "implausible_power")


def test_soc_above_100_and_temperature_out_of_range_or_absent_are_left_out() -> None:
    device = shunt()
    values, _ = device.decode_frame(with_bytes(with_bytes(s3(), 34, "03e9"), 66, "03e9"))  # 100.1 %, 100.1 °C
    assert "battery_soc" not in values and "battery_temperature" not in values
    assert values["battery_voltage"] == 13.2
    values, _ = device.decode_frame(with_bytes(s3(), 66, "8000"))  # no probe fitted
    assert "battery_temperature" not in values
    values, _ = device.decode_frame(with_bytes(s3(), 34, "03e8"))
    assert values["battery_soc"] == 100.0


def test_short_and_truncated_frames() -> None:
    device = shunt()
    values, reason = device.decode_frame(s3()[:40])
    assert reason is None and "battery_temperature" not in values and values["battery_soc"] == 85.4
    assert device.decode_frame(s3()[:27]) == ({}, "truncated")


# --- reassembly ---


def test_every_split_point_gives_the_same_frames() -> None:
    stream = s3() + S5
    for cut in range(1, len(stream)):
        decoder = ShuntFrameDecoder()
        frames = decoder.feed(stream[:cut]) + decoder.feed(stream[cut:])
        assert frames == [s3(), s3()], cut
        assert decoder.counters.get("short", 0) == 0, cut  # a split is never taken for a short frame
        assert decoder.buffered == 0


def test_byte_by_byte_with_noise_history_and_prefixes() -> None:
    stream = b"\x00junk" + S5 + S4 + b"\x61\xd2\x00\x07" + s3()[:60] + s3() + b"\x99" * 7 + s3()
    decoder = ShuntFrameDecoder()
    frames = [f for byte in stream for f in decoder.feed(bytes([byte]))]
    assert frames == [s3(), s3()[:60], s3(), s3()]
    c = decoder.counters
    assert (c["history"], c["short"], c["prefixed"], c["noise_bytes"], c["resyncs"]) == (1, 1, 2, 12, 2)


def test_truncated_frame_before_the_next_header_is_dropped() -> None:
    decoder = ShuntFrameDecoder()
    assert decoder.feed(s3()[:20] + s3()) == [s3()]
    assert decoder.counters["truncated"] == 1


def test_noise_never_grows_the_buffer() -> None:
    decoder = ShuntFrameDecoder()
    for _ in range(1000):
        assert decoder.feed(b"\x42\x57\x01\x0b" + b"\x11" * 300) == []  # a history frame with a long body
        assert decoder.feed(b"\x33" * 500) == []
        assert decoder.buffered < FRAME_LEN
    assert decoder.feed(s3()) == [s3()]


def test_reset_drops_half_a_frame() -> None:
    decoder = ShuntFrameDecoder()
    assert decoder.feed(s3()[:55]) == []
    decoder.reset()
    # the rest of the old frame, then a new one: the halves are never joined
    assert decoder.feed(s3()[55:] + s3()) == [s3()]
    assert decoder.counters["dropped_partial"] == 1


def test_the_driver_keeps_only_good_frames_and_counts_the_rest() -> None:
    device = shunt()
    bad = with_bytes(s3(), 25, "017318")  # 95 V
    device.feed(S5 + S4 + bad + s3()[:20] + s3())
    assert device.diagnostics() == {
        "good": 2,
        "history": 1,
        "prefixed": 1,
        "rejected_implausible_battery_voltage": 1,
        "truncated": 1,
    }


# --- identity, docs, CLI ---


def test_scan_recognises_the_shunt_and_it_is_described() -> None:
    assert recognise("RTMShunt30017000621") == ["renogy_shunt"]
    assert "renogy_shunt" not in recognise("BT-TH-12345678")
    described = RenogyShunt.describe()
    assert described["protocol"] == "notify_stream" and described["name_patterns"] == ["RTMShunt300*"]


def test_cli_decodes_a_frame_and_refuses_a_rejected_one(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["decode", "--type", "renogy_shunt", S5.hex()]) == 0
    assert json.loads(capsys.readouterr().out) == S3_VALUES
    assert cli.main(["decode", "--type", "renogy_shunt", S4.hex()]) == 2
    assert "history" in capsys.readouterr().err


def test_the_simulator_writes_what_the_golden_frame_says() -> None:
    assert build_frame({k: v for k, v in S3_VALUES.items() if k != "power"})[20:] != s3()[20:]  # tags around
    values, reason = shunt().decode_frame(build_frame(dict(S3_VALUES)))
    assert reason is None and values == S3_VALUES


# --- the gateway over real bleak and the fake BlueZ ---

FAST = {"poll_interval": 0.5, "connect_timeout": 3, "request_timeout": 0.5}


def add_shunt(fake_bluez: FakeBlueZ, **options: Any) -> SimulatedShunt:
    sim = fake_bluez.add("shunt", frozen=True, **options)
    assert isinstance(sim, SimulatedShunt)
    return sim


async def test_the_gateway_publishes_the_shunt(
    fake_bluez: FakeBlueZ, gateway_factory: GatewayFactory, mqtt_recorder: Any
) -> None:
    sim = add_shunt(fake_bluez)
    recorder = mqtt_recorder((f"blupow/{mac_id(sim.mac)}/state",))
    gateway = await gateway_factory((DeviceOption(sim.mac, "renogy_shunt"),), ble=True, **FAST)
    unit = gateway.scheduler.unit(sim.mac)
    assert unit is not None
    await wait_until(lambda: unit.stats.successes >= 3, 20, "three polls")
    state = (await recorder.await_topic(f"blupow/{mac_id(sim.mac)}/state", 5)).json()
    assert {k: state[k] for k in sim.truth} == sim.truth
    assert set(sim.truth) == {
        "battery_voltage",
        "current",
        "power",
        "starter_voltage",
        "battery_soc",
        "battery_temperature",
    }
    assert fake_bluez.peripheral(sim.mac).stats.connects == 1  # one sustained link
    assert fake_bluez.peripheral(sim.mac).stats.writes == []  # nothing is ever written
    listed = await gateway.processor.handle(json.dumps({"command": "list_devices"}).encode())
    (entry,) = [d for d in listed.to_json()["data"]["devices"] if d["mac_address"] == sim.mac]
    assert entry["diagnostics"]["good"] >= 3


async def test_faulty_frames_are_never_published_and_are_counted(
    fake_bluez: FakeBlueZ, gateway_factory: GatewayFactory, mqtt_recorder: Any
) -> None:
    sim = add_shunt(
        fake_bluez, faults=("split", "prefixed", "history", "truncated", "implausible", "noise"), fault_every=2
    )
    topic = f"blupow/{mac_id(sim.mac)}/state"
    recorder = mqtt_recorder((topic,))
    gateway = await gateway_factory((DeviceOption(sim.mac, "renogy_shunt"),), ble=True, **FAST)
    unit = gateway.scheduler.unit(sim.mac)
    assert unit is not None and unit.device is not None
    await wait_until(lambda: unit.stats.successes >= 4, 20, "four polls")
    await wait_until(lambda: all(sim.sent[k] for k in ("history", "truncated", "implausible")), 10, "every fault")
    diag = unit.device.diagnostics()
    assert diag["history"] and diag["truncated"] and diag["rejected_implausible_battery_voltage"]
    assert diag["prefixed"] and diag["resyncs"] and diag["good"]
    states = [m.json() for m in recorder.on(topic)]
    assert states
    for state in states:  # every published state is the truth of a good frame, nothing else
        assert {k: state.get(k) for k in sim.truth} == sim.truth


async def test_a_link_drop_mid_frame_never_joins_the_halves(
    fake_bluez: FakeBlueZ, gateway_factory: GatewayFactory, mqtt_recorder: Any
) -> None:
    sim = add_shunt(fake_bluez)
    topic = f"blupow/{mac_id(sim.mac)}/state"
    recorder = mqtt_recorder((topic,))
    gateway = await gateway_factory((DeviceOption(sim.mac, "renogy_shunt"),), ble=True, **FAST)
    unit = gateway.scheduler.unit(sim.mac)
    assert unit is not None and unit.device is not None
    await wait_until(lambda: unit.stats.successes >= 1, 20, "first poll")
    sim.cut_link(after=24)  # header and the poison current, then the link drops
    peripheral = fake_bluez.peripheral(sim.mac)
    await wait_until(lambda: peripheral.stats.drops == 1, 10, "link dropped")
    await wait_until(lambda: peripheral.stats.connects >= 2 and unit.stats.successes >= 3, 30, "reconnected")
    diag = unit.device.diagnostics()
    assert diag["dropped_partial"] == 1  # the half frame was thrown away at the boundary
    assert diag["resyncs"] >= 1  # and the new link's first bytes (the old frame's tail) skipped as noise
    assert all(m.json().get("current") != POISON_CURRENT for m in recorder.on(topic))
    assert unit.values["current"] == sim.truth["current"]

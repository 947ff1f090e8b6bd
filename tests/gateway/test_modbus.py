"""Modbus RTU codec: CRC, requests, reply parsing, reassembly from BLE notifications."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blupow_gateway import modbus
from blupow_gateway.modbus import FrameError, ModbusException, Request, ResponseAssembler

# Golden request vectors from the protocol notes (§B.2), each taken from a
# capture or a vendor document, independently of this implementation.
GOLDEN_REQUESTS = [
    (modbus.read_request(0xFF, 0x0100, 0x22), "ff030100 0022d1f1"),
    (modbus.read_request(0xFF, 0x000C, 8), "ff03000c000891d1"),
    (modbus.read_request(0xFF, 0x001A, 1), "ff03001a0001b013"),
    (modbus.read_request(0xFF, 0xE004, 1), "ff03e0040001e7d5"),
    (modbus.read_request(0x30, 0x13B2, 7), "300313b20007a48a"),
    (modbus.read_request(0xFF, 5000, 17), "ff031388001114b6"),
    (modbus.read_request(0x20, 4000, 8), "20030fa00008418b"),
    (modbus.write_single_request(0xFF, 0x010A, 1), "ff06010a00017c2a"),
    (modbus.write_single_request(0xFF, 0x010A, 0), "ff06010a0000bdea"),
    (modbus.read_request(0x01, 0x000A, 1), "0103000a0001a408"),
    (modbus.write_single_request(0x01, 0x010A, 1), "0106010a000169f4"),
]


@pytest.mark.parametrize(("frame", "expected"), GOLDEN_REQUESTS)
def test_golden_requests(frame: bytes, expected: str) -> None:
    assert frame.hex() == expected.replace(" ", "")


def test_crc_known_vector() -> None:
    # CRC-16/MODBUS check value for "123456789" is 0x4B37; 01 03 00 00 00 01 -> 84 0A on the wire.
    assert modbus.crc16(b"123456789") == 0x4B37
    assert modbus.with_crc(bytes.fromhex("010300000001"))[-2:] == bytes.fromhex("840a")


def test_write_multiple_request_layout() -> None:
    frame = modbus.write_multiple_request(0xFF, 0xE005, [155, 150])
    assert frame[:7] == bytes.fromhex("ff10e0050002 04".replace(" ", ""))
    assert frame[7:11] == bytes.fromhex("009b0096")
    assert modbus.crc_ok(frame)
    parsed = modbus.parse_request(frame)
    assert modbus.write_multiple_values(parsed) == [155, 150]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: modbus.read_request(256, 0, 1), "Modbus id"),
        (lambda: modbus.read_request(1, 0, 0), "register count"),
        (lambda: modbus.read_request(1, 0, 126), "register count"),
        (lambda: modbus.read_request(1, 70000, 1), "start register"),
        (lambda: modbus.write_single_request(1, 0, 70000), "value"),
        (lambda: modbus.write_multiple_request(1, 0, []), "value count"),
    ],
)
def test_request_arguments_are_checked(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


def test_parse_read_reply() -> None:
    request = Request.read(0xFF, 0xE004, 1)
    assert modbus.parse_response(bytes.fromhex("ff030200049053"), request) == [4]


def test_parse_write_echo() -> None:
    request = Request.write_single(0xFF, 0x010A, 1)
    assert modbus.parse_response(request.frame, request) == 1
    other = Request.write_single(0xFF, 0x010A, 0)
    with pytest.raises(FrameError, match="echo"):
        modbus.parse_response(request.frame, other)


def test_write_multiple_reply() -> None:
    request = Request.write_multiple(0xFF, 0xE005, [1, 2, 3])
    reply = modbus.with_crc(bytes.fromhex("ff10e0050003"))
    assert modbus.parse_response(reply, request) == 3


def test_exception_frame_becomes_typed_error() -> None:
    request = Request.read(0xFF, 0x0100, 34)
    with pytest.raises(ModbusException) as info:
        modbus.parse_response(bytes.fromhex("ff8302a101"), request)
    assert info.value.code == 2
    assert info.value.function == 0x03
    assert "illegal data address" in str(info.value)


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        ("ff0302000490", "CRC"),  # truncated: CRC bytes missing
        ("ff030200049054", "CRC"),  # bit error in CRC
        ("ff0302000590 53", "CRC"),  # bit error in data
        (modbus.with_crc(bytes.fromhex("fe03020004")).hex(), "expected 0xff"),  # other slave
        ("ff030400040005" + "0000", "CRC"),
        ("ff0302", "too short"),
        (modbus.with_crc(bytes.fromhex("ff04020004")).hex(), "function"),  # not what was asked
    ],
)
def test_bad_replies_are_rejected(frame: str, message: str) -> None:
    request = Request.read(0xFF, 0xE004, 1)
    raw = bytes.fromhex(frame.replace(" ", ""))
    with pytest.raises(FrameError, match=message):
        modbus.parse_response(raw, request)


def test_wrong_byte_count_is_rejected_even_with_valid_crc() -> None:
    request = Request.read(0xFF, 0xE004, 2)  # asked for two words, got one
    with pytest.raises(FrameError, match="byte count"):
        modbus.parse_response(bytes.fromhex("ff030200049053"), request)


def test_parse_read_frame_with_and_without_id() -> None:
    frame = bytes.fromhex("3003105242543130304c465031322d4254202058bb")
    regs = modbus.parse_read_frame(frame, 5122)
    assert regs[5122] == 0x5242 and len(regs) == 8
    assert modbus.parse_read_frame(frame, 5122, slave_id=0x30) == regs
    with pytest.raises(FrameError):
        modbus.parse_read_frame(frame, 5122, slave_id=0xFF)


ROVER_73 = bytes.fromhex(
    "ff0344005700810102211900000000000000ab00cc00230000007c0090044c0000008f00000022002201b0000002bf"
    "0000059b000015e700000000000680360000000000020000cab2"
)


def _chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def test_assembler_whole_notification() -> None:
    asm = ResponseAssembler(Request.read(0xFF, 0x0100, 34))
    assert asm.feed(ROVER_73) == ROVER_73


def test_assembler_20_byte_chunks() -> None:
    asm = ResponseAssembler(Request.read(0xFF, 0x0100, 34))
    parts = _chunks(ROVER_73, 20)
    assert len(parts) == 4
    results = [asm.feed(p) for p in parts]
    assert results[:-1] == [None, None, None]
    assert results[-1] == ROVER_73


def test_assembler_skips_leading_junk_and_stale_frames() -> None:
    asm = ResponseAssembler(Request.read(0xFF, 0x0100, 34))
    stale = bytes.fromhex("ff030200049053")  # a late reply to a different (1-word) request
    ack = b"main recv data[ff] ["
    for part in _chunks(ack + stale + ROVER_73, 20):
        frame = asm.feed(part)
    assert frame == ROVER_73
    assert asm.discarded == len(ack) + len(stale)


def test_assembler_never_returns_corrupt_frame() -> None:
    corrupt = bytearray(ROVER_73)
    corrupt[10] ^= 0x01
    asm = ResponseAssembler(Request.read(0xFF, 0x0100, 34))
    assert asm.feed(bytes(corrupt)) is None
    # the genuine frame arriving afterwards is still found
    assert asm.feed(ROVER_73) == ROVER_73


def test_assembler_returns_exception_frames() -> None:
    asm = ResponseAssembler(Request.read(0xFF, 0x0100, 34))
    frame = asm.feed(bytes.fromhex("00ff8302a101"))
    assert frame == bytes.fromhex("ff8302a101")
    with pytest.raises(ModbusException):
        modbus.parse_response(frame, asm.request)


def test_assembler_write_reply_must_echo() -> None:
    request = Request.write_single(0xFF, 0x010A, 1)
    asm = ResponseAssembler(request)
    wrong = modbus.write_single_request(0xFF, 0x010A, 0)
    assert asm.feed(wrong) is None
    assert asm.feed(request.frame) == request.frame


def test_assembler_bounds_its_buffer() -> None:
    asm = ResponseAssembler(Request.read(0xFF, 0x0100, 34))
    for _ in range(100):
        assert asm.feed(b"\x00" * 50) is None
    assert asm.pending <= ResponseAssembler.MAX_BUFFER
    assert asm.feed(ROVER_73) == ROVER_73


# --- property-based: no byte sequence crashes the parser or yields a bad frame ---


@given(st.binary(max_size=300), st.integers(0, 255), st.integers(1, 125))
@settings(max_examples=400, deadline=None)
def test_parse_response_never_crashes(data: bytes, slave: int, count: int) -> None:
    request = Request.read(slave, 0x0100, count)
    try:
        words = modbus.parse_response(data, request)
    except (FrameError, ModbusException):
        return
    # anything accepted must be a CRC-valid frame of exactly the expected length
    assert modbus.crc_ok(data)
    assert len(data) == request.expected_length
    assert isinstance(words, list) and len(words) == count


@given(st.lists(st.binary(max_size=40), max_size=12), st.integers(1, 40))
@settings(max_examples=400, deadline=None)
def test_assembler_only_yields_valid_frames(chunks: list[bytes], count: int) -> None:
    request = Request.read(0xFF, 0x0100, count)
    asm = ResponseAssembler(request)
    for chunk in chunks:
        frame = asm.feed(chunk)
        if frame is None:
            continue
        assert modbus.crc_ok(frame)
        assert frame[0] == 0xFF
        if frame[1] == 0x03:
            assert len(frame) == request.expected_length
            assert modbus.parse_response(frame, request) is not None
        else:
            assert frame[1] == 0x83 and len(frame) == 5


@given(st.binary(min_size=0, max_size=120), st.integers(0, 7), st.integers(0, 255))
@settings(max_examples=300, deadline=None)
def test_single_bit_flip_is_always_detected(prefix: bytes, bit: int, seed: int) -> None:
    frame = bytearray(ROVER_73)
    frame[seed % len(frame)] ^= 1 << bit
    asm = ResponseAssembler(Request.read(0xFF, 0x0100, 34))
    assert asm.feed(prefix + bytes(frame)) in (None, ROVER_73) or modbus.crc_ok(frame)
    with pytest.raises((FrameError, ModbusException)):
        modbus.parse_response(bytes(frame), Request.read(0xFF, 0x0100, 34))

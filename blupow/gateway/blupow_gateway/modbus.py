"""Modbus RTU framing as Renogy BT-1/BT-2 modules and built-in BLE devices speak it.

Only the parts the devices use: read holding registers (0x03), write single
register (0x06) and write multiple registers (0x10), CRC-16/MODBUS with the low
byte first, and exception replies (function | 0x80).

A read reply carries no register address, so the caller must know what it asked
for; :class:`ResponseAssembler` uses that knowledge to pick a valid frame out of a
stream of BLE notifications that may be chunked or prefixed with junk.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

READ_HOLDING = 0x03
WRITE_SINGLE = 0x06
WRITE_MULTIPLE = 0x10
EXCEPTION_FLAG = 0x80

MAX_READ_WORDS = 0x7D
MAX_WRITE_WORDS = 0x7B

EXCEPTION_TEXT = {
    0x01: "function code not supported",
    0x02: "illegal data address",
    0x03: "illegal data value or length",
    0x04: "device failed to read or write",
    0x05: "CRC error reported by device",
}


class FrameError(ValueError):
    """A frame is malformed: too short, wrong length, bad CRC or unexpected header."""


class ModbusException(Exception):
    """The device answered with a Modbus exception frame."""

    def __init__(self, slave_id: int, function: int, code: int) -> None:
        self.slave_id = slave_id
        self.function = function
        self.code = code
        text = EXCEPTION_TEXT.get(code, "unknown exception")
        super().__init__(f"Modbus exception {code:#04x} ({text}) for function {function:#04x} from id {slave_id:#04x}")


def _crc_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC_TABLE = _crc_table()


def crc16(data: bytes | bytearray | memoryview) -> int:
    """CRC-16/MODBUS (poly 0xA001 reflected, init 0xFFFF, no final xor)."""
    crc = 0xFFFF
    for byte in data:
        crc = (crc >> 8) ^ _CRC_TABLE[(crc ^ byte) & 0xFF]
    return crc


def with_crc(body: bytes) -> bytes:
    """Append the CRC, low byte first as on the wire."""
    return body + crc16(body).to_bytes(2, "little")


def crc_ok(frame: bytes | bytearray | memoryview) -> bool:
    return len(frame) >= 4 and crc16(frame[:-2]) == int.from_bytes(frame[-2:], "little")


def _check_id(slave_id: int) -> None:
    if not 0 <= slave_id <= 0xFF:
        raise ValueError(f"Modbus id must be 0..255, got {slave_id}")


def _check_u16(name: str, value: int) -> None:
    if not 0 <= value <= 0xFFFF:
        raise ValueError(f"{name} must be 0..65535, got {value}")


def read_request(slave_id: int, start: int, count: int) -> bytes:
    _check_id(slave_id)
    _check_u16("start register", start)
    if not 1 <= count <= MAX_READ_WORDS:
        raise ValueError(f"register count must be 1..{MAX_READ_WORDS}, got {count}")
    return with_crc(bytes([slave_id, READ_HOLDING]) + start.to_bytes(2, "big") + count.to_bytes(2, "big"))


def write_single_request(slave_id: int, register: int, value: int) -> bytes:
    _check_id(slave_id)
    _check_u16("register", register)
    _check_u16("value", value)
    return with_crc(bytes([slave_id, WRITE_SINGLE]) + register.to_bytes(2, "big") + value.to_bytes(2, "big"))


def write_multiple_request(slave_id: int, start: int, values: Sequence[int]) -> bytes:
    _check_id(slave_id)
    _check_u16("start register", start)
    if not 1 <= len(values) <= MAX_WRITE_WORDS:
        raise ValueError(f"value count must be 1..{MAX_WRITE_WORDS}, got {len(values)}")
    for value in values:
        _check_u16("value", value)
    payload = b"".join(v.to_bytes(2, "big") for v in values)
    header = bytes([slave_id, WRITE_MULTIPLE]) + start.to_bytes(2, "big") + len(values).to_bytes(2, "big")
    return with_crc(header + bytes([len(payload)]) + payload)


@dataclass(frozen=True, slots=True)
class Request:
    """What was asked, so that a reply (which names no register) can be checked."""

    slave_id: int
    function: int
    address: int
    count_or_value: int
    frame: bytes

    @property
    def expected_length(self) -> int:
        """Length of the normal (non-exception) reply."""
        if self.function == READ_HOLDING:
            return 2 * self.count_or_value + 5
        return 8  # 0x06 echoes the request; 0x10 answers id, fc, addr, count, crc

    @classmethod
    def read(cls, slave_id: int, start: int, count: int) -> Request:
        return cls(slave_id, READ_HOLDING, start, count, read_request(slave_id, start, count))

    @classmethod
    def write_single(cls, slave_id: int, register: int, value: int) -> Request:
        return cls(slave_id, WRITE_SINGLE, register, value, write_single_request(slave_id, register, value))

    @classmethod
    def write_multiple(cls, slave_id: int, start: int, values: Sequence[int]) -> Request:
        frame = write_multiple_request(slave_id, start, values)
        return cls(slave_id, WRITE_MULTIPLE, start, len(values), frame)


def parse_request(frame: bytes) -> Request:
    """Parse a request frame (used by the simulator, which plays the device side)."""
    if len(frame) < 8:
        raise FrameError(f"request too short ({len(frame)} bytes)")
    if not crc_ok(frame):
        raise FrameError("request CRC mismatch")
    slave_id, function = frame[0], frame[1]
    address = int.from_bytes(frame[2:4], "big")
    value = int.from_bytes(frame[4:6], "big")
    if function in (READ_HOLDING, WRITE_SINGLE):
        if len(frame) != 8:
            raise FrameError(f"request length {len(frame)} != 8")
    elif function == WRITE_MULTIPLE and (len(frame) < 9 or frame[6] != 2 * value or len(frame) != 9 + 2 * value):
        raise FrameError("write-multiple request length does not match its count")
    return Request(slave_id, function, address, value, bytes(frame))


def write_multiple_values(request: Request) -> list[int]:
    data = request.frame[7:-2]
    return [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]


def parse_response(frame: bytes, request: Request, *, check_id: bool = True) -> list[int] | int:
    """Validate a complete reply to ``request``.

    Returns the register words for a read, the written value for 0x06 and the
    count for 0x10. Raises :class:`ModbusException` for an exception frame and
    :class:`FrameError` for anything malformed.
    """
    frame = bytes(frame)
    if len(frame) < 5:
        raise FrameError(f"frame too short ({len(frame)} bytes)")
    if not crc_ok(frame):
        raise FrameError(
            f"CRC mismatch: frame says {int.from_bytes(frame[-2:], 'little'):#06x}, computed {crc16(frame[:-2]):#06x}"
        )
    slave_id, function = frame[0], frame[1]
    if check_id and slave_id != request.slave_id:
        raise FrameError(f"reply from id {slave_id:#04x}, expected {request.slave_id:#04x}")
    if function == request.function | EXCEPTION_FLAG:
        if len(frame) != 5:
            raise FrameError(f"exception frame length {len(frame)} != 5")
        raise ModbusException(slave_id, request.function, frame[2])
    if function != request.function:
        raise FrameError(f"reply function {function:#04x}, expected {request.function:#04x}")
    if request.function == READ_HOLDING:
        byte_count = frame[2]
        if byte_count != 2 * request.count_or_value:
            raise FrameError(f"byte count {byte_count}, expected {2 * request.count_or_value}")
        if len(frame) != byte_count + 5:
            raise FrameError(f"frame length {len(frame)} does not match byte count {byte_count}")
        data = frame[3:-2]
        return [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]
    if len(frame) != 8:
        raise FrameError(f"write reply length {len(frame)} != 8")
    address = int.from_bytes(frame[2:4], "big")
    value = int.from_bytes(frame[4:6], "big")
    if address != request.address or value != request.count_or_value:
        raise FrameError("write reply does not echo the request")
    return value


def parse_read_frame(frame: bytes, start: int, *, slave_id: int | None = None) -> dict[int, int]:
    """Parse a standalone read reply into ``{register: word}`` starting at ``start``.

    The register count is taken from the frame's byte count; the id is checked
    only when ``slave_id`` is given. Used by ``blupow-gateway decode``.
    """
    frame = bytes(frame)
    if len(frame) < 5:
        raise FrameError(f"frame too short ({len(frame)} bytes)")
    if frame[1] == READ_HOLDING | EXCEPTION_FLAG:
        if not crc_ok(frame):
            raise FrameError("CRC mismatch")
        raise ModbusException(frame[0], READ_HOLDING, frame[2])
    if frame[1] != READ_HOLDING:
        raise FrameError(f"not a read reply (function {frame[1]:#04x})")
    if frame[2] % 2 or frame[2] == 0:
        raise FrameError(f"odd or zero byte count {frame[2]}")
    request = Request.read(slave_id if slave_id is not None else frame[0], start, frame[2] // 2)
    words = parse_response(frame, request, check_id=slave_id is not None)
    assert isinstance(words, list)
    return {start + i: word for i, word in enumerate(words)}


class ResponseAssembler:
    """Collect notification bytes until they hold a valid reply to one request.

    Notifications may carry the whole reply or 20-byte chunks of it, and a module
    sometimes sends stray bytes (a late reply, an ASCII ack, noise) first. Each
    :meth:`feed` appends to a buffer and scans it at every offset for a frame with
    the expected id, function, length and a good CRC, or for a valid exception
    frame. Nothing is returned from bytes that fail those checks.
    """

    MAX_BUFFER = 1024

    def __init__(self, request: Request, *, check_id: bool = True) -> None:
        self.request = request
        self.check_id = check_id
        self._buffer = bytearray()
        self.discarded = 0

    def feed(self, chunk: bytes) -> bytes | None:
        """Add a notification; return the complete frame once one is found."""
        self._buffer += chunk
        if len(self._buffer) > self.MAX_BUFFER:
            drop = len(self._buffer) - self.MAX_BUFFER
            del self._buffer[:drop]
            self.discarded += drop
        return self._scan()

    def _scan(self) -> bytes | None:
        req = self.request
        buf = self._buffer
        normal_len = req.expected_length
        for offset in range(len(buf) - 4):
            if self.check_id and buf[offset] != req.slave_id:
                continue
            function = buf[offset + 1]
            if function == req.function:
                if req.function == READ_HOLDING and buf[offset + 2] != 2 * req.count_or_value:
                    continue
                length = normal_len
            elif function == req.function | EXCEPTION_FLAG:
                length = 5
            else:
                continue
            candidate = buf[offset : offset + length]
            if len(candidate) < length or not crc_ok(candidate):
                continue
            # a write reply must echo the address and value/count
            if function == req.function != READ_HOLDING and candidate[2:6] != req.frame[2:6]:
                continue
            self.discarded += offset
            frame = bytes(candidate)
            del buf[: offset + length]
            return frame
        return None

    @property
    def pending(self) -> int:
        return len(self._buffer)

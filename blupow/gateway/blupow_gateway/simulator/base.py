"""A simulated Renogy device: a register bank that answers Modbus RTU like the real module.

The bank is written from the vendor register tables (raw words, in the device's
own units), not derived from the gateway's decoder tables, so a wrong scale or
offset in a decoder shows up as a test failure instead of cancelling out.

Each family subclasses :class:`SimulatedDevice`, fills ``registers`` in
:meth:`SimulatedDevice.update` from a small physical model (sun over the day,
battery SOC, counters that only rise), and keeps the physical truth in
``truth`` so tests can compare decoded values with what the simulator meant.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .. import modbus

Clock = Callable[[], float]


@dataclass
class Behaviour:
    """How the simulated module behaves on the link (latency, chunking, failures)."""

    latency: float = 0.08  # seconds from request to reply (real modules: 70-120 ms)
    chunk_size: int = 20  # notification payload size; 20 = ATT MTU 23, 0 = whole frame
    drop_replies: bool = False  # never answer (wrong id / dead RS-485 side)
    garbage_before_reply: bytes = b""  # junk notified before each reply
    corrupt_replies: bool = False  # flip a byte so the CRC fails


@dataclass
class SimulatedDevice:
    """Base class: a Modbus slave with a register bank and a BLE identity."""

    mac: str
    name: str
    modbus_id: int = 0xFF
    behaviour: Behaviour = field(default_factory=Behaviour)
    clock: Clock = time.time
    registers: dict[int, int] = field(default_factory=dict)
    truth: dict[str, Any] = field(default_factory=dict)
    missing_blocks: tuple[tuple[int, int], ...] = ()  # ranges that never answer (model gaps)
    writes: list[tuple[int, int]] = field(default_factory=list)
    requests: int = 0

    family: str = "device"
    type_name: str = ""
    variant: str | None = None
    manufacturer_id: int | None = None  # None: BT-1/BT-2 scheme (MAC bytes)
    service_uuids: tuple[str, ...] = (
        "0000ffd0-0000-1000-8000-00805f9b34fb",
        "0000fff0-0000-1000-8000-00805f9b34fb",
    )

    def __post_init__(self) -> None:
        self.mac = self.mac.upper()
        self._start = self.clock()
        self.update()

    # --- identity on air ---

    def manufacturer_data(self) -> dict[int, bytes]:
        """BT-1/BT-2 put the first two MAC bytes (little-endian) as 'company id'."""
        octets = bytes(int(x, 16) for x in self.mac.split(":"))
        if self.manufacturer_id is not None:
            return {self.manufacturer_id: octets[2:]}
        return {int.from_bytes(octets[:2], "little"): octets[2:]}

    # --- model ---

    def elapsed(self) -> float:
        return self.clock() - self._start

    def update(self) -> None:
        """Refresh time-varying registers. Families override."""

    def writable(self, register: int) -> bool:
        return False

    def on_write(self, register: int, value: int) -> None:
        """Apply a write that :meth:`writable` allowed. Families override."""
        self.registers[register] = value

    # --- Modbus slave ---

    def _answers(self, start: int, count: int) -> bool:
        wanted = range(start, start + count)
        for gap_start, gap_count in self.missing_blocks:
            if gap_start < wanted.stop and wanted.start < gap_start + gap_count:
                return False
        return all(r in self.registers for r in wanted)

    def _is_gap(self, start: int, count: int) -> bool:
        wanted = range(start, start + count)
        return any(g < wanted.stop and wanted.start < g + n for g, n in self.missing_blocks)

    def handle(self, frame: bytes) -> bytes | None:
        """Answer one request frame; None means no reply (bad CRC, other id, model gap)."""
        try:
            request = modbus.parse_request(frame)
        except modbus.FrameError:
            return None  # a real slave stays silent on a corrupt request
        if request.slave_id != self.modbus_id or self.behaviour.drop_replies:
            return None
        self.requests += 1
        self.update()
        reply = self._reply(request)
        if reply is not None and self.behaviour.corrupt_replies:
            reply = reply[:-1] + bytes([reply[-1] ^ 0xFF])
        return reply

    def _exception(self, request: modbus.Request, code: int) -> bytes:
        return modbus.with_crc(bytes([self.modbus_id, request.function | 0x80, code]))

    def _reply(self, request: modbus.Request) -> bytes | None:
        if request.function == modbus.READ_HOLDING:
            start, count = request.address, request.count_or_value
            if not 1 <= count <= modbus.MAX_READ_WORDS:
                return self._exception(request, 0x03)
            if self._is_gap(start, count):
                return None  # e.g. G6 at 0x0120: the real unit never answers
            if not self._answers(start, count):
                return self._exception(request, 0x02)
            data = b"".join(self.registers[r].to_bytes(2, "big") for r in range(start, start + count))
            return modbus.with_crc(bytes([self.modbus_id, 0x03, 2 * count]) + data)
        if request.function == modbus.WRITE_SINGLE:
            if not self.writable(request.address):
                return self._exception(request, 0x02)
            self.writes.append((request.address, request.count_or_value))
            self.on_write(request.address, request.count_or_value)
            return request.frame
        if request.function == modbus.WRITE_MULTIPLE:
            values = modbus.write_multiple_values(request)
            regs = range(request.address, request.address + len(values))
            if not all(self.writable(r) for r in regs):
                return self._exception(request, 0x02)
            for reg, value in zip(regs, values, strict=True):
                self.writes.append((reg, value))
                self.on_write(reg, value)
            return modbus.with_crc(request.frame[:6])
        return self._exception(request, 0x01)

    def chunks(self, reply: bytes) -> Iterable[bytes]:
        """Split a reply into notifications as the module's MTU would."""
        payload = self.behaviour.garbage_before_reply + reply
        size = self.behaviour.chunk_size
        if size <= 0:
            yield payload
            return
        for i in range(0, len(payload), size):
            yield payload[i : i + size]


# --- helpers for register banks -------------------------------------------


def put_u16(regs: dict[int, int], reg: int, value: float) -> None:
    regs[reg] = round(value) & 0xFFFF


def put_s16(regs: dict[int, int], reg: int, value: float) -> None:
    regs[reg] = round(value) & 0xFFFF  # two's complement


def put_u32(regs: dict[int, int], reg: int, value: float) -> None:
    v = round(value) & 0xFFFFFFFF
    regs[reg] = v >> 16
    regs[reg + 1] = v & 0xFFFF


def put_ascii(regs: dict[int, int], reg: int, text: str, words: int) -> None:
    raw = text.encode("ascii")[: 2 * words].ljust(2 * words, b" ")
    for i in range(words):
        regs[reg + i] = int.from_bytes(raw[2 * i : 2 * i + 2], "big")


def sign_magnitude_byte(celsius: float) -> int:
    """Controller temperature byte: bit 7 = negative, bits 0-6 = magnitude."""
    magnitude = min(127, round(abs(celsius)))
    return (0x80 | magnitude) if celsius < 0 and magnitude else magnitude


def sun(elapsed: float, day_seconds: float = 600.0) -> float:
    """0..1 solar irradiance over a compressed day (default: a day every 10 minutes)."""
    phase = (elapsed % day_seconds) / day_seconds  # 0 = sunrise, 0.5 = sunset
    return max(0.0, math.sin(2 * math.pi * phase))

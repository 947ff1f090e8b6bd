"""Renogy Smart Shunt 300 (RTMShunt300…): a notification stream, not Modbus.

Source: /work/shared/reference/renogy-hub-and-shunt.md §2. The shunt notifies
110-byte frames on ``c411`` (service ``c011``) about 8.5 times a second as soon as a
central subscribes; nothing is written. Frames may arrive split over several
notifications at any point and may carry a 4-byte prefix ``61 d2 xx xx``. Live
frames start ``42 57 01 19``; history frames (``42 57 01 0b``), which the shunt sends
mostly right after a connect, are skipped. There is no checksum: validity rests on
the header and the plausibility limits of the table (§2.4), which reject a frame
whose voltage, current or power makes no sense.

The table (:data:`FIELDS`) holds only fields of medium or high confidence (§2.3);
docs/devices.md shows each one's confidence. Energy counters are not in the frame
(§3), so none are published.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, ClassVar

from ._fields import integrated_energy
from ._stream import StreamDevice
from .base import Confidence, Field, GattProfile, Values

SHUNT_SERVICE = "0000c011-0000-1000-8000-00805f9b34fb"
SHUNT_NOTIFY = "0000c411-0000-1000-8000-00805f9b34fb"
SHUNT_WRITE = "0000c111-0000-1000-8000-00805f9b34fb"  # exists, but no peer writes to it

LIVE_HEADER = bytes.fromhex("42570119")
HISTORY_HEADER = bytes.fromhex("4257010b")
HEADERS = (LIVE_HEADER, HISTORY_HEADER)
PREFIX = bytes.fromhex("61d2")  # then two bytes of unknown meaning
PREFIX_LEN = 4
FRAME_LEN = 110
MIN_LIVE_LEN = 28  # §2.4: a live frame of at least 28 bytes (through the voltage) is usable


def _power(v: dict[str, Any]) -> float:
    return v["battery_voltage"] * v["current"]


HIGH, MEDIUM = Confidence.HIGH, Confidence.MEDIUM

FIELDS: tuple[Field, ...] = (
    Field(
        "battery_voltage",
        None,
        frame_offset=25,
        frame_bytes=3,
        scale=0.001,
        unit="V",
        device_class="voltage",
        state_class="measurement",
        precision=3,
        limits=(6.0, 80.0),
        rejects_frame=True,
        confidence=HIGH,
        description="Main (house) battery voltage",
    ),
    Field(
        "current",
        None,
        frame_offset=21,
        frame_bytes=3,
        signed=True,
        scale=0.001,
        unit="A",
        device_class="current",
        state_class="measurement",
        precision=3,
        limits=(-500.0, 500.0),
        rejects_frame=True,
        confidence=HIGH,
        description="Battery current through the shunt; positive = charging, negative = discharging "
        "(sign convention: medium confidence)",
    ),
    Field(
        "power",
        None,
        compute=_power,
        unit="W",
        device_class="power",
        state_class="measurement",
        precision=2,
        limits=(-10000.0, 10000.0),
        rejects_frame=True,
        confidence=HIGH,
        description="Battery power, voltage × current (the shunt sends none); positive = charging",
    ),
    Field(
        "starter_voltage",
        None,
        frame_offset=30,
        frame_bytes=2,
        scale=0.001,
        unit="V",
        device_class="voltage",
        state_class="measurement",
        precision=3,
        confidence=HIGH,
        description="Starter battery voltage (0 when not wired)",
    ),
    Field(
        "battery_soc",
        None,
        frame_offset=34,
        frame_bytes=2,
        scale=0.1,
        unit="%",
        device_class="battery",
        state_class="measurement",
        precision=1,
        limits=(0.0, 100.0),  # peers allow up to 200 %; above 100 % means nothing to a user
        confidence=MEDIUM,
        name="Battery SOC",
        description="State of charge as the shunt computes it; left out outside 0–100 %",
    ),
    Field(
        "battery_temperature",
        None,
        frame_offset=66,
        frame_bytes=2,
        scale=0.1,
        unit="°C",
        device_class="temperature",
        state_class="measurement",
        precision=1,
        no_value=0x8000,  # the cloud API shows −3276.8 °C without a probe: raw 0x8000 = no sensor
        limits=(-40.0, 100.0),
        confidence=MEDIUM,
        description="Battery temperature probe, read unsigned as every peer does (sub-zero encoding "
        "unknown); left out without a probe, outside −40…100 °C, and in short frames",
    ),
    # No energy counter was identified in the frame (reference §2.3): the gateway integrates the power.
    integrated_energy("charge_energy", "power", 1, "Energy into the battery", name="Energy charged", confidence=HIGH),
    integrated_energy(
        "discharge_energy", "power", -1, "Energy out of the battery", name="Energy discharged", confidence=HIGH
    ),
)


class ShuntFrameDecoder:
    """Reassembles shunt frames from notifications of any size; a pure byte-stream class.

    ``feed`` returns the complete live frames (header first, prefix removed) in order.
    Rules, and why:

    * A frame starts at a header ``42 57 01 19`` (live) or ``42 57 01 0b`` (history).
      Bytes before a header are noise (counted: ``noise_bytes``; each skip is a
      ``resync``), except a 4-byte ``61 d2 xx xx`` prefix right before it.
    * A live frame ends after 110 bytes, or earlier where the next header begins.
      A frame is never cut short because no more bytes have come *yet*: a frame split
      over notifications waits for its rest, so a split is never taken for a short
      frame. A short frame is only recognised when the next frame's header follows it.
      A header can not appear inside a real frame: every 4-byte window of the record
      layout (§2.3) holds a tag byte 0xA0…0xAA/0xF8, and no header byte is one.
    * Ended by a header before 28 bytes, a live frame is ``truncated`` (dropped);
      from 28 bytes on it is a short frame, decoded with the fields it holds.
    * History frames are counted (``history``) and skipped up to the next header.
    * Bounded: at most one frame (110 bytes) plus one notification is held while
      looking; noise without a header is dropped except its last 7 bytes (which may
      be a prefix and the start of a header), so the buffer never grows without bound.
    * :meth:`reset` (a connection boundary) drops everything held, so half a frame
      from an old link never joins the start of a new one.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._in_history = False  # skipping a history frame's body: not noise
        self._in_noise = False  # one resync per run of noise, however many notifications it spans
        self.counters: Counter[str] = Counter()

    def reset(self) -> None:
        if self._buf and not self._in_history and self._buf.startswith(LIVE_HEADER):
            self.counters["dropped_partial"] += 1
        self._buf.clear()
        self._in_history = False
        self._in_noise = False

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        frames: list[bytes] = []
        while (frame := self._next()) is not None:
            if frame:
                frames.append(frame)
        return frames

    def _next(self) -> bytes | None:
        """One step: a live frame, b"" after skipping something, or None when more bytes are needed."""
        start = _find_header(self._buf, 0)
        if start < 0:
            # keep what may be a prefix and the start of a header still to come
            self._skip(max(0, len(self._buf) - (PREFIX_LEN + len(LIVE_HEADER) - 1)))
            return None
        if start > 0:
            self._skip(start)
            return b""
        self._in_noise = False
        following = _find_header(self._buf, len(LIVE_HEADER), FRAME_LEN + PREFIX_LEN)
        if self._buf.startswith(HISTORY_HEADER) or self._in_history:
            return self._skip_history(following)
        end = _frame_end(self._buf, following)
        if end is None:
            return None  # the rest has not come yet
        frame = bytes(self._buf[:end])
        del self._buf[:end]  # a prefix of the next frame is skipped (and counted) by the next step
        if len(frame) < MIN_LIVE_LEN:
            self.counters["truncated"] += 1
            return b""
        if len(frame) < FRAME_LEN:
            self.counters["short"] += 1
        return frame

    def _skip_history(self, following: int) -> bytes | None:
        if not self._in_history:
            self.counters["history"] += 1
            self._in_history = True
        # the history frame's own header must not be found again: search past it
        nxt = following if following >= 0 else _find_header(self._buf, len(HISTORY_HEADER))
        if nxt < 0:
            keep = PREFIX_LEN + len(LIVE_HEADER) - 1
            if len(self._buf) > len(HISTORY_HEADER) + keep:
                # keep the header (so we still know we are in it) and a possible prefix and header start
                del self._buf[len(HISTORY_HEADER) : len(self._buf) - keep]
            return None
        if self._buf[nxt - PREFIX_LEN : nxt - 2] == PREFIX:
            self.counters["prefixed"] += 1
        del self._buf[:nxt]
        self._in_history = False
        return b""

    def _skip(self, count: int) -> None:
        """Drop ``count`` bytes before a header (or of headerless noise)."""
        if count <= 0:
            return
        head = bytes(self._buf[:count])
        del self._buf[:count]
        if head[-PREFIX_LEN:-2] == PREFIX:
            self.counters["prefixed"] += 1
            count -= PREFIX_LEN
        if count > 0:
            self.counters["noise_bytes"] += count
            if not self._in_noise:
                self.counters["resyncs"] += 1
            self._in_noise = True


def _find_header(buf: bytearray, start: int, stop: int | None = None) -> int:
    """Index of the first live or history header at or after ``start`` (before ``stop``), else -1."""
    found = [i for h in HEADERS if (i := buf.find(h, start, stop)) >= 0]
    return min(found) if found else -1


def _frame_end(buf: bytearray, following: int) -> int | None:
    """Where the live frame at the start of ``buf`` ends, or None while it may still grow."""
    if 0 < following < FRAME_LEN + PREFIX_LEN:
        # the next frame begins here (behind its prefix, if it has one)
        end = following - PREFIX_LEN if buf[following - PREFIX_LEN : following - 2] == PREFIX else following
        return min(end, FRAME_LEN)
    if len(buf) >= FRAME_LEN:
        return FRAME_LEN
    return None


class RenogyShunt(StreamDevice):
    description = "Renogy Smart Shunt 300 (RTMShunt300…), built-in BLE: a notification stream, not Modbus"
    model_hint = "Smart Shunt 300"
    name_patterns = ("RTMShunt300*",)
    # default_modbus_id stays 0xFF: the shunt is on no Modbus bus; the id only fills the record
    gatt = GattProfile(
        write_service=SHUNT_SERVICE, write_char=SHUNT_WRITE, notify_service=SHUNT_SERVICE, notify_char=SHUNT_NOTIFY
    )
    fields = FIELDS
    required: ClassVar[tuple[str, ...]] = ("battery_voltage", "current")
    scan_priority = 10

    def new_decoder(self) -> ShuntFrameDecoder:
        return ShuntFrameDecoder()

    def decode_frame(self, frame: bytes) -> tuple[Values, str | None]:
        """Also takes a frame as captured (with its prefix, or a history frame), e.g. from ``decode``."""
        if frame[:2] == PREFIX and frame[PREFIX_LEN : PREFIX_LEN + 3] == LIVE_HEADER[:3]:
            frame = frame[PREFIX_LEN:]
        if frame.startswith(HISTORY_HEADER):
            return {}, "history"
        if not frame.startswith(LIVE_HEADER):
            return {}, "no_header"
        if len(frame) < MIN_LIVE_LEN:
            return {}, "truncated"
        return super().decode_frame(frame)

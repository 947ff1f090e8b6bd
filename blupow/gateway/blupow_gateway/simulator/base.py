"""A simulated Renogy device: a register bank that answers Modbus RTU like the real module.

The bank is written from the vendor register tables (raw words, in the device's
own units), not derived from the gateway's decoder tables, so a wrong scale or
offset in a decoder shows up as a test failure instead of cancelling out.

Each family subclasses :class:`SimulatedDevice`. It builds its static registers
in :meth:`~SimulatedDevice.setup`, integrates a small physical model (sun over
the day, battery SOC, counters that only rise) in :meth:`~SimulatedDevice.step`
and writes the dynamic registers in :meth:`~SimulatedDevice.refresh`.

``truth`` holds, under the same keys the gateway's drivers publish, the value an
exact decoder must produce from the registers: the physical value rounded to the
register's resolution (so derived values such as battery power can be compared
too). Keys are present only for values the device really exposes.

Time: the simulated clock runs ``86400 / day_seconds`` times faster than
``clock`` (by default a whole day every 10 minutes), starting at ``start_hour``.
``frozen=True`` stops it, which keeps every value constant.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from .. import modbus

Clock = Callable[[], float]

DAY = 86400.0
# Longest integration step in simulated seconds; a big clock jump is integrated
# in at most MAX_STEPS steps so a test that skips a week stays fast.
STEP = 60.0
MAX_STEPS = 2000


BT_SERVICE_UUIDS = (
    "0000ffd0-0000-1000-8000-00805f9b34fb",
    "0000fff0-0000-1000-8000-00805f9b34fb",
)


@dataclass
class Behaviour:
    """How the simulated module behaves on the link (latency, chunking, failures)."""

    latency: float = 0.08  # seconds from request to reply (real modules: 70-120 ms)
    chunk_size: int = 20  # notification payload size; 20 = ATT MTU 23, 0 = whole frame
    drop_replies: bool = False  # never answer (wrong id / dead RS-485 side)
    garbage_before_reply: bytes = b""  # junk notified before each reply
    corrupt_replies: bool = False  # flip a byte so the CRC fails
    late_after: float = 0.0  # > 0: answer only this many seconds after the request (beyond any timeout)
    wrong_id: int | None = None  # answer as this Modbus ID (first byte replaced, CRC recomputed)


BEHAVIOUR_KEYS = (
    "latency",
    "chunk_size",
    "drop_replies",
    "corrupt_replies",
    "garbage_before_reply",
    "late_after",
    "wrong_id",
)


class HasBehaviour(Protocol):
    behaviour: Behaviour


def apply_behaviour(target: HasBehaviour, values: Mapping[str, Any]) -> None:
    """Set ``Behaviour`` fields with type checks (values come from YAML/JSON)."""
    b = target.behaviour
    for key, value in values.items():
        if key in ("latency", "late_after"):
            setattr(b, key, _seconds(key, value))
        elif key == "chunk_size":
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"chunk_size must be a whole number >= 0, not {value!r}")
            b.chunk_size = value
        elif key in ("drop_replies", "corrupt_replies"):
            if not isinstance(value, bool):
                raise ValueError(f"{key} must be true or false, not {value!r}")
            setattr(b, key, value)
        elif key == "garbage_before_reply":
            b.garbage_before_reply = _as_bytes(key, value)
        elif key == "wrong_id":
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 255):
                raise ValueError(f"wrong_id must be a Modbus ID 0..255 or null, not {value!r}")
            b.wrong_id = value
        else:
            raise ValueError(f"unknown behaviour {key!r} (known: {', '.join(BEHAVIOUR_KEYS)})")


def _seconds(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError(f"{key} must be a number of seconds >= 0, not {value!r}")
    return float(value)


def _as_bytes(key: str, value: Any) -> bytes:
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    if isinstance(value, str):
        try:
            return bytes.fromhex(value)
        except ValueError:
            raise ValueError(f"{key} must be hex bytes like 'dead01', not {value!r}") from None
    raise ValueError(f"{key} must be hex bytes like 'dead01', not {value!r}")


class Responder(Protocol):
    """What answers behind one BLE identity: a :class:`SimulatedDevice`, or a module carrying several.

    The fake BlueZ and :class:`~.link.SimulatedLink` need nothing else: who is on
    the air (MAC, name, advertisement), how replies are chunked, and
    :meth:`respond`, which gives the reply to one request frame together with the
    delay after which it arrives.
    """

    mac: str
    name: str
    behaviour: Behaviour
    type_name: str
    service_uuids: tuple[str, ...]
    manufacturer_id: int | None

    def manufacturer_data(self) -> dict[int, bytes]: ...

    def respond(self, frame: bytes, latency: float | None = None) -> tuple[bytes, float] | None: ...

    def chunks(self, reply: bytes) -> Iterable[bytes]: ...


@dataclass
class SimulatedDevice:
    """Base class: a Modbus slave with a register bank and a BLE identity.

    ``missing_blocks`` lists ``(start, count)`` address ranges where a request
    that *starts* inside the range gets no reply at all (the real unit ignores
    it: G6 DC-DC chargers at 0x0120, the RIV4835 inverter at 4311). A read that
    starts elsewhere is answered whenever every register it covers exists, so a
    G6's 0x0100 x 34 read still returns 0x0120/0x0121. Reads of registers that
    do not exist get exception 02.
    """

    mac: str = ""  # empty: a deterministic MAC from the class name
    name: str = ""  # empty: the family's advertising name built from the MAC
    modbus_id: int | None = None  # None: the family's default id
    behaviour: Behaviour = field(default_factory=Behaviour)
    clock: Clock = time.monotonic
    seed: int = 1  # unit-to-unit variation (serial, cell offsets, weather)
    cold: bool = False  # winter: ambient well below 0 °C
    frozen: bool = False  # stop simulated time: every value stays constant
    daily_reset: bool = False  # clear the "today" counters at simulated midnight
    day_seconds: float = 600.0  # real seconds per simulated day
    start_hour: float = 10.0  # simulated time of day when created
    registers: dict[int, int] = field(default_factory=dict)
    truth: dict[str, Any] = field(default_factory=dict)
    missing_blocks: tuple[tuple[int, int], ...] = ()
    writes: list[tuple[int, int]] = field(default_factory=list)
    requests: int = 0

    family: str = "device"
    type_name: str = ""
    variant: str | None = None
    manufacturer_id: int | None = None  # None: BT-1/BT-2 scheme (MAC bytes)
    service_uuids: tuple[str, ...] = BT_SERVICE_UUIDS

    def __post_init__(self) -> None:
        self.mac = (self.mac or mac_for(type(self).__name__, self.seed)).upper()
        if self.modbus_id is None:
            self.modbus_id = self.default_modbus_id()
        if not self.name:
            self.name = self.default_name()
        self.rng = random.Random(f"{self.seed}:{self.mac}")  # noqa: S311 - simulation, not secrets
        self._start = self.clock()
        self._sim = self.start_hour * 3600.0
        self.setup()
        self.update()

    # --- identity on air ---

    def default_modbus_id(self) -> int:
        return 0xFF

    def default_name(self) -> str:
        return bt_module_name(self.mac)

    def manufacturer_data(self) -> dict[int, bytes]:
        return bt_manufacturer_data(self.mac, self.manufacturer_id)

    # --- time and model ---

    def elapsed(self) -> float:
        """Real seconds since creation (0 while frozen; never negative)."""
        if self.frozen:
            return 0.0
        return max(0.0, self.clock() - self._start)

    def sim_time(self) -> float:
        """Simulated seconds since midnight of day 0."""
        return self.start_hour * 3600.0 + self.elapsed() * DAY / self.day_seconds

    def solar(self, t: float) -> float:
        """0..1 irradiance at simulated time ``t``: sunrise 06:00, sunset 18:00, passing clouds."""
        clear = sun(t - 6 * 3600.0, DAY)
        if clear <= 0:
            return 0.0
        phase = self.seed * 1.618
        clouds = 0.1 * (1 + math.sin(t / 1700.0 + phase)) * (1 + math.sin(t / 530.0 + 2 * phase)) / 4
        return clear * (1.0 - clouds)

    def ambient(self, t: float) -> float:
        """Ambient temperature (°C): coldest at 04:00, warmest at 16:00."""
        base = -12.0 if self.cold else 18.0
        return base + 6.0 * math.sin(2 * math.pi * ((t / DAY) - 10 / 24))

    def update(self) -> None:
        """Advance the model to the current simulated time and rewrite the dynamic registers."""
        target = self.sim_time()
        if target > self._sim:  # a clock that goes backwards changes nothing
            span = target - self._sim
            steps = min(MAX_STEPS, math.ceil(span / STEP))
            dt = span / steps
            for i in range(steps):
                t = self._sim + dt * (i + 1)
                if self.daily_reset and int(t // DAY) != int((t - dt) // DAY):
                    self.new_day()
                self.step(t, dt)
            self._sim = target
        self.refresh(self._sim)

    def setup(self) -> None:
        """Build static registers and the initial state. Families override."""

    def step(self, t: float, dt: float) -> None:
        """Integrate the physical model over ``dt`` simulated seconds ending at ``t``. Families override."""

    def refresh(self, t: float) -> None:
        """Write the dynamic registers and ``truth`` for simulated time ``t``. Families override."""

    def new_day(self) -> None:
        """Clear the "today" counters (only with ``daily_reset``). Families override."""

    def writable(self, register: int) -> bool:
        return False

    def write_error(self, register: int, value: int) -> int | None:
        """Exception code for a write, or None to accept it."""
        return None if self.writable(register) else 0x02

    def on_write(self, register: int, value: int) -> None:
        """Apply an accepted write. Families override."""
        self.registers[register] = value

    # --- register bank helpers (device units, from the vendor tables) ---

    def put(
        self,
        reg: int,
        value: float,
        scale: float = 1.0,
        *,
        key: str | None = None,
        signed: bool = False,
        words: int = 1,
    ) -> int | float:
        """Store ``value`` (physical units) as ``round(value / scale)`` and return the stored value.

        The raw number saturates at the register's range, as a counter in a real
        u16 would rather stick than wrap for the values simulated here. With
        ``key`` the stored value is also the truth for that published field.
        """
        bits = 16 * words
        low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
        raw = max(low, min(high, round(value / scale)))
        word = raw & ((1 << bits) - 1)
        for i in range(words):
            self.registers[reg + i] = (word >> (16 * (words - 1 - i))) & 0xFFFF
        stored = scaled(raw, scale)
        if key is not None:
            self.truth[key] = stored
        return stored

    def put_text(self, reg: int, text: str, words: int, *, key: str | None = None) -> None:
        put_ascii(self.registers, reg, text, words)
        if key is not None:
            self.truth[key] = text[: 2 * words].strip(" \x00")

    def put_flags(self, reg: int, bits: Iterable[int], *, words: int = 1) -> None:
        value = 0
        for bit in bits:
            value |= 1 << bit
        self.put(reg, value, words=words)

    # --- Modbus slave ---

    def _exists(self, start: int, count: int) -> bool:
        return all(r in self.registers for r in range(start, start + count))

    def _is_gap(self, start: int) -> bool:
        return any(g <= start < g + n for g, n in self.missing_blocks)

    def handle(self, frame: bytes) -> bytes | None:
        """Answer one request frame; None means no reply (bad CRC, other id, model gap)."""
        request = parse_request(frame)
        if request is None or request.slave_id != self.modbus_id:
            return None
        return self.answer(request)

    def answer(self, request: modbus.Request) -> bytes | None:
        """Answer a request that reached this slave, by its own ID or (on a module's bus) by 0xFF.

        The reply echoes the ID that was asked, unless ``behaviour.wrong_id`` says
        otherwise; None means no reply (silent slave, model gap).
        """
        if self.behaviour.drop_replies:
            return None
        self.requests += 1
        self.update()
        reply = self._reply(request)
        if reply is None:
            return None
        if self.behaviour.wrong_id is not None:
            # otherwise a perfect frame: only a poller that checks the echoed ID notices
            reply = modbus.with_crc(bytes([self.behaviour.wrong_id]) + reply[1:-2])
        if self.behaviour.corrupt_replies:
            reply = reply[:-1] + bytes([reply[-1] ^ 0xFF])
        return reply

    def reply_delay(self, latency: float | None = None) -> float:
        """Seconds from request to reply: ``latency`` (a link's override) or ours, unless we answer late."""
        ordinary = self.behaviour.latency if latency is None else latency
        return max(ordinary, self.behaviour.late_after)

    def respond(self, frame: bytes, latency: float | None = None) -> tuple[bytes, float] | None:
        """The reply to ``frame`` and its delay (see :class:`Responder`); None: no reply at all."""
        reply = self.handle(frame)
        return None if reply is None else (reply, self.reply_delay(latency))

    def _exception(self, request: modbus.Request, code: int) -> bytes:
        return modbus.with_crc(bytes([request.slave_id, request.function | 0x80, code]))

    def _reply(self, request: modbus.Request) -> bytes | None:
        if request.function in (modbus.READ_HOLDING, modbus.WRITE_SINGLE, modbus.WRITE_MULTIPLE) and self._is_gap(
            request.address
        ):
            return None  # e.g. G6 at 0x0120: the real unit never answers
        if request.function == modbus.READ_HOLDING:
            start, count = request.address, request.count_or_value
            if not 1 <= count <= modbus.MAX_READ_WORDS:
                return self._exception(request, 0x03)
            if not self._exists(start, count):
                return self._exception(request, 0x02)
            data = b"".join(self.registers[r].to_bytes(2, "big") for r in range(start, start + count))
            return modbus.with_crc(bytes([request.slave_id, modbus.READ_HOLDING, 2 * count]) + data)
        if request.function == modbus.WRITE_SINGLE:
            code = self.write_error(request.address, request.count_or_value)
            if code is not None:
                return self._exception(request, code)
            self._apply(request.address, request.count_or_value)
            return request.frame
        if request.function == modbus.WRITE_MULTIPLE:
            values = modbus.write_multiple_values(request)
            regs = range(request.address, request.address + len(values))
            for reg, value in zip(regs, values, strict=True):
                code = self.write_error(reg, value)
                if code is not None:
                    return self._exception(request, code)
            for reg, value in zip(regs, values, strict=True):
                self._apply(reg, value)
            return modbus.with_crc(request.frame[:6])
        return self._exception(request, 0x01)

    def _apply(self, register: int, value: int) -> None:
        self.writes.append((register, value))
        self.on_write(register, value)
        self.refresh(self._sim)  # the effect is visible to the very next read

    def chunks(self, reply: bytes) -> Iterable[bytes]:
        return split_reply(reply, self.behaviour)


# --- helpers shared with simulated modules ----------------------------------


def parse_request(frame: bytes) -> modbus.Request | None:
    """The request in ``frame``, or None for a corrupt one (a real slave stays silent on it)."""
    try:
        return modbus.parse_request(frame)
    except modbus.FrameError:
        return None


def bt_module_name(mac: str) -> str:
    """BT-1/BT-2 modules: ``BT-TH-`` and the last four MAC bytes in hex."""
    return "BT-TH-" + "".join(mac.split(":")[2:])


def bt_manufacturer_data(mac: str, manufacturer_id: int | None = None) -> dict[int, bytes]:
    """BT-1/BT-2 put the first two MAC bytes (little-endian) as 'company id'."""
    octets = bytes(int(x, 16) for x in mac.split(":"))
    if manufacturer_id is not None:
        return {manufacturer_id: octets[2:]}
    return {int.from_bytes(octets[:2], "little"): octets[2:]}


def split_reply(reply: bytes, behaviour: Behaviour) -> Iterable[bytes]:
    """Split a reply into notifications as the module's MTU would."""
    payload = behaviour.garbage_before_reply + reply
    size = behaviour.chunk_size
    if size <= 0:
        yield payload
        return
    for i in range(0, len(payload), size):
        yield payload[i : i + size]


# --- helpers for register banks -------------------------------------------


def mac_for(label: str, index: int = 0) -> str:
    """A stable MAC for a label (kind or class name), like a real BT-2 module's C4:64:E3 prefix."""
    digest = hashlib.sha256(f"{label}:{index}".encode()).digest()
    return "C4:64:E3:" + ":".join(f"{b:02X}" for b in digest[:3])


def decimals(scale: float) -> int:
    if scale >= 1:
        return 0
    return max(0, math.ceil(-math.log10(scale) - 1e-9))


def scaled(raw: int, scale: float) -> int | float:
    """``raw * scale`` without float noise: an int for whole-number scales."""
    if scale >= 1 and float(scale).is_integer():
        return raw * int(scale)
    return round(raw * scale, decimals(scale))


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


# Open-circuit voltage of a 12.8 V LiFePO4 pack against SOC: flat between 10 % and 90 %.
_LFP_OCV = ((0.0, 11.6), (10.0, 12.9), (90.0, 13.3), (100.0, 13.6))


def lfp_voltage(soc: float, *, cells: int = 4) -> float:
    soc = max(0.0, min(100.0, soc))
    for (s0, v0), (s1, v1) in itertools.pairwise(_LFP_OCV):
        if soc <= s1:
            return (v0 + (v1 - v0) * (soc - s0) / (s1 - s0)) * cells / 4
    return _LFP_OCV[-1][1] * cells / 4


def relax(value: float, target: float, dt: float, tau: float) -> float:
    """First-order lag: move ``value`` toward ``target`` with time constant ``tau``."""
    return target + (value - target) * math.exp(-dt / tau)

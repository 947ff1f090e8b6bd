"""The driver model: declarative register tables and the abstract device.

A driver is a subclass of :class:`BaseDevice` that declares

* ``blocks``: the read plan (register ranges, which are static, optional or
  conditional),
* ``fields``: one :class:`Field` per published value, carrying both the decoding
  rule (register, encoding, scale) and the Home Assistant metadata (unit,
  device_class, state_class, precision, entity category),
* ``controls``: writable values (:class:`Control`),
* ``name_patterns`` / ``manufacturer_ids``: how to recognise it in a scan,
* ``default_modbus_id`` and optional ``variants``.

Decoding works on a ``{register: word}`` map, so the same table decodes a full
poll, a single pasted frame or any subset of blocks: a field is produced only
when every register it needs was read. A field that cannot be decoded is left
out, never published as 0; so is one whose value is not a finite number (NaN,
±Infinity), which JSON cannot carry.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from fnmatch import fnmatchcase
from typing import Any, ClassVar, Protocol

from ..modbus import ModbusException

Values = dict[str, Any]


class Enc(StrEnum):
    """How a field's raw registers become a number, text or list."""

    U16 = "u16"
    S16 = "s16"  # two's complement
    U32 = "u32"  # two registers, high word first
    S32 = "s32"
    U8_HI = "u8_hi"  # high byte of one register
    U8_LO = "u8_lo"
    SM8_HI = "sm8_hi"  # sign-magnitude byte: bit 7 = sign, bits 0-6 = value
    SM8_LO = "sm8_lo"
    SM16 = "sm16"  # sign-magnitude word: bit 15 = sign
    ASCII = "ascii"  # ``words`` registers of text, trailing spaces/NULs stripped
    BITS = "bits"  # list of the names of the set bits in ``flags``
    ARRAY_U16 = "array_u16"  # ``count_register`` items of u16 (e.g. cell voltages)
    ARRAY_S16 = "array_s16"
    VERSION = "version"  # u32 whose low three bytes are major.minor.patch: V03.02.01
    HEX32 = "hex32"  # u32 shown as 8 hex digits (controller serial: 1501FFFF)


_WORDS = {Enc.U32: 2, Enc.S32: 2, Enc.VERSION: 2, Enc.HEX32: 2}


class DeviceProtocol(StrEnum):
    """How a device talks over BLE; ``BaseDevice.read`` is written for one of them.

    ``MODBUS``: request/response, one Modbus RTU read per block (written to ``ffd1``,
    answered on ``fff1``). ``NOTIFY_STREAM``: the device sends frames on its own
    as notifications (the Smart Shunt 300); nothing is written, a read subscribes
    and takes the latest good frame (devices/_stream.py).
    """

    MODBUS = "modbus"
    NOTIFY_STREAM = "notify_stream"


class Confidence(StrEnum):
    """How sure the sources are of a field's meaning (docs/devices.md shows it)."""

    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"


class Category(StrEnum):
    DIAGNOSTIC = "diagnostic"
    CONFIG = "config"


@dataclass(frozen=True)
class Field:
    """One published value: where it lives, how to decode it, how to show it.

    ``register`` is None for values derived from other fields by ``compute``.
    For integer encodings ``mask`` and ``shift`` extract a bit range before
    scaling; ``options`` maps raw integers to enum text; ``flags`` maps bit
    numbers (over all ``words`` registers, bit 0 = least significant bit of the
    last register) to fault/status names.
    """

    key: str
    register: int | None
    enc: Enc = Enc.U16
    words: int = 0  # 0 = natural size of ``enc``
    scale: float = 1.0
    offset: float = 0.0
    unit: str | None = None
    device_class: str | None = None
    state_class: str | None = None
    precision: int | None = None
    category: Category | None = None
    name: str | None = None
    icon: str | None = None
    description: str = ""
    component: str = "sensor"
    enabled_default: bool = True
    mask: int | None = None
    shift: int = 0
    options: Mapping[int, str] | None = None
    flags: Mapping[int, str] | None = None
    # What a person reads for a value of ``options`` or ``flags`` where the humanised key is not
    # enough ("deactivated" -> "Not charging"). The state JSON keeps the keys (for automations and
    # the MQTT API); Home Assistant shows these words (discovery.py).
    labels: Mapping[str, str] | None = None
    boolean: bool = False  # after mask/shift: non-zero -> True
    count_register: int | None = None  # array length register (e.g. cell count)
    max_items: int = 16
    compute: Callable[[Values], Any] | None = None
    variants: tuple[str, ...] = ()  # empty = every variant
    # An energy counter the gateway keeps by integrating the power field ``integrates`` over time
    # (energy.py), for devices without a counter of their own; ``direction`` +1 counts the power's
    # positive part (charging), -1 its negative part (discharging).
    integrates: str | None = None
    direction: int = 1
    # An energy counter the device keeps for its lifetime (kWh or Wh). Home Assistant reads any
    # drop of a total_increasing value as a meter reset and counts the whole value again, so the
    # gateway holds back a drop or an impossible jump until the next reading confirms it and
    # carries a confirmed reset forward (energy.LifetimeCounters).
    lifetime: bool = False
    # Stream devices (DeviceProtocol.NOTIFY_STREAM): the value sits at ``frame_offset`` in a
    # notified frame, ``frame_bytes`` big-endian bytes, two's complement when ``signed``.
    # A raw value equal to ``no_value`` means "not fitted" (no value). Outside ``limits`` the
    # value is dropped, or with ``rejects_frame`` the whole frame is (devices/_stream.py).
    frame_offset: int | None = None
    frame_bytes: int = 0
    signed: bool = False
    no_value: int | None = None
    limits: tuple[float, float] | None = None
    rejects_frame: bool = False
    confidence: Confidence | None = None

    def __post_init__(self) -> None:
        if self.words == 0:
            natural = self.max_items if self.enc in (Enc.ARRAY_U16, Enc.ARRAY_S16) else _WORDS.get(self.enc, 1)
            object.__setattr__(self, "words", natural)
        sources = (self.register, self.compute, self.integrates, self.frame_offset)
        if all(source is None for source in sources):
            raise ValueError(
                f"field {self.key}: needs a register, a compute function, a power to integrate or a frame offset"
            )
        if self.direction not in (1, -1):
            raise ValueError(f"field {self.key}: direction must be 1 or -1")
        if self.lifetime and self.unit not in ("kWh", "Wh"):
            raise ValueError(f"field {self.key}: a lifetime counter counts kWh or Wh")
        if self.frame_offset is not None and not 1 <= self.frame_bytes <= 4:
            raise ValueError(f"field {self.key}: a frame field needs frame_bytes 1..4")

    @property
    def registers(self) -> range:
        if self.register is None:
            return range(0)
        return range(self.register, self.register + self.words)

    @property
    def display_name(self) -> str:
        return self.name or humanise(self.key)

    def label(self, value: str) -> str:
        """The words shown for the option or flag ``value``: ``floating`` -> ``Floating``."""
        return (self.labels or {}).get(value) or humanise(value)

    def value_labels(self) -> dict[str, str]:
        """Every known option or flag value with its words, for Home Assistant's templates."""
        values = [*(self.options or {}).values(), *(self.flags or {}).values()]
        return {value: self.label(value) for value in dict.fromkeys(values)}

    @property
    def is_text(self) -> bool:
        return self.enc in (Enc.ASCII, Enc.BITS, Enc.VERSION, Enc.HEX32) or self.options is not None

    def applies_to(self, variant: str | None) -> bool:
        return not self.variants or variant in self.variants

    def decode(self, regs: Mapping[int, int]) -> Any:
        """Decode this field from ``regs``; None if registers are missing or the value is not finite."""
        value = self._decode(regs)
        return value if is_finite(value) else None

    def _decode(self, regs: Mapping[int, int]) -> Any:
        if self.register is None:
            return None
        if self.enc in (Enc.ARRAY_U16, Enc.ARRAY_S16):
            return self._decode_array(regs)
        if self.enc is Enc.BITS:
            return self._decode_bits(regs)
        words = [regs.get(r) for r in self.registers]
        if any(w is None for w in words):
            return None
        if self.enc is Enc.ASCII:
            return _ascii(words)  # type: ignore[arg-type]
        if self.enc is Enc.VERSION:
            b = (words[0] << 16 | words[1]).to_bytes(4, "big")  # type: ignore[operator]
            return f"V{b[1]:02d}.{b[2]:02d}.{b[3]:02d}"
        if self.enc is Enc.HEX32:
            return f"{words[0]:04X}{words[1]:04X}"
        raw = _integer(self.enc, words)  # type: ignore[arg-type]
        if self.mask is not None:
            raw = (raw >> self.shift) & self.mask
        if self.boolean:
            return bool(raw)
        if self.options is not None:
            return self.options.get(raw, f"unknown ({raw})")
        return self.scaled(raw)

    @property
    def frame_end(self) -> int:
        """One past the last frame byte this field needs (0 for fields not in a frame)."""
        return 0 if self.frame_offset is None else self.frame_offset + self.frame_bytes

    def decode_frame(self, frame: bytes) -> int | float | None:
        """This field from a notified frame: None if the frame is too short or the raw value is ``no_value``."""
        if self.frame_offset is None or len(frame) < self.frame_end:
            return None
        chunk = frame[self.frame_offset : self.frame_end]
        if self.no_value is not None and int.from_bytes(chunk, "big") == self.no_value:
            return None
        value = self.scaled(int.from_bytes(chunk, "big", signed=self.signed))
        return value if is_finite(value) else None

    def within_limits(self, value: Any) -> bool:
        if self.limits is None or not isinstance(value, int | float):
            return True
        low, high = self.limits
        return low <= value <= high

    def scaled(self, raw: float) -> int | float:
        value = raw * self.scale + self.offset
        if not math.isfinite(value):
            return value  # int() and round() would raise; decode() drops it as unreadable
        digits = _decimals(self.scale)
        if digits == 0 and float(self.offset).is_integer():
            return int(value)
        return round(value, digits)

    def _decode_bits(self, regs: Mapping[int, int]) -> list[str] | None:
        # A word that was not read contributes no bits, so a partial read (the
        # DCC G6 has no 0x0122) still reports the faults it can see.
        flags = self.flags or {}
        present = False
        active = []
        for index, reg in enumerate(self.registers):
            word = regs.get(reg)
            if word is None:
                continue
            present = True
            base = 16 * (self.words - 1 - index)
            for bit in range(16):
                if word >> bit & 1 and (base + bit) in flags:
                    active.append((base + bit, flags[base + bit]))
        if not present:
            return None
        return [name for _, name in sorted(active, reverse=True)]

    def _decode_array(self, regs: Mapping[int, int]) -> list[int | float] | None:
        count = regs.get(self.count_register) if self.count_register is not None else self.max_items
        if count is None:
            return None
        count = min(count, self.max_items)
        words = [regs.get(r) for r in range(self.register, self.register + count)]  # type: ignore[operator]
        if any(w is None for w in words):
            return None
        signed = self.enc is Enc.ARRAY_S16
        return [self.scaled(_s16(w) if signed else w) for w in words]  # type: ignore[arg-type]


_ACRONYMS = {
    "pv": "PV",
    "soc": "SOC",
    "ac": "AC",
    "bms": "BMS",
    "mosfet": "MOSFET",
    "mos": "MOS",
    "id": "ID",
    "dc": "DC",
    "mppt": "MPPT",
}


def humanise(key: str) -> str:
    """``pv_power`` -> ``PV power``: the entity name Home Assistant shows when none is given."""
    words = [_ACRONYMS.get(w, w) for w in key.split("_")]
    first = words[0] if words[0].isupper() else words[0].capitalize()
    return " ".join([first, *words[1:]])


def is_finite(value: Any) -> bool:
    """False for a float that is NaN or ±Infinity, or a list or mapping holding one.

    JSON has no such numbers (``json.dumps`` would write ``NaN``/``Infinity``,
    which Home Assistant and every strict parser refuse), so such a value is
    treated like an unreadable one: left out of the values, never published.
    Iterative, so a deeply nested hand-edited config cannot exhaust the stack.
    """
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return False
        if isinstance(item, list):
            pending.extend(item)
        elif isinstance(item, Mapping):
            pending.extend(item.values())
    return True


def _decimals(scale: float) -> int:
    if scale >= 1:
        return 0
    return max(0, math.ceil(-math.log10(scale) - 1e-9))


def _s16(word: int) -> int:
    return word - 0x10000 if word & 0x8000 else word


def _sign_magnitude(value: int, bits: int) -> int:
    sign = 1 << (bits - 1)
    return -(value & (sign - 1)) if value & sign else value


def _integer(enc: Enc, words: list[int]) -> int:
    if enc is Enc.U16:
        return words[0]
    if enc is Enc.S16:
        return _s16(words[0])
    if enc in (Enc.U32, Enc.S32):
        value = 0
        for word in words:
            value = value << 16 | word
        if enc is Enc.S32 and value & 0x80000000:
            value -= 1 << 32
        return value
    if enc is Enc.U8_HI:
        return words[0] >> 8
    if enc is Enc.U8_LO:
        return words[0] & 0xFF
    if enc is Enc.SM8_HI:
        return _sign_magnitude(words[0] >> 8, 8)
    if enc is Enc.SM8_LO:
        return _sign_magnitude(words[0] & 0xFF, 8)
    if enc is Enc.SM16:
        return _sign_magnitude(words[0], 16)
    raise ValueError(f"not an integer encoding: {enc}")


def _ascii(words: list[int]) -> str:
    raw = b"".join(w.to_bytes(2, "big") for w in words)
    text = raw.decode("ascii", errors="replace")
    # keep printable characters only: a module with a half-written EEPROM must
    # not put control characters into a Home Assistant state
    text = "".join(ch for ch in text if ch.isprintable() and ch != "\ufffd")
    return text.strip(" \x00")


@dataclass(frozen=True)
class Block:
    """One read request of the plan.

    ``static`` blocks hold identity or settings (model, serial, battery type):
    they are read on the first poll of a connection and then refreshed only
    every ``STATIC_REFRESH_POLLS`` polls. ``optional`` blocks may be missing on
    some models: a Modbus exception there is noted, not a failed poll.
    ``when`` decides from the values read so far whether to send it at all.
    """

    start: int
    count: int
    name: str = ""
    static: bool = False
    optional: bool = False
    when: Callable[[Values], bool] | None = None
    variants: tuple[str, ...] = ()

    @property
    def registers(self) -> range:
        return range(self.start, self.start + self.count)


@dataclass(frozen=True)
class Control:
    """A writable value, exposed as a switch (or number) in Home Assistant.

    The write goes to ``register`` with function 0x06; the new state is then
    confirmed by reading ``state_field`` back (its block is re-read).
    """

    key: str
    register: int
    state_field: str
    component: str = "switch"
    payload_on: int = 1
    payload_off: int = 0
    name: str | None = None
    icon: str | None = None
    description: str = ""
    category: Category | None = None

    @property
    def display_name(self) -> str:
        return self.name or humanise(self.key)


RENOGY_WRITE_SERVICE = "0000ffd0-0000-1000-8000-00805f9b34fb"
RENOGY_WRITE_CHAR = "0000ffd1-0000-1000-8000-00805f9b34fb"
RENOGY_NOTIFY_SERVICE = "0000fff0-0000-1000-8000-00805f9b34fb"
RENOGY_NOTIFY_CHAR = "0000fff1-0000-1000-8000-00805f9b34fb"


@dataclass(frozen=True)
class GattProfile:
    """Where requests are written and replies arrive, by service and characteristic UUID."""

    write_service: str = RENOGY_WRITE_SERVICE
    write_char: str = RENOGY_WRITE_CHAR
    notify_service: str = RENOGY_NOTIFY_SERVICE
    notify_char: str = RENOGY_NOTIFY_CHAR


@dataclass(frozen=True)
class Variant:
    """A sub-model that changes the Modbus id, scales or read plan."""

    name: str
    modbus_id: int
    description: str
    name_patterns: tuple[str, ...] = ()


class StreamSink(Protocol):
    """What a stream link feeds: notification bytes, and a reset at every connection boundary."""

    def feed(self, data: bytes) -> None: ...

    def reset(self) -> None: ...


class NotifyLink(Protocol):
    """What a stream driver needs from a transport (``transport.BleLink`` has it).

    ``start_notify`` subscribes ``sink`` to the characteristic once per connection:
    calling it again on the same connection does nothing, after a reconnect it
    subscribes anew. The link calls ``sink.reset()`` whenever a connection ends or
    a subscription starts, so bytes of two connections never meet in one buffer.
    """

    async def start_notify(self, service_uuid: str, char_uuid: str, sink: StreamSink) -> None: ...


class ModbusLink(Protocol):
    """What a driver needs from a transport: register reads and writes."""

    async def read_registers(self, slave_id: int, start: int, count: int) -> list[int]: ...

    async def write_register(self, slave_id: int, register: int, value: int) -> None: ...


@dataclass
class Reading:
    """The result of one poll."""

    values: Values
    registers: dict[int, int] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # optional blocks that failed
    # Counters a driver keeps about its data (stream devices: frames good / rejected by
    # reason); they reach the device list as the unit's ``diagnostics``.
    diagnostics: dict[str, int] = field(default_factory=dict)


STATIC_REFRESH_POLLS = 60


def type_name_for(cls_name: str) -> str:
    """``RenogyInverter`` -> ``renogy_inverter``; ``GenericModbus`` -> ``generic_modbus``."""
    snake = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", cls_name)
    return snake.lower()


class BaseDevice:
    """A device family. Subclasses declare tables; instances are configured devices."""

    type_name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    manufacturer: ClassVar[str] = "Renogy"
    model_hint: ClassVar[str] = ""
    default_modbus_id: ClassVar[int] = 0xFF
    name_patterns: ClassVar[tuple[str, ...]] = ()
    manufacturer_ids: ClassVar[tuple[int, ...]] = ()
    blocks: ClassVar[tuple[Block, ...]] = ()
    fields: ClassVar[tuple[Field, ...]] = ()
    controls: ClassVar[tuple[Control, ...]] = ()
    variants: ClassVar[tuple[Variant, ...]] = ()
    default_variant: ClassVar[str | None] = None
    # Transport hints: GATT layout, an init read, slower pacing.
    gatt: GattProfile = GattProfile()
    protocol: ClassVar[DeviceProtocol] = DeviceProtocol.MODBUS
    # Longest a read may wait for data beyond its requests (a stream driver's wait for a
    # frame); the scheduler adds it to the read's time limit.
    read_wait: ClassVar[float] = 0.0
    init_read_uuid: ClassVar[str | None] = None
    init_delay: ClassVar[float] = 0.0
    request_pacing: ClassVar[float] = 0.05
    # Fields whose value names the model, serial and firmware for the HA device.
    model_field: ClassVar[str | None] = None
    serial_field: ClassVar[str | None] = None
    sw_field: ClassVar[str | None] = None
    requires_config: ClassVar[bool] = False
    scan_priority: ClassVar[int] = 50  # order among equally likely matches in a scan (lower first)
    # Finding units behind a shared module (probe.py): the Modbus IDs where this family sits on a
    # daisy chain or behind a Communication Hub (docs/devices.md lists them), read in that order.
    probe_ids: ClassVar[tuple[int, ...]] = ()
    abstract: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "abstract" not in cls.__dict__:
            cls.abstract = False
        if not cls.abstract and "type_name" not in cls.__dict__:
            cls.type_name = type_name_for(cls.__name__)

    def __init__(
        self,
        *,
        modbus_id: int | None = None,
        variant: str | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        self.variant = variant or self.default_variant
        if self.variants and self.variant not in {v.name for v in self.variants}:
            known = ", ".join(v.name for v in self.variants)
            raise ValueError(f"unknown variant {self.variant!r} for {self.type_name} (known: {known})")
        self.modbus_id = self.default_id_for(self.variant) if modbus_id is None else modbus_id
        self.config = dict(config or {})
        self._static: dict[int, int] = {}
        self._polls_since_static: int | None = None  # None: static blocks not read yet
        self._unanswered: set[int] = set()  # optional blocks that failed since the last refresh

    # --- identification (probe.py): which family and variant a model text belongs to ---

    @classmethod
    def claims_model(cls, model: str) -> bool:
        """Whether ``model`` (read at ``model_field``) is one of this family's; the default is yes."""
        return True

    @classmethod
    def variant_for_model(cls, model: str, modbus_id: int) -> str | None:
        """The variant a unit with this model at ``modbus_id`` is polled with (None: the default)."""
        return None

    def identity(self, values: Mapping[str, Any]) -> dict[str, str]:
        """What the unit says it is, as read: ``model``, ``firmware`` and ``serial`` (those its
        family has and the last poll read); the device page and the first-contact event show them."""
        found: dict[str, str] = {}
        for name, key in (("model", self.model_field), ("firmware", self.sw_field), ("serial", self.serial_field)):
            value = values.get(key) if key else None
            if value is not None and (text := str(value).strip()):
                found[name] = text
        return found

    def identity_block(self) -> Block | None:
        """The registers that name the unit: the block holding the model (and serial, if nearby)."""
        return self.block_for_field(self.model_field) if self.model_field else None

    # --- table access (instance methods so generic_modbus can build its own) ---

    @classmethod
    def default_id_for(cls, variant: str | None) -> int:
        for v in cls.variants:
            if v.name == variant:
                return v.modbus_id
        return cls.default_modbus_id

    def active_fields(self) -> list[Field]:
        return [f for f in self.fields if f.applies_to(self.variant)]

    def active_blocks(self) -> list[Block]:
        return [b for b in self.blocks if not b.variants or self.variant in b.variants]

    def field(self, key: str) -> Field | None:
        return next((f for f in self.active_fields() if f.key == key), None)

    def energy_fields(self) -> list[Field]:
        """The counters the gateway integrates for this device (energy.py), not decoded."""
        return [f for f in self.active_fields() if f.integrates is not None]

    def lifetime_counters(self) -> list[Field]:
        """The device's own lifetime energy counters, guarded against glitches (energy.py)."""
        return [f for f in self.active_fields() if f.lifetime]

    def diagnostics(self) -> dict[str, int]:
        """Counters about the data this unit sent (none for Modbus drivers); see ``Reading.diagnostics``."""
        return {}

    def control(self, key: str) -> Control | None:
        return next((c for c in self.controls if c.key == key), None)

    # --- decoding ---

    def decode(self, regs: Mapping[int, int]) -> Values:
        """Decode every field whose registers are present, then derived fields."""
        values: Values = {}
        for f in self.active_fields():
            if f.register is None:
                continue
            value = f.decode(regs)
            if value is not None:
                values[f.key] = value
        for f in self.active_fields():
            if f.compute is None:
                continue
            try:
                value = f.compute(values)
            except (KeyError, TypeError, ValueError, ZeroDivisionError):
                value = None
            if not is_finite(value):
                continue  # e.g. a ratio of huge numbers: no JSON for it, so no value
            if isinstance(value, float):
                value = round(value, 3 if f.precision is None else f.precision)
            if value is not None:
                values[f.key] = value
        return values

    # --- polling ---

    def plan(self, *, include_static: bool) -> Iterable[Block]:
        for block in self.active_blocks():
            if block.static and not include_static:
                continue
            yield block

    async def read(self, link: ModbusLink) -> Reading:
        """Run the read plan over ``link`` and decode the result.

        Static blocks are read on the first poll and every
        ``STATIC_REFRESH_POLLS`` polls; between refreshes their cached registers
        are reused. An optional block that answers with a Modbus exception or
        not at all (the RIV4835 never answers its model block) is skipped and not
        asked again until the next static refresh, so a model gap costs one
        timeout per refresh instead of one per poll. A failure on a required
        block propagates and the poll fails.
        """
        refresh = self._polls_since_static is None or self._polls_since_static >= STATIC_REFRESH_POLLS
        if refresh:
            self._unanswered = set()
        regs: dict[int, int] = {} if refresh else dict(self._static)
        reading = Reading(values={}, registers=regs)
        static_regs: dict[int, int] = {}
        for block in self.plan(include_static=refresh):
            if block.start in self._unanswered:
                continue
            # ``when`` conditions see the values decoded so far (e.g. the model)
            if block.when is not None and not block.when(self.decode(regs)):
                continue
            try:
                words = await link.read_registers(self.modbus_id, block.start, block.count)
            except (ModbusException, TimeoutError) as exc:
                if not block.optional:
                    raise
                self._unanswered.add(block.start)
                reading.skipped.append(f"{block.name or hex(block.start)}: {exc or 'no reply'}")
                continue
            for i, word in enumerate(words):
                regs[block.start + i] = word
                if block.static:
                    static_regs[block.start + i] = word
        if refresh:
            self._static = static_regs
            self._polls_since_static = 0
        else:
            self._polls_since_static += 1
        reading.values = self.decode(regs)
        return reading

    async def write_control(self, link: ModbusLink, key: str, on: bool) -> None:
        control = self.control(key)
        if control is None:
            raise KeyError(f"{self.type_name} has no control {key!r}")
        value = control.payload_on if on else control.payload_off
        await link.write_register(self.modbus_id, control.register, value)

    def block_for_field(self, key: str) -> Block | None:
        f = self.field(key)
        if f is None or f.register is None:
            return None
        for block in self.active_blocks():
            if f.register in block.registers:
                return block
        return None

    # --- recognition ---

    @classmethod
    def matches_name(cls, name: str | None) -> bool:
        if not name:
            return False
        clean = name.strip()
        return any(fnmatchcase(clean.upper(), p.upper()) for p in cls.all_name_patterns())

    @classmethod
    def all_name_patterns(cls) -> tuple[str, ...]:
        patterns = list(cls.name_patterns)
        for v in cls.variants:
            patterns.extend(v.name_patterns)
        return tuple(dict.fromkeys(patterns))

    @classmethod
    def variant_for_name(cls, name: str | None) -> str | None:
        if not name:
            return None
        clean = name.strip().upper()
        for v in cls.variants:
            if any(fnmatchcase(clean, p.upper()) for p in v.name_patterns):
                return v.name
        return None

    @classmethod
    def describe(cls) -> dict[str, Any]:
        """What the gateway advertises about this type (info topic, docs)."""
        return {
            "type": cls.type_name,
            "description": cls.description,
            "default_modbus_id": cls.default_modbus_id,
            "variants": [
                {"name": v.name, "modbus_id": v.modbus_id, "description": v.description} for v in cls.variants
            ],
            "name_patterns": list(cls.all_name_patterns()),
            "requires_config": cls.requires_config,
            "controls": [c.key for c in cls.controls],
            "protocol": str(cls.protocol),
        }

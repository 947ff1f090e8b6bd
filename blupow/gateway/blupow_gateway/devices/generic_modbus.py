"""A driver configured entirely by data, for Modbus-over-BLE devices without their own module.

The ``config`` block is validated against ``schemas/generic_modbus.schema.json``
and then turned into the same :class:`Block` and :class:`Field` objects the
built-in drivers declare, so decoding, Home Assistant discovery and the
simulator-facing tools treat it exactly like any other family.
See docs/custom-device-guide.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..schema import ConfigError, InputError, clean, validate
from .base import BaseDevice, Block, Category, Enc, Field, GattProfile

PREFIX = "generic_modbus config"

# value = raw × scale + offset, with raw at most 32 bits (|raw| < 2**32). With these bounds
# the largest value is about 4.3e18: always finite, and a config cannot ask for absurd
# numbers (``scale: 1e308`` overflowed to Infinity, which is not JSON). 1e-9 is finer than
# any register resolution (nano-units) and keeps the decimals derived from it at 9 at most;
# 1e9 covers any unit conversion (e.g. GWh counted in Wh). The schema carries the same
# bounds for editors; they are checked here first so the message can name the field.
SCALE_RANGE = (1e-9, 1e9)
OFFSET_RANGE = (-1e9, 1e9)
_RANGES = {"scale": SCALE_RANGE, "offset": OFFSET_RANGE}

_ENCODINGS = {
    "u16": Enc.U16,
    "s16": Enc.S16,
    "u32": Enc.U32,
    "s32": Enc.S32,
    "u8_hi": Enc.U8_HI,
    "u8_lo": Enc.U8_LO,
    "sign_magnitude": Enc.SM16,
    "sign_magnitude_hi": Enc.SM8_HI,
    "sign_magnitude_lo": Enc.SM8_LO,
    "string": Enc.ASCII,
    "bitfield": Enc.BITS,
}


def _field(index: int, spec: Mapping[str, Any]) -> Field:
    enc = _ENCODINGS[spec["type"]]
    words = 0
    if enc is Enc.ASCII:
        if "length" not in spec:
            raise ConfigError(f"{PREFIX}: fields[{index}].length is required for type string")
        words = spec["length"]
    elif enc is Enc.BITS:
        words = spec.get("length", 1)
        if words > 2:
            raise ConfigError(f"{PREFIX}: fields[{index}].length must be 1 or 2 for type bitfield")
    elif "length" in spec:
        raise ConfigError(f"{PREFIX}: fields[{index}].length only applies to string and bitfield")
    flags = {int(bit): name for bit, name in spec.get("bits", {}).items()} or None
    if enc is Enc.BITS and not flags:
        raise ConfigError(f"{PREFIX}: fields[{index}].bits is required for type bitfield")
    if flags and max(flags) >= 16 * words:
        raise ConfigError(f"{PREFIX}: fields[{index}].bits uses bit {max(flags)} beyond {words} register(s)")
    options = {int(raw): text for raw, text in spec.get("options", {}).items()} or None
    return Field(
        spec["key"],
        spec["register"],
        enc,
        words=words,
        scale=spec.get("scale", 1.0),
        offset=spec.get("offset", 0.0),
        unit=spec.get("unit"),
        device_class=spec.get("device_class"),
        state_class=spec.get("state_class"),
        precision=spec.get("precision"),
        category=Category(spec["entity_category"]) if "entity_category" in spec else None,
        name=spec.get("name"),
        icon=spec.get("icon"),
        flags=flags,
        options=options,
        description=spec.get("name", ""),
    )


def _show(number: float) -> str:
    """``1e+308``; an integer typed out beyond float range only by its sign and size."""
    try:
        return f"{number:g}"
    except OverflowError:  # e.g. a 400-digit integer literal, which JSON allows
        return "-1e+308 or less" if number < 0 else "1e+308 or more"


def _check_ranges(config: Mapping[str, Any]) -> None:
    """Refuse a scale or offset outside its range, naming the field by index and key.

    Runs before the schema check and skips whatever the schema will report
    (wrong types, missing keys), so that only the range rule speaks here.
    """
    fields = config.get("fields")
    if not isinstance(fields, list):
        return
    for index, spec in enumerate(fields):
        if not isinstance(spec, Mapping):
            continue
        key = spec.get("key")
        label = f"fields[{index}]" + (f' "{key[:48]}"' if isinstance(key, str) else "")  # longer keys are invalid
        for name, (low, high) in _RANGES.items():
            value = spec.get(name)
            if isinstance(value, int | float) and not isinstance(value, bool) and not low <= value <= high:
                raise ConfigError(
                    f"{PREFIX}: {label}: {name} {_show(value)} is out of range (allowed {_show(low)} … {_show(high)})"
                )


def build(config: Mapping[str, Any]) -> tuple[tuple[Block, ...], tuple[Field, ...]]:
    """Validate ``config`` and build the read plan and field table from it."""
    try:
        config = clean(config)
    except InputError as exc:
        raise ConfigError(f"{PREFIX}: {exc}") from None
    _check_ranges(config)
    validate("generic_modbus", config, PREFIX)
    blocks = tuple(
        Block(
            b["start"],
            b["count"],
            name=b.get("name", ""),
            optional=b.get("optional", False),
            static=b.get("static", False),
        )
        for b in config["blocks"]
    )
    fields = tuple(_field(i, spec) for i, spec in enumerate(config["fields"]))
    seen: set[str] = set()
    covered = {reg for b in blocks for reg in b.registers}
    for i, f in enumerate(fields):
        if f.key in seen:
            raise ConfigError(f"{PREFIX}: fields[{i}].key {f.key!r} is used twice")
        seen.add(f.key)
        missing = [r for r in f.registers if r not in covered]
        if missing:
            raise ConfigError(f"{PREFIX}: fields[{i}].register {missing[0]} is not read by any block")
    return blocks, fields


class GenericModbus(BaseDevice):
    description = "Any Modbus-over-BLE device described by a JSON config block (no code needed)"
    model_hint = "Modbus device"
    manufacturer = "Generic"
    requires_config = True

    def __init__(
        self, *, modbus_id: int | None = None, variant: str | None = None, config: Mapping[str, Any] | None = None
    ) -> None:
        if config is None:
            raise ConfigError(f"{PREFIX}: a config block is required")
        blocks, fields = build(config)
        super().__init__(
            modbus_id=modbus_id if modbus_id is not None else config.get("modbus_id"), variant=variant, config=config
        )
        self.blocks = blocks  # type: ignore[misc]
        self.fields = fields  # type: ignore[misc]
        self.manufacturer = config.get("manufacturer", "Generic")  # type: ignore[misc]
        self.model_hint = config.get("model", "Modbus device")  # type: ignore[misc]
        self.request_pacing = config.get("request_pacing", self.request_pacing)  # type: ignore[misc]
        default = GattProfile()
        self.gatt = GattProfile(
            write_service=config.get("write_service_uuid", default.write_service).lower(),
            write_char=config.get("write_char_uuid", default.write_char).lower(),
            notify_service=config.get("notify_service_uuid", default.notify_service).lower(),
            notify_char=config.get("notify_char_uuid", default.notify_char).lower(),
        )

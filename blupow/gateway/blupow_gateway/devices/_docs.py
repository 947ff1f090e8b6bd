"""Render docs/devices.md from the drivers' tables: ``python -m blupow_gateway.devices._docs OUT [--check]``.

The state JSON keys are public API (users' templates use them), so the
reference is generated from the same tables that decode them and a test keeps
the committed file in sync.
"""

from __future__ import annotations

import sys
from pathlib import Path

from . import drivers
from .base import BaseDevice, DeviceProtocol, Field

HEADER = """# Device reference

Generated from the driver tables by `scripts/gen-device-docs`; do not edit by hand.

Every key below appears in the device's state JSON on `blupow/<MAC>/state` when the device
reports it (a value that could not be read is left out, never sent as 0) and becomes a Home
Assistant entity through MQTT discovery. Units are the physical units after scaling. Lists are
JSON arrays (one entity per item in Home Assistant). Keys are stable: templates may rely on them.

Columns: **HA** is the Home Assistant `device_class` / `state_class`; **register** is the Modbus
holding register (decimal and hex) and its encoding; *derived* values are computed from other keys.
A value or a name is a key in the state JSON (`floating`, `pv_input_over_voltage`); Home Assistant
shows the words given in parentheses (or the key in words: "PV input over voltage").

"""

DECISIONS = """
## Decisions where sources disagree

The register tables come from Renogy's own documents (Rover Modbus DOCX, Charge Controller
RS485 Modbus Protocol V1.7, Lithium Iron Battery BMS Modbus Protocol V1.7, the DCC register
sheet) and, for inverters, from the open-source readers that captured them. Where they disagree:

- **Energy counters are Wh.** The DOCX text says "kWh/10000", but the V1.7 PDF, the DCC sheet
  ("accumulated generated power wh"), solarthing's `KWH_DIVIDER = 1000` and captured values
  (34 Ah today at 12.9 V against 432 "units") all point to watt-hours. Daily counters are
  published in Wh, lifetime totals converted exactly to kWh (3 decimals); both are
  `energy` / `total_increasing`, ready for the Energy dashboard. Daily counters reset at midnight,
  which `total_increasing` treats as a meter reset. Lifetime totals are the device's own counters;
  the gateway only holds back a single reading that goes down or jumps impossibly high, and
  carries a confirmed reset forward so the published total never goes down.
- **Inverter energy statistics (4501–4567, protocol V1.8) are not read.** No reader uses them over
  Bluetooth, the document gives "1AH" as the unit of energy values, and Ah where Wh is meant. The
  inverter's AC output, AC input, solar and battery energy are integrated by the gateway from
  its power readings instead (AC input power = voltage × current, an apparent power).
- **Battery, Smart Shunt: no energy counter exists** (BMS V1.7 table; no counter found in the shunt
  frame): energy charged and discharged are integrated by the gateway from the power.
- **Controller temperatures are sign-magnitude bytes** (bit 7 = below zero), as the DOCX, CC V1.7
  and solarthing say. Two's complement gives the "-1 °C shown as -127 °C" bug users reported,
  unsigned parsing the "129 °C" one. Battery (BMS) temperatures and current are two's complement
  16-bit values, as the BMS document says ("have symbol").
- **Controller fault bits B17/B18** follow Table 1 of the DOCX (B17 over-voltage, B18
  under-voltage warning); its §3.15 example swaps them, solarthing follows Table 1.
- **Legacy battery cell voltages are 0.1 V** (BMS doc, two captured frames); one library's mV
  reading rests on a synthetic test value only.
- **Battery current scale** is 0.01 A for legacy and RNGPRO batteries (vendor doc and captures)
  and 0.1 A for Pro (RNGRBP/RNGC) batteries (two independent libraries); it is a variant of
  `renogy_battery`.
- **Inverter load current (4408)** is read ×0.1 A, as two of three readings do (renogy-bt and
  renogy-ble's RIV4835 path); it keeps load current × output voltage close to the apparent power.
- **Controller model** is 16 characters (0x000C×8; DOCX, solarthing), trailing spaces and NULs
  stripped; one library reads 14.
- **Dynamic block length**: 34 words at 0x0100 (what every working reader sends). The 35th word
  (0x0122) is reserved on controllers; DC-DC chargers read it in their 0x0120 status block.
- **DCC status**: the charging state is the low byte of 0x0120 (DCC sheet); renogy-bt's parse of
  byte 2 always yields "current limiting" and is not followed.
"""


def _ha(f: Field) -> str:
    enum = "enum" if f.options and not f.flags else None  # discovery.py: one of a few states
    parts = [p for p in (f.device_class or enum, f.state_class) if p]
    if f.component != "sensor":
        parts.insert(0, f.component)
    return " / ".join(parts) or "–"


def _frame_bytes(f: Field) -> str:
    assert f.frame_offset is not None
    span = f"bytes {f.frame_offset}–{f.frame_end - 1}" if f.frame_bytes > 1 else f"byte {f.frame_offset}"
    text = f"{span} {'s' if f.signed else 'u'}{8 * f.frame_bytes}"
    if f.scale != 1:
        text += f", ×{f.scale:g}"
    if f.no_value is not None:
        text += f", 0x{f.no_value:X} = none"
    return text


def _register(f: Field) -> str:
    if f.frame_offset is not None:
        return _frame_bytes(f)
    if f.register is None:
        return "*derived*"
    span = f"{f.register} (0x{f.register:04X})"
    if f.words > 1 and f.enc.value not in ("array_u16", "array_s16"):
        span = f"{f.register}–{f.register + f.words - 1} (0x{f.register:04X})"
    enc = f.enc.value
    if f.mask is not None:
        enc += f", bits {f.shift}–{f.shift + f.mask.bit_length() - 1}"
    if f.scale != 1:
        enc += f", ×{f.scale:g}"
    return f"{span} {enc}"


def _meaning(f: Field) -> str:
    text = f.description or f.display_name
    if f.options:
        # the key in the state JSON, and what Home Assistant shows for it
        values = ", ".join(f"`{v}` ({label})" for v, label in f.value_labels().items())
        text = f"{text.rstrip('.')}. Values: {values}."
    if f.flags:
        names = [f"`{v}`" for _, v in sorted(f.flags.items())]
        if len(names) > 12:  # per-cell alarm maps: show the pattern, not 32 names
            names = [*names[:4], "…", *names[-2:]]
        text += " Names: " + ", ".join(names) + "."
    if f.variants:
        text += f" (variant{'s' if len(f.variants) > 1 else ''} {', '.join(f.variants)})"
    if (f.limits is not None or f.confidence is not None) and not text.endswith("."):
        text += "."
    if f.limits is not None:
        low, high = f.limits
        text += f" Valid {low:g}…{high:g} {f.unit or ''}".rstrip()
        text += "; outside, the whole frame is rejected." if f.rejects_frame else "; outside, left out."
    if f.confidence is not None:
        text += f" Confidence: **{f.confidence.value}**."
    if f.category:
        text += f" *{f.category.value}*"
    if not f.enabled_default:
        text += " *disabled by default*"
    return text.replace("|", "\\|")


def render_driver(cls: type[BaseDevice]) -> str:
    lines = [f"## `{cls.type_name}`", "", cls.description + ".", ""]
    if cls.requires_config:
        lines += [
            "Fields, read plan and Modbus id come from the device's `config` block; see",
            "[custom-device-guide.md](custom-device-guide.md).",
            "",
        ]
        return "\n".join(lines)
    if cls.protocol is DeviceProtocol.NOTIFY_STREAM:
        return "\n".join([*lines, *_stream_lines(cls), "", *_table(cls), ""])
    lines.append(f"- Default Modbus id: {cls.default_modbus_id} (0x{cls.default_modbus_id:02X})")
    if cls.probe_ids:
        lines.append(
            "- Looked for by `probe_module` behind a shared module at Modbus ids "
            + ", ".join(str(i) for i in cls.probe_ids)
        )
    for v in cls.variants:
        lines.append(f"- Variant `{v.name}`: Modbus id {v.modbus_id} (0x{v.modbus_id:02X}); {v.description}")
    lines.append(
        f"- Recognised in a scan by: {', '.join(f'`{p}`' for p in cls.all_name_patterns())}"
        + (f"; manufacturer id {', '.join(f'0x{m:04X}' for m in cls.manufacturer_ids)}" if cls.manufacturer_ids else "")
    )
    plan = ", ".join(
        f"{b.start}×{b.count}"
        + (" (static" + (", optional)" if b.optional else ")") if b.static else (" (optional)" if b.optional else ""))
        for b in cls.blocks
    )
    if plan:
        lines.append(f"- Read plan (start×words): {plan}")
    for c in cls.controls:
        lines.append(
            f"- Control `{c.key}` ({c.component}): register {c.register} (0x{c.register:04X}) "
            f"← {c.payload_on}/{c.payload_off}, state from `{c.state_field}`. {c.description}"
        )
    return "\n".join([*lines, "", *_table(cls), ""])


def _stream_lines(cls: type[BaseDevice]) -> list[str]:
    return [
        f"- Protocol: a notification stream on `{cls.gatt.notify_char}` (service `{cls.gatt.notify_service}`), "
        "not Modbus; nothing is written. The state is published once per poll interval from the latest good "
        "frame; rejected frames are counted in the device list's `diagnostics` and never published.",
        f"- Recognised in a scan by: {', '.join(f'`{p}`' for p in cls.all_name_patterns())}",
        "- Only fields of high or medium confidence are published; **frame** is the byte offset from the "
        "frame header (big-endian) and its encoding.",
    ]


def _table(cls: type[BaseDevice]) -> list[str]:
    where = "frame" if cls.protocol is DeviceProtocol.NOTIFY_STREAM else "register"
    lines = [f"| key | unit | HA | {where} | meaning |", "|---|---|---|---|---|"]
    seen: set[str] = set()
    for f in cls.fields:
        row = f"| `{f.key}` | {f.unit or '–'} | {_ha(f)} | {_register(f)} | {_meaning(f)} |"
        if f.key in seen:
            row = row.replace(f"| `{f.key}` |", "| ″ |", 1)
        seen.add(f.key)
        lines.append(row)
    return lines


BANK_INTRO = """Not a device type of its own (it cannot be added): two or more `renogy_battery` units on one
module also appear as this device, key `<MAC id>_bank`; so do two or more batteries given the same
`bank` name, on any modules, key `bank_<slug>` (`House bank` → `bank_house_bank`), named as given.
A battery with a `bank` name counts only in that bank. Every value is computed from the latest
poll's reading of **every** member; with a member missing the values are left out and the device
is unavailable, while `members_reporting` and `missing_members` stay available and name it
(docs/mqtt-api.md, "Battery banks").

"""


def render_bank() -> str:
    from ..banks import BatteryBank

    return f"## `{BatteryBank.type_name}`\n\n" + BANK_INTRO + "\n".join(_table(BatteryBank)) + "\n"


def render() -> str:
    body = "\n".join(render_driver(cls) for cls in drivers().values())
    return HEADER + body + "\n" + render_bank() + DECISIONS


def main(argv: list[str]) -> int:
    out = Path(argv[0])
    text = render()
    if "--check" in argv:
        if not out.exists() or out.read_text("utf-8") != text:
            print(f"{out} is out of date: run scripts/gen-device-docs", file=sys.stderr)
            return 1
        return 0
    out.write_text(text, "utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Register definitions shared by the SRNE-type firmware of Renogy controllers and DC-DC chargers.

Both families expose the same system-information block (model, versions,
serial, address) and the same layout of the 0x0100 dynamic block; only the
meaning of some registers and the fault bits differ, so each driver picks what
it needs from here. Source: Rover Modbus DOCX Table 1 and CC V1.7 PDF (see
docs/devices.md).
"""

from __future__ import annotations

from typing import Any

from ._fields import DIAG, current, power, soc, temperature, voltage
from .base import Block, Enc, Field

__all__ = ["current", "power", "soc", "temperature", "voltage"]  # re-exported for the drivers

# Identity blocks: static, and optional because some controllers never answer
# 0x000C (renogy-ha#221); a missing model must not fail every poll.
MODEL_BLOCK = Block(0x000C, 8, name="model", static=True, optional=True)
VERSION_BLOCK = Block(0x0014, 7, name="versions, serial, address", static=True, optional=True)
DYNAMIC_BLOCK = Block(0x0100, 34, name="dynamic data")

IDENTITY_FIELDS = (
    Field(
        "model",
        0x000C,
        Enc.ASCII,
        words=8,
        category=DIAG,
        icon="mdi:information-outline",
        description="Product model, e.g. RNG-CTRL-RVR40",
    ),
    Field("software_version", 0x0014, Enc.VERSION, category=DIAG, description="Firmware version"),
    Field(
        "hardware_version", 0x0016, Enc.VERSION, category=DIAG, enabled_default=False, description="Hardware version"
    ),
    Field(
        "serial_number",
        0x0018,
        Enc.HEX32,
        category=DIAG,
        description="Serial number as 8 hex digits (year, month, unit)",
    ),
    Field(
        "device_address",
        0x001A,
        Enc.U8_LO,
        category=DIAG,
        enabled_default=False,
        description="Modbus address stored in the device (low byte of 0x001A)",
    ),
)


def amp_hours(key: str, reg: int, description: str, enc: Enc = Enc.U16) -> Field:
    # Ah counters reset daily or only rise: total_increasing reads a drop as a reset.
    return Field(
        key,
        reg,
        enc,
        unit="Ah",
        state_class="total_increasing",
        precision=0,
        icon="mdi:battery-charging",
        description=description,
    )


def energy_wh(key: str, reg: int, description: str, **kw: Any) -> Field:
    return Field(
        key,
        reg,
        unit="Wh",
        device_class="energy",
        state_class="total_increasing",
        precision=0,
        description=description,
        **kw,
    )


def energy_kwh(key: str, reg: int, description: str, **kw: Any) -> Field:
    # The register counts Wh (CC V1.7, DCC xlsx, solarthing; see docs/devices.md);
    # lifetime totals are published in kWh with exact 3-decimal precision.
    return Field(
        key,
        reg,
        Enc.U32,
        scale=0.001,
        unit="kWh",
        device_class="energy",
        state_class="total_increasing",
        precision=3,
        description=description,
        lifetime=True,
        **kw,
    )


def counter(key: str, reg: int, description: str, unit: str | None = None, **kw: object) -> Field:
    return Field(key, reg, unit=unit, state_class="total_increasing", precision=0, description=description, **kw)  # type: ignore[arg-type]


def has_faults(values: dict[str, object]) -> bool | None:
    faults = values.get("faults")
    return None if faults is None else bool(faults)


FAULT_PROBLEM = Field(
    "fault_active",
    None,
    compute=has_faults,
    component="binary_sensor",
    device_class="problem",
    category=DIAG,
    description="True while any fault bit is set (see faults)",
)

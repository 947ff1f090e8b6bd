"""Input checks shared by the options flow and the services (before anything is sent)."""

from __future__ import annotations

import json
import re
from typing import Any

# Six hex pairs with one consistent separator (":" or "-") or none at all.
_MAC_RE = re.compile(r"^[0-9A-Fa-f]{2}([:-]?)(?:[0-9A-Fa-f]{2}\1){4}[0-9A-Fa-f]{2}$")


class InvalidConfigError(ValueError):
    """The generic_modbus config is not a JSON object; str(err) says why."""


def normalize_mac(value: str) -> str | None:
    """Return the MAC as the gateway writes it (`AA:BB:CC:DD:EE:FF`), or None when it is not one."""
    text = value.strip()
    if not _MAC_RE.match(text):
        return None
    digits = re.sub(r"[:-]", "", text).upper()
    return ":".join(digits[i : i + 2] for i in range(0, 12, 2))


def parse_config(value: str | dict[str, Any]) -> dict[str, Any]:
    """Return the device description object from JSON text (or a mapping given as is).

    Raises InvalidConfigError with a short reason, so nothing malformed reaches the gateway.
    """
    if isinstance(value, dict):
        return value
    try:
        parsed = json.loads(value)
    except ValueError as err:
        raise InvalidConfigError(f"invalid JSON: {err}") from None
    if not isinstance(parsed, dict):
        raise InvalidConfigError("the config must be a JSON object ({...})")
    return parsed


def decode_json(payload: str | bytes) -> Any:
    """Decode an MQTT payload as JSON; None when it is empty or not JSON (never raises)."""
    if isinstance(payload, bytes):
        try:
            payload = payload.decode("utf-8")
        except UnicodeDecodeError:
            return None
    if not payload.strip():
        return None
    try:
        return json.loads(payload)
    except ValueError:
        return None

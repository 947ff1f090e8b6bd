"""The gateway's settings: one validated model from every source.

Sources, lowest to highest precedence:

1. defaults (the ``default`` of each key in ``schemas/settings.schema.json``);
2. the add-on options file (``/data/options.json``, written by the Supervisor at every start);
3. environment variables ``BLUPOW_<KEY>`` (``BLUPOW_LOG_LEVEL``, ``BLUPOW_MQTT_HOST``,
   ``BLUPOW_MQTT_PASSWORD``, ``BLUPOW_DEVICES`` as a JSON list ...); an empty variable counts as unset;
4. command-line overrides (a dict shaped like the options; ``None`` values are ignored).

Each source is validated on its own, so an error names where the bad value came from
(``options: poll_interval must be >= 5``, ``environment variable BLUPOW_POLL_INTERVAL: ...``).
``mqtt`` is merged key by key; every other key, ``devices`` included, is replaced as a whole.
"""

from __future__ import annotations

import copy
import json
import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from types import MappingProxyType
from typing import Any

from . import banks
from . import devices as registry
from .devices.base import BaseDevice
from .schema import ConfigError, load_schema, validate
from .store import clean_bank_name

__all__ = [
    "ENV_PREFIX",
    "LOG_LEVELS",
    "REDACTED",
    "DeviceOption",
    "MqttOverride",
    "Settings",
    "defaults",
    "env_variables",
    "load_settings",
]

SCHEMA = "settings"
ENV_PREFIX = "BLUPOW_"
REDACTED = "**REDACTED**"
LOG_LEVELS = ("trace", "debug", "info", "notice", "warning", "error", "fatal")
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


@dataclass(frozen=True)
class MqttOverride:
    """Manual broker settings; used (all or nothing) only when ``host`` is set."""

    host: str | None = None
    port: int | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool | None = None

    @property
    def is_set(self) -> bool:
        return bool(self.host)

    def redacted(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "port": self.port,
            "username": self.username,
            "password": REDACTED if self.password else None,
            "tls": self.tls,
        }


@dataclass(frozen=True)
class DeviceOption:
    """One device from the options; already checked by building its driver once."""

    mac_address: str
    type: str
    name: str | None = None
    modbus_id: int | None = None
    variant: str | None = None
    # Parsed generic_modbus config; read-only view (a dict cannot be hashed, hence hash=False).
    config: Mapping[str, Any] | None = field(default=None, hash=False)
    bank: str | None = None  # a renogy_battery's bank across modules (banks.py)

    def create(self) -> BaseDevice:
        """A fresh driver instance for this device."""
        config = copy.deepcopy(dict(self.config)) if self.config is not None else None
        return registry.create_device(self.type, modbus_id=self.modbus_id, variant=self.variant, config=config)

    def as_dict(self) -> dict[str, Any]:
        return {
            "mac_address": self.mac_address,
            "type": self.type,
            "name": self.name,
            "modbus_id": self.modbus_id,
            "variant": self.variant,
            "config": copy.deepcopy(dict(self.config)) if self.config is not None else None,
            "bank": self.bank,
        }


@dataclass(frozen=True)
class Settings:
    log_level: str = "info"
    poll_interval: int = 30
    max_connections: int = 2
    keep_connected: bool = True
    connect_timeout: int = 20
    request_timeout: float = 3.0
    adapter: str = "hci0"
    base_topic: str = "blupow"
    gateway_id: str = "gateway"
    discovery_prefix: str = "homeassistant"
    mqtt: MqttOverride = field(default_factory=MqttOverride)
    devices: tuple[DeviceOption, ...] = ()
    # Where the values came from, for the start-up log ("defaults", "options /data/options.json", ...).
    sources: tuple[str, ...] = field(default=(), compare=False)

    def redacted(self) -> dict[str, Any]:
        """Every setting as plain JSON data, safe to log or publish: the password is replaced."""
        return {
            "log_level": self.log_level,
            "poll_interval": self.poll_interval,
            "max_connections": self.max_connections,
            "keep_connected": self.keep_connected,
            "connect_timeout": self.connect_timeout,
            "request_timeout": self.request_timeout,
            "adapter": self.adapter,
            "base_topic": self.base_topic,
            "gateway_id": self.gateway_id,
            "discovery_prefix": self.discovery_prefix,
            "mqtt": self.mqtt.redacted(),
            "devices": [d.as_dict() for d in self.devices],
        }


# --- schema-derived tables ---------------------------------------------------------------------


@cache
def _properties() -> Mapping[str, Any]:
    return MappingProxyType(load_schema(SCHEMA)["properties"])


def defaults() -> dict[str, Any]:
    """The default of every key, as the options file would hold it."""
    return {key: copy.deepcopy(spec["default"]) for key, spec in _properties().items()}


@cache
def _env_table() -> tuple[tuple[str, tuple[str, ...], str], ...]:
    """(variable, path in the settings, kind) for every setting an environment variable can set."""
    rows: list[tuple[str, tuple[str, ...], str]] = []
    for key, spec in _properties().items():
        if key == "devices":
            rows.append((f"{ENV_PREFIX}DEVICES", (key,), "json"))
        elif key == "mqtt":
            for sub, sub_spec in spec["properties"].items():
                rows.append((f"{ENV_PREFIX}MQTT_{sub.upper()}", (key, sub), sub_spec["type"]))
        else:
            rows.append((f"{ENV_PREFIX}{key.upper()}", (key,), spec["type"]))
    return tuple(rows)


def env_variables() -> list[str]:
    """Names of the environment variables :func:`load_settings` reads."""
    return [var for var, _, _ in _env_table()]


# --- reading the sources -----------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    # json accepts NaN and Infinity by default; they would slip past "minimum"/"maximum".
    raise ValueError(f"{name} is not allowed")


def _parse_json(text: str) -> Any:
    """json.loads without NaN/Infinity; raises ValueError with a short reason."""
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{exc.msg} at line {exc.lineno} column {exc.colno}") from None


def _read_options(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"options: cannot read {path} ({reason})") from None
    try:
        data = _parse_json(text)
    except ValueError as exc:
        raise ConfigError(f"options: {path} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"options: {path} must contain a JSON object")
    validate(SCHEMA, data, "options")
    return data


def _convert(var: str, kind: str, raw: str) -> Any:
    """Turn one environment string into the JSON type its setting expects."""
    text = raw.strip()
    if kind == "string":
        return raw
    if kind == "boolean":
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ConfigError(f"environment variable {var} must be true or false (got {raw!r})")
    if kind == "integer":
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"environment variable {var} must be an integer (got {raw!r})") from None
    if kind == "number":
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise ConfigError(f"environment variable {var} must be a number (got {raw!r})")
        return value
    try:
        return _parse_json(text)
    except ValueError as exc:
        raise ConfigError(f"environment variable {var} is not valid JSON ({exc})") from None


def _env_layers(env: Mapping[str, str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """One single-key layer per variable that is set, so errors can name the variable."""
    for var, path, kind in _env_table():
        raw = env.get(var)
        if raw is None or raw.strip() == "":
            continue
        value = _convert(var, kind, raw)
        layer: dict[str, Any] = {path[0]: value} if len(path) == 1 else {path[0]: {path[1]: value}}
        prefix = f"environment variable {var}"
        validate(SCHEMA, layer, prefix)
        yield prefix, layer


def _without_none(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Drop unset command-line values (argparse gives None for options not passed)."""
    clean: dict[str, Any] = {}
    for key, value in overrides.items():
        if isinstance(value, Mapping):
            inner = {k: v for k, v in value.items() if v is not None}
            if inner:
                clean[key] = inner
        elif value is not None:
            clean[key] = value
    return clean


def _merge(merged: dict[str, Any], layer: Mapping[str, Any], prefix: str, origin: dict[str, str]) -> None:
    for key, value in layer.items():
        if key == "mqtt":
            merged["mqtt"] = {**merged.get("mqtt", {}), **copy.deepcopy(value)}
        else:
            merged[key] = copy.deepcopy(value)
        origin[key] = prefix


# --- building the model ------------------------------------------------------------------------


def _config_types() -> list[str]:
    return [name for name, cls in registry.drivers().items() if cls.requires_config]


def _device_config(raw: Any, where: str) -> dict[str, Any] | None:
    """The generic_modbus config as a dict, from an object or a JSON string (the add-on UI form)."""
    if raw is None:
        return None
    if isinstance(raw, str):
        if not raw.strip():
            return None
        try:
            raw = _parse_json(raw)
        except ValueError as exc:
            raise ConfigError(f"{where}.config is not valid JSON ({exc})") from None
        if not isinstance(raw, dict):
            kind = "a list" if isinstance(raw, list) else f"a {type(raw).__name__}"
            raise ConfigError(f"{where}.config must be a JSON object (got {kind})")
    return copy.deepcopy(raw)


def _optional_text(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    return value or None


def _device(index: int, raw: Mapping[str, Any], prefix: str) -> DeviceOption:
    where = f"{prefix}: devices[{index}]"
    type_name = raw["type"]
    try:
        cls = registry.driver(type_name)
    except KeyError as exc:
        raise ConfigError(f"{where}: {exc.args[0]}") from None
    config = _device_config(raw.get("config"), where)
    if config is not None and not cls.requires_config:
        raise ConfigError(f"{where}.config is only used by type {', '.join(_config_types())}")
    variant = _optional_text(raw.get("variant"))
    if variant is not None and not cls.variants:
        raise ConfigError(f"{where}.variant: {type_name} has no variants")
    bank = _device_bank(raw.get("bank"), type_name, where)
    modbus_id = raw.get("modbus_id")
    try:
        # Building the driver once checks the variant and the whole generic_modbus config now,
        # at start-up, instead of on the first poll.
        cls(modbus_id=modbus_id, variant=variant, config=config)
    except ValueError as exc:  # ConfigError is a ValueError
        raise ConfigError(f"{where}: {exc}") from None
    return DeviceOption(
        mac_address=raw["mac_address"].upper(),
        type=type_name,
        name=_optional_text(raw.get("name")),
        modbus_id=modbus_id,
        variant=variant,
        config=MappingProxyType(config) if config is not None else None,
        bank=bank,
    )


def _device_bank(raw: str | None, type_name: str, where: str) -> str | None:
    """The bank name; an empty text is no bank, as the add-on UI may save an emptied field."""
    bank = _optional_text(raw)
    if bank is None:
        return None
    if not banks.is_member(type_name):
        raise ConfigError(f"{where}.bank is only used by type {banks.MEMBER_TYPE}")
    try:
        return clean_bank_name(bank)
    except ValueError as exc:
        raise ConfigError(f"{where}.{exc}") from None


def _devices(raw_list: list[Mapping[str, Any]], prefix: str) -> tuple[DeviceOption, ...]:
    """The devices; one MAC may be listed more than once for the units behind one module
    (a battery bank on a BT-2, a Communication Hub), each with its own ``modbus_id``."""
    built: list[DeviceOption] = []
    seen: dict[str, int] = {}
    for index, raw in enumerate(raw_list):
        device = _device(index, raw, prefix)
        if device.mac_address in seen:
            _check_unit(built[seen[device.mac_address]], seen[device.mac_address], device, index, built, prefix)
        else:
            seen[device.mac_address] = index
        built.append(device)
    return tuple(built)


def _check_unit(
    first: DeviceOption, first_index: int, device: DeviceOption, index: int, built: list[DeviceOption], prefix: str
) -> None:
    """A second entry of a MAC: units on a shared bus need distinct, explicit IDs other than 255."""
    where = f"{prefix}: devices[{index}]"
    shared = f"{device.mac_address} is already used by devices[{first_index}]"
    if device.modbus_id is None or first.modbus_id is None:
        raise ConfigError(
            f"{where}.mac_address {shared}: several devices behind one Bluetooth module each need their own "
            "modbus_id (e.g. 48, 49, ... for a battery bank)"
        )
    if 255 in (device.modbus_id, first.modbus_id):
        raise ConfigError(
            f"{where}: modbus_id 255 reaches every device on a shared bus ({shared}); give each its own modbus_id"
        )
    for other_index, other in enumerate(built):
        if other.mac_address == device.mac_address and other.modbus_id == device.modbus_id:
            raise ConfigError(
                f"{where}: {device.mac_address} with modbus_id {device.modbus_id} is already devices[{other_index}]"
            )


def _mqtt(raw: Mapping[str, Any]) -> MqttOverride:
    port = raw.get("port")
    tls = raw.get("tls")
    return MqttOverride(
        host=_optional_text(raw.get("host")),
        port=int(port) if port is not None else None,
        username=raw.get("username") or None,
        password=raw.get("password") or None,
        tls=bool(tls) if tls is not None else None,
    )


def load_settings(
    options_path: Path | None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build and validate the settings; raises :class:`ConfigError` naming the first problem.

    ``env`` defaults to ``os.environ``; pass ``{}`` to ignore the environment.
    """
    if env is None:
        env = os.environ
    merged = defaults()
    origin: dict[str, str] = dict.fromkeys(merged, "defaults")
    sources = ["defaults"]
    if options_path is not None:
        _merge(merged, _read_options(Path(options_path)), "options", origin)
        sources.append(f"options {options_path}")
    for prefix, layer in _env_layers(env):
        _merge(merged, layer, prefix, origin)
        sources.append(prefix)
    if overrides:
        layer = _without_none(overrides)
        validate(SCHEMA, layer, "command line")
        _merge(merged, layer, "command line", origin)
        sources.extend(f"command line {key}" for key in layer)
    # Each layer was valid on its own; checking the result guards the merge itself.
    validate(SCHEMA, merged, "settings")
    return Settings(
        log_level=merged["log_level"],
        poll_interval=int(merged["poll_interval"]),
        max_connections=int(merged["max_connections"]),
        keep_connected=bool(merged["keep_connected"]),
        connect_timeout=int(merged["connect_timeout"]),
        request_timeout=float(merged["request_timeout"]),
        adapter=merged["adapter"],
        base_topic=merged["base_topic"],
        gateway_id=merged["gateway_id"],
        discovery_prefix=merged["discovery_prefix"],
        mqtt=_mqtt(merged["mqtt"]),
        devices=_devices(merged["devices"], origin["devices"]),
        sources=tuple(sources),
    )

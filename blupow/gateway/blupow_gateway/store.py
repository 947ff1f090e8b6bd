"""The device registry on disk (``<data dir>/devices.json``) and how it merges with the options.

Two kinds of devices exist: those listed in the add-on options (``origin:
options``, rebuilt from the options at every start) and those added over MQTT
(``origin: command``, kept only here). The file holds the command devices in
full plus the ``name``/``enabled``/``bank`` changes made by command to options devices.

Writes are atomic and durable: the JSON goes to a temporary file in the same
directory, which is fsynced, renamed over the old file, and then the directory
is fsynced. A SIGKILL at any moment therefore leaves either the old or the new
file, never a mix (a stray temporary file is removed on the next start).

Reading never loses data silently: a file that cannot be parsed is renamed to
``devices.json.corrupt-<time>`` with an error in the log, and records that are
individually broken are kept in a ``devices.json.rejected-<time>`` copy.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import json
import logging
import os
import re
import time
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .devices.base import is_finite

_LOGGER = logging.getLogger(__name__)

# 2: records are units (one MAC may carry several, each with its own ``unit_id``). A schema-1
# file (one record per MAC) is read as is: each record is the only unit of its module.
SCHEMA_VERSION = 2
FILE_NAME = "devices.json"
ORIGIN_OPTIONS = "options"
ORIGIN_COMMAND = "command"

_MAC = re.compile(r"^[0-9A-F]{2}([:-]?)[0-9A-F]{2}(\1[0-9A-F]{2}){4}$")


def normalise_mac(text: str) -> str | None:
    """``d8-b6-73-bf-4f-75`` / ``d8b673bf4f75`` -> ``D8:B6:73:BF:4F:75``; None if it is not a MAC."""
    clean = text.strip().upper()
    if not _MAC.match(clean):
        return None
    digits = clean.replace(":", "").replace("-", "")
    return ":".join(digits[i : i + 2] for i in range(0, 12, 2))


def mac_id(mac: str) -> str:
    """The MAC as used in topics and unique ids: upper case, no colons."""
    return mac.replace(":", "").upper()


_UNIT_ID = re.compile(r"^[0-9A-F]{12}(_[0-9]{1,3})?$")
_LEDGER_KEY = re.compile(r"^[0-9A-F]{12}(_[0-9]{1,3}|_BANK)?$")  # units, and battery banks (banks.py)
_NAMED_BANK_KEY = re.compile(r"^bank_[a-z0-9]+(_[a-z0-9]+)*$")  # a bank the user named: named_bank_key()
BANK_NAME_MAX = 40


def unit_id_for(mac: str, modbus_id: int | None) -> str:
    """The key of a unit added beside others on a module: ``C464E3383D0E_49``."""
    return mac_id(mac) if modbus_id is None else f"{mac_id(mac)}_{modbus_id}"


def clean_bank_name(name: str) -> str:
    """A bank name as given (``bank`` of a battery's record), stripped; ValueError names the rule."""
    clean = name.strip()
    if not clean:
        raise ValueError("bank must not be empty (leave it out, or null, for no named bank)")
    if len(clean) > BANK_NAME_MAX:
        raise ValueError(f"bank must be at most {BANK_NAME_MAX} characters long")
    if not bank_slug(clean):
        raise ValueError("bank must contain a letter or a digit (A-Z, 0-9): the bank's topics are named after it")
    return clean


def bank_slug(name: str) -> str:
    """``House bank`` -> ``house_bank``: lower case, accents dropped, every other run of
    characters that is not a letter or digit one ``_``, none at either end."""
    ascii_text = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii").lower()
    return re.sub(r"[^a-z0-9]+", "_", ascii_text).strip("_")


def named_bank_key(name: str) -> str:
    """The key of the bank named ``name``: names with the same slug are the same bank."""
    return f"bank_{bank_slug(name)}"


def normalise_key(key: str) -> str | None:
    """A unit key as stored (``C464E3383D0E`` or ``C464E3383D0E_49``), or a MAC (the key of its
    module's only unit, as files before schema 2 used it), or a battery bank's key (the ledger
    keeps banks too); None if it is none of them."""
    if _NAMED_BANK_KEY.match(key.strip()):
        return key.strip()
    upper = key.strip().upper()
    if _LEDGER_KEY.match(upper):
        return key.strip() if upper.endswith("_BANK") else upper
    mac = normalise_mac(key)
    return mac_id(mac) if mac is not None else None


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass(frozen=True)
class DeviceRecord:
    """One configured device, as the registry keeps it.

    ``modbus_id``/``variant`` are what the user chose (None: the driver's
    default), so a later change of variant also moves the default id. ``bank``
    names the battery bank a ``renogy_battery`` belongs to across modules (banks.py).
    """

    mac_address: str
    type: str
    name: str
    modbus_id: int | None = None
    variant: str | None = None
    config: Mapping[str, Any] | None = field(default=None, compare=False)
    enabled: bool = True
    origin: str = ORIGIN_COMMAND
    added: str = field(default_factory=utc_now)
    # The unit's key (modules.Unit.key); None: the bare MAC id, as every record before units.
    unit_id: str | None = None
    bank: str | None = None

    @property
    def topic_id(self) -> str:
        return self.unit_id or mac_id(self.mac_address)

    def to_json(self) -> dict[str, Any]:
        data = {
            "mac_address": self.mac_address,
            "unit_id": self.topic_id,
            "type": self.type,
            "name": self.name,
            "modbus_id": self.modbus_id,
            "variant": self.variant,
            "config": copy.deepcopy(dict(self.config)) if self.config is not None else None,
            "enabled": self.enabled,
            "origin": self.origin,
            "added": self.added,
        }
        if self.bank is not None:  # only when set: the file of a gateway without banks stays as it was
            data["bank"] = self.bank
        return data

    def with_changes(self, **changes: Any) -> DeviceRecord:
        return replace(self, **changes)


class RecordError(ValueError):
    """A stored record is unusable; the message says why."""


def record_from_json(data: Any) -> DeviceRecord:
    """Check one stored record field by field (a hand-edited file must not crash the gateway)."""
    if not isinstance(data, Mapping):
        raise RecordError("not an object")
    mac = data.get("mac_address")
    normal = normalise_mac(mac) if isinstance(mac, str) else None
    if normal is None:
        raise RecordError(f"invalid mac_address {mac!r}")
    type_name = data.get("type")
    if not isinstance(type_name, str) or not type_name:
        raise RecordError(f"{normal}: invalid type {type_name!r}")
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        raise RecordError(f"{normal}: invalid name {name!r}")
    modbus_id = data.get("modbus_id")
    if modbus_id is not None and (
        not isinstance(modbus_id, int) or isinstance(modbus_id, bool) or not 0 <= modbus_id <= 255
    ):
        raise RecordError(f"{normal}: invalid modbus_id {modbus_id!r}")
    variant = data.get("variant")
    if variant is not None and not isinstance(variant, str):
        raise RecordError(f"{normal}: invalid variant {variant!r}")
    config = data.get("config")
    if config is not None and not isinstance(config, Mapping):
        raise RecordError(f"{normal}: invalid config")
    if config is not None and not is_finite(config):
        # json.loads reads NaN/Infinity; such a record could never be saved again
        raise RecordError(f"{normal}: config holds NaN or Infinity, which is not JSON")
    enabled = data.get("enabled", True)
    if not isinstance(enabled, bool):
        raise RecordError(f"{normal}: invalid enabled {enabled!r}")
    added = data.get("added")
    unit_id = data.get("unit_id")
    if unit_id is not None and (not isinstance(unit_id, str) or not _UNIT_ID.match(unit_id)):
        raise RecordError(f"{normal}: invalid unit_id {unit_id!r}")
    if unit_id is not None and not unit_id.startswith(mac_id(normal)):
        raise RecordError(f"{normal}: unit_id {unit_id!r} belongs to another MAC")
    bank = data.get("bank")
    if bank is not None:
        if not isinstance(bank, str):
            raise RecordError(f"{normal}: invalid bank {bank!r}")
        try:
            bank = clean_bank_name(bank)
        except ValueError as exc:
            raise RecordError(f"{normal}: invalid bank {bank!r} ({exc})") from None
    return DeviceRecord(
        unit_id=None if unit_id == mac_id(normal) else unit_id,
        mac_address=normal,
        type=type_name,
        name=name.strip(),
        modbus_id=modbus_id,
        variant=variant,
        config=copy.deepcopy(dict(config)) if config is not None else None,
        enabled=enabled,
        origin=ORIGIN_COMMAND,
        added=added if isinstance(added, str) else utc_now(),
        bank=bank,
    )


@dataclass
class StoredState:
    """What the file holds: command devices and command changes to options devices."""

    devices: list[DeviceRecord] = field(default_factory=list)
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)


class NotJSONError(OSError):
    """Data holding NaN or ±Infinity, refused before anything is written.

    An OSError on purpose: every writer already handles "could not write this
    file" (log it, keep the old file, refuse the change), which is the right
    outcome here too, and the gateway must not stop over it.
    """


def _to_json(path: Path, data: Any) -> str:
    try:
        # allow_nan=False: Python would write NaN/Infinity, which is not JSON
        # (strict readers such as jq or JavaScript's JSON.parse refuse the file)
        return json.dumps(data, indent=2, ensure_ascii=False, sort_keys=False, allow_nan=False) + "\n"
    except ValueError as exc:
        raise NotJSONError(errno.EINVAL, f"not writing {path.name}: {exc}") from None


def atomic_write_json(path: Path, data: Any) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old or the new file, whole.

    Raises :class:`NotJSONError` (an OSError) for a NaN or ±Infinity, leaving the old file.
    """
    text = _to_json(path, data)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    # The rename is only durable once the directory entry is on disk.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems cannot fsync a directory; the rename is still atomic
    finally:
        os.close(fd)


def _stamp() -> str:
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime())


class DeviceStore:
    """``devices.json`` in the data directory."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / FILE_NAME

    # --- reading ---

    def load(self) -> StoredState:
        """Read the file; a missing file is an empty registry, a broken one is moved aside."""
        self._remove_stray_temp_files()
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return StoredState()
        except OSError as exc:
            # Unreadable (permissions, I/O error): keep the file untouched for the user and
            # start empty; saving later would overwrite it, so move it aside first.
            _LOGGER.error("Cannot read the device registry %s (%s)", self.path, exc.strerror or exc)
            self._move_aside("unreadable")
            return StoredState()
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            aside = self._move_aside("corrupt")
            _LOGGER.error(
                "The device registry %s is damaged (%s); it was moved to %s and the gateway starts without "
                "the devices added by command (re-add them, or repair the file and restart)",
                self.path,
                _short(exc),
                aside,
            )
            return StoredState()
        return self._parse(data, raw)

    def _parse(self, data: Any, raw: bytes) -> StoredState:
        if isinstance(data, list):
            # Version 0: a bare list of records.
            version, devices_raw, overrides_raw = 0, data, {}
        elif isinstance(data, Mapping):
            version = data.get("schema_version", 0)
            devices_raw = data.get("devices", [])
            overrides_raw = data.get("options_overrides", {})
        else:
            aside = self._move_aside("corrupt")
            _LOGGER.error("The device registry %s holds no device list; it was moved to %s", self.path, aside)
            return StoredState()
        if not isinstance(version, int) or isinstance(version, bool) or not isinstance(devices_raw, list):
            aside = self._move_aside("corrupt")
            _LOGGER.error("The device registry %s has an unknown layout; it was moved to %s", self.path, aside)
            return StoredState()
        if version > SCHEMA_VERSION:
            # Written by a newer gateway: read what we understand, keep the original for a later upgrade.
            aside = self._copy_aside(raw, f"v{version}")
            _LOGGER.warning(
                "The device registry %s was written by a newer version (schema %s); a copy was kept as %s",
                self.path,
                version,
                aside,
            )
        state = StoredState()
        rejected: list[str] = []
        seen: set[str] = set()
        for item in devices_raw:
            try:
                record = record_from_json(item)
            except RecordError as exc:
                rejected.append(str(exc))
                continue
            except RecursionError:  # a hand-edited config nested hundreds deep: that record only
                mac = item.get("mac_address") if isinstance(item, Mapping) else None
                rejected.append(f"{mac if isinstance(mac, str) else 'a record'}: nested too deeply")
                continue
            if record.topic_id in seen:
                rejected.append(f"{record.topic_id}: listed twice")
                continue
            seen.add(record.topic_id)
            state.devices.append(record)
        if isinstance(overrides_raw, Mapping):
            for key, changes in overrides_raw.items():
                normal = normalise_key(key) if isinstance(key, str) else None
                clean = _clean_overrides(changes)
                if normal is None or clean is None:
                    rejected.append(f"override {key!r}: invalid")
                    continue
                if clean:
                    state.overrides[normal] = clean
        if rejected:
            aside = self._copy_aside(raw, "rejected")
            _LOGGER.error(
                "Ignored %d unusable entr%s in the device registry (%s); the original file was kept as %s",
                len(rejected),
                "y" if len(rejected) == 1 else "ies",
                "; ".join(rejected),
                aside,
            )
        return state

    # --- writing ---

    def save(self, records: Iterable[DeviceRecord], overrides: Mapping[str, Mapping[str, Any]]) -> None:
        """Write the command devices and the overrides of options devices, atomically."""
        data = {
            "schema_version": SCHEMA_VERSION,
            "saved": utc_now(),
            "devices": [r.to_json() for r in records if r.origin == ORIGIN_COMMAND],
            "options_overrides": {key: dict(changes) for key, changes in sorted(overrides.items()) if changes},
        }
        atomic_write_json(self.path, data)

    # --- helpers ---

    def _remove_stray_temp_files(self) -> None:
        with contextlib.suppress(OSError):
            for stray in self.data_dir.glob(f".{FILE_NAME}.*.tmp"):
                with contextlib.suppress(OSError):
                    stray.unlink()
                    _LOGGER.debug("Removed %s left by an interrupted write", stray)

    def _aside_path(self, tag: str) -> Path:
        candidate = self.path.with_name(f"{self.path.name}.{tag}-{_stamp()}")
        n = 1
        while candidate.exists():
            n += 1
            candidate = self.path.with_name(f"{self.path.name}.{tag}-{_stamp()}-{n}")
        return candidate

    def _move_aside(self, tag: str) -> Path | None:
        target = self._aside_path(tag)
        try:
            os.replace(self.path, target)
        except OSError as exc:
            _LOGGER.error("Could not move %s aside (%s)", self.path, exc.strerror or exc)
            return None
        _fsync_dir(self.data_dir)
        return target

    def _copy_aside(self, raw: bytes, tag: str) -> Path | None:
        target = self._aside_path(tag)
        try:
            target.write_bytes(raw)
        except OSError as exc:
            _LOGGER.error("Could not keep a copy of %s (%s)", self.path, exc.strerror or exc)
            return None
        return target


def _short(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__


def _clean_overrides(changes: Any) -> dict[str, Any] | None:
    if not isinstance(changes, Mapping):
        return None
    clean: dict[str, Any] = {}
    name = changes.get("name")
    if isinstance(name, str) and name.strip():
        clean["name"] = name.strip()
    enabled = changes.get("enabled")
    if isinstance(enabled, bool):
        clean["enabled"] = enabled
    bank = changes.get("bank")
    if bank is None and "bank" in changes:
        clean["bank"] = None  # a bank of the options left by command
    elif isinstance(bank, str):
        with contextlib.suppress(ValueError):
            clean["bank"] = clean_bank_name(bank)
    return clean


@dataclass
class Merged:
    """The registry after merging the options and the file."""

    records: list[DeviceRecord]
    overrides: dict[str, dict[str, Any]]
    changed: bool  # the file no longer matches (a command device moved to the options)


def default_name(model_hint: str, mac: str) -> str:
    """``Inverter 4F75``: the driver's hint and the last four MAC digits."""
    return f"{model_hint or 'Device'} {mac_id(mac)[-4:]}"


def merge(options: Sequence[Any], stored: StoredState, hint_for: Any) -> Merged:
    """Combine the options devices (``settings.DeviceOption``) with the stored state.

    ``hint_for(type_name)`` gives the model hint for default names. A device in
    both places is the options device: the command record is dropped (and the
    file rewritten), with a log line saying so.
    """
    records: list[DeviceRecord] = []
    overrides: dict[str, dict[str, Any]] = {}
    changed = False
    option_macs: set[str] = set()
    option_keys: set[str] = set()
    stored_overrides = {normalise_key(k) or k: v for k, v in stored.overrides.items()}
    for option in options:
        mac = normalise_mac(option.mac_address) or option.mac_address.upper()
        # The first entry of a MAC is its module's first unit (the bare MAC id, as before
        # units); further entries of the same MAC are units beside it, keyed by their ID.
        unit_id = unit_id_for(mac, option.modbus_id) if mac in option_macs else None
        option_macs.add(mac)
        record = DeviceRecord(
            mac_address=mac,
            type=option.type,
            name=option.name or default_name(hint_for(option.type), mac),
            modbus_id=option.modbus_id,
            variant=option.variant,
            config=copy.deepcopy(dict(option.config)) if option.config is not None else None,
            enabled=True,
            origin=ORIGIN_OPTIONS,
            unit_id=unit_id,
            bank=option.bank,
        )
        option_keys.add(record.topic_id)
        changes = stored_overrides.get(record.topic_id)
        if changes:
            record = record.with_changes(**changes)
            overrides[record.topic_id] = dict(changes)
            _LOGGER.info(
                "Device %s (options): keeping %s set by command",
                record.topic_id,
                ", ".join(f"{k}={v!r}" for k, v in changes.items()),
            )
        records.append(record)
    for record in stored.devices:
        if record.mac_address in option_macs:
            _LOGGER.warning(
                "Device %s was added by command and is now also listed in the add-on options: "
                "the options entry wins and replaces it",
                record.mac_address,
            )
            changed = True
            continue
        records.append(record)
    dropped = set(stored_overrides) - option_keys
    if dropped:
        changed = True
        _LOGGER.debug("Forgetting command changes to devices no longer in the options: %s", ", ".join(sorted(dropped)))
    return Merged(records=records, overrides=overrides, changed=changed)


LEDGER_NAME = "published.json"


class PublishedLedger:
    """What the gateway has published per device (``<data dir>/published.json``).

    It lets a restarted gateway clear the retained topics of devices that
    disappeared while it was down (an options device removed from the options),
    and keeps the few values discovery needs before the first poll (model,
    firmware, serial, list lengths) so Home Assistant does not see them change
    back and forth at every start. Losing this file costs nothing but that
    cleanup, so a broken one is just replaced.
    """

    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / LEDGER_NAME

    def load(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text("utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
            _LOGGER.warning("Ignoring %s (%s); it will be rewritten", self.path, _short(exc))
            return {}
        entries = data.get("devices") if isinstance(data, Mapping) else None
        if not isinstance(entries, Mapping):
            return {}
        ledger: dict[str, dict[str, Any]] = {}
        for key, entry in entries.items():
            # keys are unit keys; files before schema 2 used MACs (the key of the only unit)
            normal = normalise_key(key) if isinstance(key, str) else None
            if normal is None or not isinstance(entry, Mapping):
                continue
            topics = [t for t in entry.get("topics", []) if isinstance(t, str)]
            values = entry.get("values", {})
            # json.loads reads NaN/Infinity, which older versions could write here; keeping them
            # would make every later save fail (atomic_write_json refuses them)
            values = {k: v for k, v in values.items() if is_finite(v)} if isinstance(values, Mapping) else {}
            ledger[normal] = {"topics": topics, "values": values}
        return ledger

    def save(self, ledger: Mapping[str, Mapping[str, Any]]) -> None:
        data = {
            "schema_version": SCHEMA_VERSION,
            "devices": {
                key: {"topics": sorted(entry.get("topics", [])), "values": dict(entry.get("values", {}))}
                for key, entry in sorted(ledger.items())
            },
        }
        atomic_write_json(self.path, data)

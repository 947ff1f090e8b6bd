"""Command requests on ``<base>/<gw>/command`` and their responses (docs/mqtt-api.md, "Commands").

The protocol follows zigbee2mqtt's bridge requests: every request that parses
as JSON gets exactly one response ``{command, transaction, status, data,
error}``; on error ``data`` is ``{}`` and nothing has changed. Checks run in a
fixed order so the error names the first real problem: size, JSON, object,
command name, the command's schema (``schemas/command.schema.json``), then the
MAC, type, existence and the driver's own checks (variant, generic config).

This module validates and builds records; the gateway (``service.Gateway``)
applies them through the :class:`Registry` protocol and persists before it
answers. :class:`CommandLanes` decides what runs when: commands about one
device in arrival order, everything else side by side.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from . import banks
from . import devices as registry
from .devices import BaseDevice
from .modules import BROADCAST_ID
from .schema import ConfigError, InputError, clean, errors
from .store import ORIGIN_OPTIONS, DeviceRecord, clean_bank_name, default_name, normalise_mac, unit_id_for
from .tasks import stop_tasks

_LOGGER = logging.getLogger(__name__)

MAX_PAYLOAD = 64 * 1024
COMMANDS = (
    "add_device",
    "remove_device",
    "update_device",
    "list_devices",
    "scan",
    "probe_module",
    "poll_now",
    "health_check",
)
SCHEMA = "command"
# What a device of the add-on options may change by command: presentation only, nothing that
# decides how it is polled (that stays in the options).
OPTIONS_EDITABLE = ("name", "enabled", "bank")


class CommandError(Exception):
    """A request that cannot be carried out; the message is the response's ``error``."""


class Registry(Protocol):
    """What commands need from the gateway. Devices are *units* (a driver at a Modbus ID)
    behind *modules* (one MAC, one BLE link); a unit's ``topic_id`` is its key."""

    def units_of(self, mac: str) -> list[tuple[DeviceRecord, int | None]]: ...

    def profile_of(self, mac: str) -> BaseDevice | None: ...

    async def add_device(self, record: DeviceRecord, device: BaseDevice) -> dict[str, Any]: ...

    async def remove_device(self, key: str) -> None: ...

    async def update_device(self, record: DeviceRecord, device: BaseDevice | None) -> dict[str, Any]: ...

    def list_devices(self) -> list[dict[str, Any]]: ...

    def list_modules(self) -> list[dict[str, Any]]: ...

    async def scan(self, seconds: float) -> list[dict[str, Any]]: ...

    async def probe_module(self, mac: str) -> dict[str, Any]: ...

    def poll_now(self, key: str | None) -> list[str]: ...

    def health(self) -> dict[str, Any]: ...


@dataclass
class Response:
    command: str | None
    transaction: Any
    status: str
    data: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "command": self.command,
            "transaction": self.transaction,
            "status": self.status,
            "data": self.data if self.status == "ok" else {},
            "error": self.error,
        }

    @classmethod
    def failure(cls, command: str | None, transaction: Any, error: str) -> Response:
        return cls(command=command, transaction=transaction, status="error", data={}, error=error)


@dataclass
class Request:
    """A request that passed the envelope and schema checks."""

    command: str
    transaction: Any
    body: dict[str, Any]


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _usable(value: Any) -> Any:
    """``value`` if it can be echoed back (valid Unicode), else None; deep nesting is fine here."""
    try:
        json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (UnicodeEncodeError, RecursionError, ValueError):
        return None
    return value


def parse(payload: bytes) -> Request | Response:
    """The request, or the error response for a payload that is not a valid request."""
    if len(payload) > MAX_PAYLOAD:
        return Response.failure(None, None, f"payload too large ({len(payload)} bytes, max {MAX_PAYLOAD})")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        return Response.failure(None, None, "invalid JSON: payload is not UTF-8 text")
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        return Response.failure(None, None, f"invalid JSON: {exc}")
    except ValueError as exc:  # NaN / Infinity
        return Response.failure(None, None, f"invalid JSON: {exc}")
    except RecursionError:
        return Response.failure(None, None, "invalid JSON: nested too deeply")
    try:
        data = clean(data)
    except InputError as exc:
        # still answer with the request's own command and transaction when they are usable
        command, transaction = (
            (_usable(data.get(k)) for k in ("command", "transaction")) if isinstance(data, dict) else (None, None)
        )
        return Response.failure(command if isinstance(command, str) else None, transaction, f"invalid JSON: {exc}")
    if not isinstance(data, dict):
        return Response.failure(None, None, "payload must be a JSON object")
    transaction = data.get("transaction")
    command = data.get("command")
    if command is None:
        return Response.failure(None, transaction, 'missing "command"')
    if not isinstance(command, str):
        return Response.failure(None, transaction, "command must be a string")
    if command not in COMMANDS:
        return Response.failure(command, transaction, f"unknown command {command!r} (known: {', '.join(COMMANDS)})")
    problem = _schema_problem(command, data)
    if problem is not None:
        return Response.failure(command, transaction, problem)
    return Request(command=command, transaction=transaction, body=data)


def _schema_problem(command: str, data: dict[str, Any]) -> str | None:
    problems = errors(SCHEMA, data)
    if not problems:
        return None
    first = problems[0]
    if first.startswith("the configuration: unknown key"):
        allowed = _allowed_keys(command)
        return f"{first.removeprefix('the configuration: ')} ({command} takes: {', '.join(allowed)})"
    return first.replace("the configuration", "the request", 1)


def _allowed_keys(command: str) -> list[str]:
    from .schema import load_schema

    defs = load_schema(SCHEMA)["$defs"]
    name = command if command in defs else "no_arguments"
    return [k for k in defs[name]["properties"] if k not in ("command", "transaction")] or ["no arguments"]


def _mac(body: Mapping[str, Any]) -> str:
    raw = body["mac_address"]
    # Strict on the wire: whitespace around a MAC is a client's bug (a newline from a shell
    # pipe, a template's padding); refusing it says so instead of guessing. The integration
    # strips what a person types before it sends; the add-on options are checked by a pattern.
    if raw != raw.strip():
        raise CommandError(f"invalid MAC address {raw!r}: remove the spaces or line breaks around it")
    mac = normalise_mac(raw)
    if mac is None:
        raise CommandError(f"invalid MAC address {raw!r}")
    return mac


def _driver(type_name: str) -> type[BaseDevice]:
    try:
        return registry.driver(type_name)
    except KeyError:
        raise CommandError(f"unknown type {type_name!r} (known: {', '.join(registry.known_types())})") from None


# Modbus addresses a unit on a shared bus may use: 0 is broadcast without reply, 248-254 are
# reserved by Modbus, and 255 reaches every device (fine only for a device alone on its module).
UNIT_IDS = range(1, 248)
ID_RANGE_TEXT = "1-247 for a unit on a shared bus, or 255 for a device alone on its module"


def _check_id(modbus_id: int | None) -> None:
    if modbus_id is not None and modbus_id not in UNIT_IDS and modbus_id != BROADCAST_ID:
        raise CommandError(f"modbus_id {modbus_id} is out of range ({ID_RANGE_TEXT})")


def _ids(units: list[tuple[DeviceRecord, int | None]]) -> str:
    return ", ".join(str(i) for _r, i in units)


def check_sibling(
    mac: str, device: BaseDevice, siblings: list[tuple[DeviceRecord, int | None]], profile: BaseDevice | None
) -> None:
    """Refuse a unit that cannot share module ``mac`` with ``siblings``; the message names the fix."""
    new_id = device.modbus_id
    if any(i == new_id for _r, i in siblings):
        raise CommandError(f"device {mac} already has a unit at Modbus id {new_id} (units: {_ids(siblings)})")
    if new_id == BROADCAST_ID:
        raise CommandError(
            f"{mac} already carries {len(siblings)} unit(s) (Modbus ids {_ids(siblings)}): Modbus id 255 reaches "
            "every device on a shared bus and their replies collide; give this unit its own modbus_id "
            "(probe_module lists the IDs that answer)"
        )
    on_broadcast = [r for r, i in siblings if i == BROADCAST_ID]
    if on_broadcast:
        raise CommandError(
            f"{on_broadcast[0].name} on {mac} uses Modbus id 255, which every device on a shared bus answers: "
            f"give it its own modbus_id first (update_device with new_modbus_id), then add this unit"
        )
    if profile is not None and profile.gatt != device.gatt:
        raise CommandError(
            f"{device.type_name} cannot share {mac} with {profile.type_name}: they use different Bluetooth "
            "services (a device with built-in Bluetooth is alone on its module)"
        )


def _bank(value: str | None, type_name: str) -> str | None:
    """The ``bank`` of a request, stripped; None leaves (or keeps out of) a named bank."""
    if value is None:
        return None
    if not banks.is_member(type_name):
        raise CommandError(f"bank is only used by type {banks.MEMBER_TYPE}")
    try:
        return clean_bank_name(value)
    except ValueError as exc:
        raise CommandError(str(exc)) from None


def build_device(record: DeviceRecord) -> BaseDevice:
    """A driver instance for ``record``; raises :class:`CommandError` with the driver's message."""
    cls = _driver(record.type)
    if record.config is not None and not cls.requires_config:
        configurable = [name for name, c in registry.drivers().items() if c.requires_config]
        raise CommandError(f"config is only used by type {', '.join(configurable)}")
    if record.variant is not None and not cls.variants:
        raise CommandError(f"{record.type} has no variants")
    config = copy.deepcopy(dict(record.config)) if record.config is not None else None
    try:
        return cls(modbus_id=record.modbus_id, variant=record.variant, config=config)
    except ConfigError as exc:
        raise CommandError(str(exc)) from None
    except ValueError as exc:  # unknown variant
        raise CommandError(str(exc)) from None


class CommandProcessor:
    """Runs validated requests against the gateway."""

    def __init__(self, gateway: Registry) -> None:
        self.gateway = gateway

    async def handle(self, payload: bytes) -> Response:
        parsed = parse(payload)
        if isinstance(parsed, Response):
            return parsed
        return await self.execute(parsed)

    async def execute(self, request: Request) -> Response:
        handler = getattr(self, f"_cmd_{request.command}")
        try:
            data = await handler(request.body)
        except CommandError as exc:
            return Response.failure(request.command, request.transaction, str(exc))
        except Exception as exc:  # never leave a request unanswered
            _LOGGER.exception("Command %s failed unexpectedly", request.command)
            return Response.failure(request.command, request.transaction, f"internal error: {exc}")
        return Response(command=request.command, transaction=request.transaction, status="ok", data=data)

    # --- commands ---

    def _select(self, body: Mapping[str, Any], *, legacy_change: bool = False) -> tuple[DeviceRecord, bool]:
        """The unit a request names: ``mac_address``, plus ``modbus_id`` when the module carries several.

        Returns the record and whether ``modbus_id`` selected it. With
        ``legacy_change`` (update_device), a ``modbus_id`` that matches no unit of a
        single-unit module is the change it always was, not a selector.
        """
        mac = _mac(body)
        units = self.gateway.units_of(mac)
        if not units:
            raise CommandError(f"device {mac} not found")
        wanted = body.get("modbus_id")
        if wanted is not None:
            for record, modbus_id in units:
                if modbus_id == wanted:
                    return record, True
            if legacy_change and len(units) == 1:
                return units[0][0], False
            raise CommandError(f"device {mac} has no unit at Modbus id {wanted} (units: {_ids(units)})")
        if len(units) > 1:
            raise CommandError(f"{mac} carries {len(units)} units (Modbus ids {_ids(units)}): give modbus_id")
        return units[0][0], False

    async def _cmd_add_device(self, body: dict[str, Any]) -> dict[str, Any]:
        mac = _mac(body)
        cls = _driver(body["type"])
        siblings = self.gateway.units_of(mac)
        if siblings and "modbus_id" not in body:
            ids = _ids(siblings)
            raise CommandError(
                f"device {mac} already exists"
                + (f" (units at Modbus ids {ids}; give modbus_id to add one beside them)" if len(siblings) > 1 else "")
            )
        _check_id(body.get("modbus_id"))
        name = body.get("name")
        record = DeviceRecord(
            mac_address=mac,
            type=cls.type_name,
            name=name.strip() if name else default_name(cls.model_hint, mac),
            modbus_id=body.get("modbus_id"),
            variant=body.get("variant"),
            config=copy.deepcopy(body["config"]) if "config" in body else None,
            enabled=body.get("enabled", True),
            bank=_bank(body.get("bank"), cls.type_name),
        )
        device = build_device(record)
        if siblings:
            check_sibling(mac, device, siblings, self.gateway.profile_of(mac))
            # beside other units: its own key, fixed now, so it survives siblings coming and going
            record = record.with_changes(unit_id=unit_id_for(mac, device.modbus_id))
            if "name" not in body:
                record = record.with_changes(name=f"{record.name} #{device.modbus_id}")
        return await self.gateway.add_device(record, device)

    async def _cmd_remove_device(self, body: dict[str, Any]) -> dict[str, Any]:
        mac = _mac(body)
        record, _selected = self._select(body)
        if record.origin == ORIGIN_OPTIONS:
            raise CommandError(
                f"device {mac} is listed in the add-on options; remove it there (or disable it with update_device)"
            )
        modbus_id = next(i for r, i in self.gateway.units_of(mac) if r.topic_id == record.topic_id)
        await self.gateway.remove_device(record.topic_id)
        return {"mac_address": mac, "modbus_id": modbus_id, "unit_id": record.topic_id}

    async def _cmd_update_device(self, body: dict[str, Any]) -> dict[str, Any]:
        mac = _mac(body)
        record, selected = self._select(body, legacy_change=True)
        changes = {k: body[k] for k in ("name", "variant", "config", "enabled", "bank") if k in body}
        if "new_modbus_id" in body:
            changes["modbus_id"] = body["new_modbus_id"]
        elif "modbus_id" in body and not selected:
            changes["modbus_id"] = body["modbus_id"]  # a module's only unit: modbus_id is the change
        if "modbus_id" in changes:
            _check_id(changes["modbus_id"])
        if record.origin == ORIGIN_OPTIONS:
            locked = sorted(set(changes) - set(OPTIONS_EDITABLE))
            if locked:
                raise CommandError(
                    f"device {mac} is listed in the add-on options: only name, enabled and bank can be changed "
                    f"by command (change {', '.join(locked)} in the options)"
                )
        if "name" in changes:
            changes["name"] = changes["name"].strip()
        if "bank" in changes:
            changes["bank"] = _bank(changes["bank"], record.type)
        if "config" in changes:
            changes["config"] = copy.deepcopy(changes["config"])
        updated = record.with_changes(**changes)
        device = None
        if any(k in changes for k in ("modbus_id", "variant", "config")):
            device = build_device(updated)
            siblings = [(r, i) for r, i in self.gateway.units_of(mac) if r.topic_id != record.topic_id]
            if siblings:
                check_sibling(mac, device, siblings, None)
        return await self.gateway.update_device(updated, device)

    async def _cmd_list_devices(self, _body: dict[str, Any]) -> dict[str, Any]:
        return {"devices": self.gateway.list_devices(), "modules": self.gateway.list_modules()}

    async def _cmd_scan(self, body: dict[str, Any]) -> dict[str, Any]:
        seconds = float(body.get("seconds", 5))
        return {"devices": await self.gateway.scan(seconds)}

    async def _cmd_probe_module(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self.gateway.probe_module(_mac(body))

    async def _cmd_poll_now(self, body: dict[str, Any]) -> dict[str, Any]:
        key = None
        if "mac_address" in body and "modbus_id" in body:
            key = self._select(body)[0].topic_id
        elif "mac_address" in body:  # the module: one session reads all its units anyway
            mac = _mac(body)
            units = self.gateway.units_of(mac)
            if not units:
                raise CommandError(f"device {mac} not found")
            key = units[0][0].topic_id
        return {"queued": self.gateway.poll_now(key)}

    async def _cmd_health_check(self, _body: dict[str, Any]) -> dict[str, Any]:
        return self.gateway.health()


class CommandLanes:
    """Runs requests: those about one device in arrival order, all others side by side.

    Each device (MAC) has a lane: a request waits only behind earlier requests about
    the same device, whose order matters (add, then remove). It never waits behind a
    slow request about another device, nor behind a scan. Requests about no device
    (list_devices, health_check, poll_now of all, scan) start at once and see the
    state at that moment. ``run`` answers the request and must not raise.
    """

    def __init__(self, run: Callable[[Request], Awaitable[None]]) -> None:
        self._run = run
        self._lanes: dict[str, deque[Request]] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    @staticmethod
    def lane_of(request: Request) -> str | None:
        raw = request.body.get("mac_address")
        if raw is None:
            return None
        return normalise_mac(raw) or str(raw)  # an invalid MAC is refused at once in its own lane

    def submit(self, request: Request) -> None:
        lane = self.lane_of(request)
        if lane is None:
            self._spawn(self._run_one(request), f"command-{request.command}")
        elif lane in self._lanes:
            self._lanes[lane].append(request)
        else:
            self._lanes[lane] = deque([request])
            self._spawn(self._drain(lane), f"commands-{lane}")

    async def stop(self, within: float = 2.0) -> None:
        await stop_tasks(self.tasks, within)
        self._lanes.clear()

    async def _drain(self, lane: str) -> None:
        queue = self._lanes[lane]
        try:
            while queue:
                await self._run_one(queue[0])
                queue.popleft()
        finally:
            if self._lanes.get(lane) is queue:
                del self._lanes[lane]

    async def _run_one(self, request: Request) -> None:
        try:
            await self._run(request)
        except Exception:  # one bad command must never stop the ones after it
            _LOGGER.exception("Unexpected error while handling command %s", request.command)

    def _spawn(self, coro: Awaitable[None], name: str) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)  # type: ignore[assignment]
        task.set_name(name)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

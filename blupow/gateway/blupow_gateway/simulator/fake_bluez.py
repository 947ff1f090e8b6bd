"""A fake ``org.bluez`` on a (private) D-Bus, so real bleak talks to simulated devices.

bleak's BlueZ backend only uses ``GetManagedObjects``, three signals and a handful
of methods (see ``docs`` reference *fake-bluez.md*), so this module exports
exactly those objects with dbus-fast ``ServiceInterface`` s:

* ``/org/bluez/hci0`` ``Adapter1`` (discovery sessions per D-Bus sender, filters,
  ``RemoveDevice``; ``Roles`` contains ``central`` because bleak requires it),
* one ``Device1`` per attached :class:`~.base.SimulatedDevice` or
  :class:`~.module.SimulatedModule` (one BLE module carrying several Modbus
  units), exported on its first advertisement like BlueZ does,
* after ``Connect``: the module's GATT tree with BlueZ-exact paths
  (``…/dev_AA_BB_…/serviceXXXX/charXXXX/descXXXX``; bleak parses handles from the
  last four hex digits and routes notifications by slicing the path).

A Modbus request written to ``ffd1`` (in service ``ffd0``) goes to
``respond`` of the device or module (a module routes it to the unit at the
addressed ID); after the delay that gives (the answering unit's
``behaviour.latency``) the reply is notified on ``fff1`` in
``behaviour.chunk_size`` pieces as ``PropertiesChanged(Value)``.

Failures are injected per device through :class:`Failures` (settable at run time
and from YAML/JSON) and every call is counted in :class:`PeripheralStats` /
:class:`FakeStats` so gateway tests can assert retries and the connection limit.
"""

import asyncio
import contextlib
import dataclasses
import logging
import socket
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any

from dbus_fast import BusType, Message, MessageFlag, MessageType, NameFlag, RequestNameReply, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import DBusBool, DBusBytes, DBusDict, DBusObjectPath, DBusSignature, DBusStr, DBusUInt16
from dbus_fast.constants import PropertyAccess
from dbus_fast.errors import DBusError
from dbus_fast.service import ServiceInterface, dbus_method, dbus_property

from .base import BEHAVIOUR_KEYS, Responder, SimulatedDevice, apply_behaviour
from .module import SimulatedModule, create_module, is_module_spec, topology_of

_LOGGER = logging.getLogger(__name__)

BLUEZ = "org.bluez"
ADAPTER_IFACE = "org.bluez.Adapter1"
DEVICE_IFACE = "org.bluez.Device1"
SERVICE_IFACE = "org.bluez.GattService1"
CHAR_IFACE = "org.bluez.GattCharacteristic1"
DESC_IFACE = "org.bluez.GattDescriptor1"

ERR_FAILED = "org.bluez.Error.Failed"
ERR_IN_PROGRESS = "org.bluez.Error.InProgress"
ERR_NOT_SUPPORTED = "org.bluez.Error.NotSupported"
ERR_NOT_PERMITTED = "org.bluez.Error.NotPermitted"
ERR_NOT_READY = "org.bluez.Error.NotReady"
ERR_NOT_CONNECTED = "org.bluez.Error.NotConnected"
ERR_DOES_NOT_EXIST = "org.bluez.Error.DoesNotExist"

# bleak retries "le-connection-abort-by-local" itself (after Connected went True->False).
ABORT_BY_LOCAL = "le-connection-abort-by-local"
# What a central gets while another central (phone app, hub) holds the module: an
# immediate failure, not the retried abort above, so a gateway can report it.
HELD_MESSAGE = "Software caused connection abort"
ABSENT_MESSAGE = "Host is down"

GARBAGE_TAIL = b"\xde\xad"


def garbage_for(request: bytes) -> bytes:
    """Junk notified before a reply when ``garbage_notifications`` is set.

    It starts exactly like the expected reply (id, function and, for reads, the
    byte count) but is short and has no valid CRC, so an assembler that trusts the
    first header it sees must resynchronise on the real frame.
    """
    head = request[:2]
    if len(request) >= 6 and request[1] == 0x03:
        head += bytes([2 * int.from_bytes(request[4:6], "big") & 0xFF])
    return head + GARBAGE_TAIL


DBusStrList = Annotated[list[str], DBusSignature("as")]
DBusInt16 = Annotated[int, DBusSignature("n")]
DBusUInt32 = Annotated[int, DBusSignature("u")]
DBusManufacturerData = Annotated[dict[int, Variant], DBusSignature("a{qv}")]
DBusPathList = Annotated[list[str], DBusSignature("ao")]
DBusFdMtu = Annotated[tuple[int, int], DBusSignature("hq")]


def uuid16(short: int) -> str:
    return f"0000{short:04x}-0000-1000-8000-00805f9b34fb"


SERVICE_FFD0 = uuid16(0xFFD0)
CHAR_FFD1 = uuid16(0xFFD1)
CHAR_FFD4 = uuid16(0xFFD4)
SERVICE_FFF0 = uuid16(0xFFF0)
CHAR_FFF1 = uuid16(0xFFF1)
CCCD = uuid16(0x2902)
VENDOR_SERVICE = "f000ffd0-0451-4000-b000-000000000000"
VENDOR_CHAR = "f000ffd1-0451-4000-b000-000000000000"
PRO_EXTRA_SERVICE = uuid16(0xFFE0)

WRITE_FLAGS = ("write-without-response", "write")


# --- GATT layouts -------------------------------------------------------------


@dataclass(frozen=True)
class CharSpec:
    handle: int
    uuid: str
    flags: tuple[str, ...]
    role: str = ""  # "request" (Modbus in), "reply" (Modbus out), "" (other)
    descriptors: tuple[tuple[int, str], ...] = ()
    value: bytes = b""
    notify_error: str | None = None  # StartNotify fails with this Failed message


@dataclass(frozen=True)
class ServiceSpec:
    handle: int
    uuid: str
    chars: tuple[CharSpec, ...]


# BT-1 / BT-2 module (controllers, DCC, BT-2 batteries and inverters).
BT_MODULE_LAYOUT: tuple[ServiceSpec, ...] = (
    ServiceSpec(
        0x000C,
        SERVICE_FFD0,
        (
            CharSpec(0x000D, CHAR_FFD1, WRITE_FLAGS, role="request"),
            CharSpec(0x000F, uuid16(0xFFD2), ("read",), value=b"\x00"),
            CharSpec(0x0011, uuid16(0xFFD3), ("read",), value=b"\x00"),
            CharSpec(0x0013, CHAR_FFD4, ("read",), value=b"\x01\x00"),  # the inverter init read
            CharSpec(0x0015, uuid16(0xFFD5), ("read", "write"), value=b"\x00"),
        ),
    ),
    ServiceSpec(
        0x0017,
        SERVICE_FFF0,
        (CharSpec(0x0018, CHAR_FFF1, ("read", "notify"), role="reply", descriptors=((0x001A, CCCD),)),),
    ),
    # Vendor/OTA service present on BT-1/BT-2: "ffd0"/"ffd1" appear inside its UUIDs.
    ServiceSpec(0x001B, VENDOR_SERVICE, (CharSpec(0x001C, VENDOR_CHAR, WRITE_FLAGS),)),
)

# Built-in BLE (Pro/RNGC batteries): a second fff1 and ffd1 outside fff0/ffd0, so
# UUID-only lookups are ambiguous and subscribing to the wrong fff1 fails (renogy-bt#104/#108).
BUILTIN_DUPLICATES_LAYOUT: tuple[ServiceSpec, ...] = (
    ServiceSpec(
        0x0010,
        SERVICE_FFD0,
        (
            CharSpec(0x0011, CHAR_FFD1, WRITE_FLAGS, role="request"),
            CharSpec(0x0013, CHAR_FFD4, ("read",), value=b"\x01\x00"),
        ),
    ),
    ServiceSpec(
        0x0015,
        SERVICE_FFF0,
        (CharSpec(0x0016, CHAR_FFF1, ("read", "notify"), role="reply", descriptors=((0x0018, CCCD),)),),
    ),
    ServiceSpec(0x0019, VENDOR_SERVICE, (CharSpec(0x001A, VENDOR_CHAR, WRITE_FLAGS),)),
    ServiceSpec(
        0x0038,
        PRO_EXTRA_SERVICE,
        (
            CharSpec(0x0039, CHAR_FFD1, WRITE_FLAGS),
            CharSpec(
                0x003B,
                CHAR_FFF1,
                ("read", "notify"),
                descriptors=((0x003D, CCCD),),
                notify_error="Operation failed with ATT error: 0x06",
            ),
        ),
    ),
)

# Smart Shunt 300 (built-in BLE): notifications on c411, a c111 "write commands" nobody uses (§2.1).
SHUNT_LAYOUT: tuple[ServiceSpec, ...] = (
    ServiceSpec(
        0x0010,
        uuid16(0xC011),
        (
            CharSpec(0x0011, uuid16(0xC111), WRITE_FLAGS),
            CharSpec(0x0013, uuid16(0xC411), ("notify",), role="reply", descriptors=((0x0015, CCCD),)),
        ),
    ),
)

LAYOUTS: dict[str, tuple[ServiceSpec, ...]] = {
    "bt_module": BT_MODULE_LAYOUT,
    "builtin_duplicates": BUILTIN_DUPLICATES_LAYOUT,
    "shunt": SHUNT_LAYOUT,
}
BUILTIN_NAME_PREFIXES = ("RNGRBP", "RNGC", "RNGPRO")
PRO_MANUFACTURER_ID = 0xE14C


def layout_for(sim: Responder) -> str:
    """Which GATT tree a simulated device exposes (explicit ``gatt_layout`` wins)."""
    explicit = getattr(sim, "gatt_layout", None)
    if isinstance(explicit, str) and explicit in LAYOUTS:
        return explicit
    if sim.manufacturer_id == PRO_MANUFACTURER_ID or sim.name.strip().upper().startswith(BUILTIN_NAME_PREFIXES):
        return "builtin_duplicates"
    return "bt_module"


# --- failure injection and statistics ---------------------------------------------


@dataclass
class Failures:
    """What goes wrong on this device; every field can change while a test runs."""

    fail_next_connects: int = 0  # Connect -> Connected True->False + "le-connection-abort-by-local"
    never_resolve_services: bool = False  # Connect succeeds, ServicesResolved never comes
    drop_link_after_writes: int = 0  # the Nth request write from now drops the link, unanswered
    in_progress_writes: int = 0  # the next N WriteValue calls fail with org.bluez.Error.InProgress
    advertising: bool = True  # False: out of range, not found by scans, Connect fails slowly
    held_by_other_central: bool = False  # connected to another central: silent, Connect refused
    garbage_notifications: bool = False  # notify junk that looks like a reply header before each reply
    connect_delay: float = 0.0  # seconds before Connect completes
    absent_connect_delay: float = 0.5  # how long Connect to an absent device takes to fail

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Failures":
        failures = cls()
        failures.update(data)
        return failures

    def update(self, data: Mapping[str, Any]) -> None:
        """Set fields from a mapping (YAML/JSON); unknown names and wrong types are errors."""
        known = {f.name: f for f in dataclasses.fields(self)}
        for key, value in data.items():
            if key not in known:
                raise ValueError(f"unknown failure {key!r} (known: {', '.join(known)})")
            default = getattr(type(self)(), key)
            setattr(self, key, _coerce(key, value, default))

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _coerce(key: str, value: Any, default: Any) -> Any:
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ValueError(f"failure {key} must be true or false, not {value!r}")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"failure {key} must be a whole number >= 0, not {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError(f"failure {key} must be a number of seconds >= 0, not {value!r}")
    return float(value)


@dataclass
class PeripheralStats:
    connect_calls: int = 0  # Connect/Pair method calls received
    connects: int = 0  # successful connections
    failed_connects: int = 0
    refused_connects: int = 0  # held by another central / second sender
    disconnects: int = 0  # central-initiated
    drops: int = 0  # peripheral-side link losses
    writes: list[bytes] = field(default_factory=list)  # request characteristic writes (Modbus frames)
    other_writes: list[tuple[str, bytes]] = field(default_factory=list)  # (char uuid, value)
    reads: list[str] = field(default_factory=list)  # char uuids read
    replies: int = 0  # Modbus replies delivered as notifications
    notifications: int = 0  # notification PDUs sent
    in_progress_errors: int = 0
    start_notify: int = 0
    connected_at: list[float] = field(default_factory=list)  # time.monotonic() of each connection

    def as_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["writes"] = [w.hex() for w in self.writes]
        data["other_writes"] = [[u, v.hex()] for u, v in self.other_writes]
        return data


@dataclass
class FakeStats:
    connections: int = 0  # devices connected right now
    max_simultaneous_connections: int = 0
    discovery_starts: int = 0
    discovery_refusals: int = 0  # StartDiscovery answered InProgress (that sender was already discovering)
    calls: deque[tuple[float, str, str]] = field(default_factory=lambda: deque(maxlen=2000))

    def as_dict(self) -> dict[str, Any]:
        return {
            "connections": self.connections,
            "max_simultaneous_connections": self.max_simultaneous_connections,
            "discovery_starts": self.discovery_starts,
            "discovery_refusals": self.discovery_refusals,
        }


def _mac_path(adapter_path: str, mac: str) -> str:
    return f"{adapter_path}/dev_{mac.upper().replace(':', '_')}"


# --- D-Bus interfaces ---------------------------------------------------------------


class _Adapter(ServiceInterface):
    def __init__(self, fake: "FakeBlueZ") -> None:
        super().__init__(ADAPTER_IFACE)
        self._fake = fake

    @dbus_property(access=PropertyAccess.READ)
    def Address(self) -> DBusStr:  # D-Bus member names
        return self._fake.adapter_address

    @dbus_property(access=PropertyAccess.READ)
    def AddressType(self) -> DBusStr:
        return "public"

    @dbus_property(access=PropertyAccess.READ)
    def Name(self) -> DBusStr:
        return "blupow-fake"

    @dbus_property(access=PropertyAccess.READ)
    def Alias(self) -> DBusStr:
        return "blupow-fake"

    @dbus_property(access=PropertyAccess.READ)
    def Class(self) -> DBusUInt32:
        return 0

    @dbus_property()
    def Powered(self) -> DBusBool:
        return self._fake.powered

    @Powered.setter
    def Powered(self, value: DBusBool) -> None:
        self._fake.set_powered(value)

    @dbus_property(access=PropertyAccess.READ)
    def Discoverable(self) -> DBusBool:
        return False

    @dbus_property(access=PropertyAccess.READ)
    def Pairable(self) -> DBusBool:
        return True

    @dbus_property(access=PropertyAccess.READ)
    def Discovering(self) -> DBusBool:
        return bool(self._fake.discovery_sessions)

    @dbus_property(access=PropertyAccess.READ)
    def UUIDs(self) -> DBusStrList:
        return []

    @dbus_property(access=PropertyAccess.READ)
    def Modalias(self) -> DBusStr:
        return "usb:v1D6Bp0246d0542"

    @dbus_property(access=PropertyAccess.READ)
    def Roles(self) -> DBusStrList:
        return ["central", "peripheral"]

    @dbus_method()
    def SetDiscoveryFilter(self, properties: DBusDict) -> None:
        self._fake.set_discovery_filter(self._fake.caller, properties)

    @dbus_method()
    def StartDiscovery(self) -> None:
        self._fake.start_discovery(self._fake.caller)

    @dbus_method()
    def StopDiscovery(self) -> None:
        self._fake.stop_discovery(self._fake.caller)

    @dbus_method()
    def RemoveDevice(self, device: DBusObjectPath) -> None:
        self._fake.remove_device_path(device)

    @dbus_method()
    def GetDiscoveryFilters(self) -> DBusStrList:
        return ["UUIDs", "RSSI", "Pathloss", "Transport", "DuplicateData", "Discoverable", "Pattern"]


class _Device(ServiceInterface):
    def __init__(self, peripheral: "FakePeripheral") -> None:
        super().__init__(DEVICE_IFACE)
        self._p = peripheral

    @dbus_property(access=PropertyAccess.READ)
    def Address(self) -> DBusStr:
        return self._p.mac

    @dbus_property(access=PropertyAccess.READ)
    def AddressType(self) -> DBusStr:
        return "public"

    @dbus_property(access=PropertyAccess.READ)
    def Name(self) -> DBusStr:
        return self._p.sim.name

    @dbus_property(access=PropertyAccess.READ)
    def Alias(self) -> DBusStr:
        return self._p.sim.name or self._p.mac.replace(":", "-")

    @dbus_property(access=PropertyAccess.READ)
    def Adapter(self) -> DBusObjectPath:
        return self._p.fake.adapter_path

    @dbus_property(access=PropertyAccess.READ)
    def Connected(self) -> DBusBool:
        return self._p.connected

    @dbus_property(access=PropertyAccess.READ)
    def ServicesResolved(self) -> DBusBool:
        return self._p.services_resolved

    @dbus_property(access=PropertyAccess.READ)
    def Paired(self) -> DBusBool:
        return self._p.paired

    @dbus_property(access=PropertyAccess.READ)
    def Bonded(self) -> DBusBool:
        return self._p.paired

    @dbus_property()
    def Trusted(self) -> DBusBool:
        return self._p.trusted

    @Trusted.setter
    def Trusted(self, value: DBusBool) -> None:
        self._p.trusted = value
        self.emit_properties_changed({"Trusted": value})

    @dbus_property(access=PropertyAccess.READ)
    def Blocked(self) -> DBusBool:
        return False

    @dbus_property(access=PropertyAccess.READ)
    def LegacyPairing(self) -> DBusBool:
        return False

    @dbus_property(access=PropertyAccess.READ)
    def UUIDs(self) -> DBusStrList:
        return self._p.uuids()

    @dbus_property(access=PropertyAccess.READ)
    def RSSI(self) -> DBusInt16:
        return self._p.rssi

    @dbus_property(access=PropertyAccess.READ)
    def ManufacturerData(self) -> DBusManufacturerData:
        return self._p.manufacturer_data()

    # Connect and Pair are answered by FakeBlueZ._on_message (they need the sender
    # and a delayed reply); these only make them visible in introspection.
    @dbus_method()
    def Connect(self) -> None:
        raise DBusError(ERR_FAILED, "internal: Connect not intercepted")

    @dbus_method()
    def Pair(self) -> None:
        raise DBusError(ERR_FAILED, "internal: Pair not intercepted")

    @dbus_method()
    def Disconnect(self) -> None:
        self._p.disconnect()

    @dbus_method()
    def CancelPairing(self) -> None:
        return None


class _GattService(ServiceInterface):
    def __init__(self, spec: ServiceSpec, device_path: str) -> None:
        super().__init__(SERVICE_IFACE)
        self.spec = spec
        self._device_path = device_path

    @dbus_property(access=PropertyAccess.READ)
    def UUID(self) -> DBusStr:
        return self.spec.uuid

    @dbus_property(access=PropertyAccess.READ)
    def Device(self) -> DBusObjectPath:
        return self._device_path

    @dbus_property(access=PropertyAccess.READ)
    def Primary(self) -> DBusBool:
        return True

    @dbus_property(access=PropertyAccess.READ)
    def Includes(self) -> DBusPathList:
        return []


class _GattCharacteristic(ServiceInterface):
    def __init__(self, peripheral: "FakePeripheral", spec: CharSpec, service: ServiceSpec, path: str) -> None:
        super().__init__(CHAR_IFACE)
        self._p = peripheral
        self.spec = spec
        self.service = service
        self.path = path
        self.service_path = path.rsplit("/", 1)[0]
        self.value = spec.value
        self.notify_senders: set[str] = set()

    @property
    def notifying(self) -> bool:
        return bool(self.notify_senders)

    def release(self) -> None:
        """Forget every subscription (link gone)."""
        self.notify_senders.clear()

    @dbus_property(access=PropertyAccess.READ)
    def UUID(self) -> DBusStr:
        return self.spec.uuid

    @dbus_property(access=PropertyAccess.READ)
    def Service(self) -> DBusObjectPath:
        return self.service_path

    @dbus_property(access=PropertyAccess.READ)
    def Value(self) -> DBusBytes:
        return self.value

    @dbus_property(access=PropertyAccess.READ)
    def Notifying(self) -> DBusBool:
        return self.notifying

    @dbus_property(access=PropertyAccess.READ)
    def Flags(self) -> DBusStrList:
        return list(self.spec.flags)

    @dbus_property(access=PropertyAccess.READ)
    def MTU(self) -> DBusUInt16:
        return self._p.mtu

    @dbus_method()
    def ReadValue(self, options: DBusDict) -> DBusBytes:
        self._p.require_connected()
        if "read" not in self.spec.flags:
            raise DBusError(ERR_NOT_PERMITTED, "Read not permitted")
        self._p.stats.reads.append(self.spec.uuid)
        return self.value

    @dbus_method()
    def WriteValue(self, value: DBusBytes, options: DBusDict) -> None:
        self._p.write(self, bytes(value), options)

    @dbus_method()
    def StartNotify(self) -> None:
        self._p.require_connected()
        if "notify" not in self.spec.flags and "indicate" not in self.spec.flags:
            raise DBusError(ERR_NOT_SUPPORTED, "Operation is not supported")
        if self.spec.notify_error:
            raise DBusError(ERR_FAILED, self.spec.notify_error)
        sender = self._p.fake.caller
        if sender in self.notify_senders:
            return  # BlueZ: a second StartNotify from the same client succeeds
        was = self.notifying
        self.notify_senders.add(sender)
        self._p.stats.start_notify += 1
        if not was:
            self.emit_properties_changed({"Notifying": True})

    @dbus_method()
    def StopNotify(self) -> None:
        sender = self._p.fake.caller
        if sender not in self.notify_senders:
            raise DBusError(ERR_FAILED, "No notify session started")
        self.forget_sender(sender)

    def forget_sender(self, sender: str) -> None:
        if sender in self.notify_senders:
            self.notify_senders.discard(sender)
            if not self.notify_senders:
                self.emit_properties_changed({"Notifying": False})

    def set_value(self, value: bytes) -> None:
        self.value = value
        self.emit_properties_changed({"Value": value})


class _NotifyCharacteristic(_GattCharacteristic):
    """A notifying characteristic that also offers ``AcquireNotify`` (a socket, one PDU per send).

    bleak 3 uses it only with ``bluez={"use_start_notify": False}``; bleak 2 uses it
    whenever ``NotifyAcquired`` exists.
    """

    def __init__(self, peripheral: "FakePeripheral", spec: CharSpec, service: ServiceSpec, path: str) -> None:
        super().__init__(peripheral, spec, service, path)
        self._acquired: socket.socket | None = None

    @property
    def notifying(self) -> bool:
        return bool(self.notify_senders) or self._acquired is not None

    @dbus_property(access=PropertyAccess.READ)
    def NotifyAcquired(self) -> DBusBool:
        return self._acquired is not None

    @dbus_method()
    def AcquireNotify(self, options: DBusDict) -> DBusFdMtu:
        self._p.require_connected()
        if self.spec.notify_error:
            raise DBusError(ERR_FAILED, self.spec.notify_error)
        if self._acquired is not None or self.notify_senders:
            raise DBusError(ERR_NOT_PERMITTED, "Notify acquired")
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.setblocking(False)
        self._acquired = ours
        loop = self._p.fake.loop
        loop.add_reader(ours.fileno(), self._on_peer_readable)
        # The reply carries a duplicate; our copy of the client end goes once it is sent.
        self._p.fake.close_later(theirs)
        self._p.stats.start_notify += 1
        self.emit_properties_changed({"NotifyAcquired": True})
        return (theirs.fileno(), self._p.mtu)

    def _on_peer_readable(self) -> None:
        sock = self._acquired
        if sock is None:
            return
        try:
            data = sock.recv(1)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # the client closed its end: notifications stopped
            self.release()

    def release(self) -> None:
        super().release()
        sock, self._acquired = self._acquired, None
        if sock is not None:
            with contextlib.suppress(ValueError, RuntimeError):
                self._p.fake.loop.remove_reader(sock.fileno())
            sock.close()
            self.emit_properties_changed({"NotifyAcquired": False})

    def set_value(self, value: bytes) -> None:
        self.value = value
        if self._acquired is not None:
            try:
                self._acquired.send(value)
            except OSError:
                self.release()
        if self.notify_senders:
            self.emit_properties_changed({"Value": value})


class _GattDescriptor(ServiceInterface):
    def __init__(self, uuid: str, char_path: str) -> None:
        super().__init__(DESC_IFACE)
        self._uuid = uuid
        self._char_path = char_path
        self.value = b"\x00\x00"

    @dbus_property(access=PropertyAccess.READ)
    def UUID(self) -> DBusStr:
        return self._uuid

    @dbus_property(access=PropertyAccess.READ)
    def Characteristic(self) -> DBusObjectPath:
        return self._char_path

    @dbus_property(access=PropertyAccess.READ)
    def Value(self) -> DBusBytes:
        return self.value

    @dbus_method()
    def ReadValue(self, options: DBusDict) -> DBusBytes:
        return self.value

    @dbus_method()
    def WriteValue(self, value: DBusBytes, options: DBusDict) -> None:
        self.value = bytes(value)


# --- peripheral -----------------------------------------------------------------------


class FakePeripheral:
    """One simulated device as BlueZ sees it: advertising, connection, GATT tree."""

    def __init__(
        self,
        fake: "FakeBlueZ",
        sim: Responder,
        *,
        failures: Failures | None = None,
        rssi: int = -60,
        layout: str | None = None,
    ) -> None:
        self.fake = fake
        self.sim = sim
        self.mac = sim.mac.upper()
        self.failures = failures or Failures()
        self.stats = PeripheralStats()
        self.base_rssi = rssi
        self.rssi = rssi
        self.layout = layout or layout_for(sim)
        if self.layout not in LAYOUTS:
            raise ValueError(f"unknown GATT layout {self.layout!r} (known: {', '.join(LAYOUTS)})")
        self.path = _mac_path(fake.adapter_path, self.mac)
        self.connected = False
        self.services_resolved = False
        self.paired = False
        self.trusted = False
        self.owner: str | None = None  # D-Bus sender that connected the device
        self.exported = False  # Device1 on the bus (BlueZ's device cache)
        self.gatt_exported = False
        self._generation = 0  # bumps on every link state change; stale timers check it
        self._adv_count = 0
        self._pending: tuple[Message, asyncio.TimerHandle] | None = None
        self._device_iface = _Device(self)
        self._gatt: list[tuple[str, ServiceInterface]] = []
        self._chars: dict[int, _GattCharacteristic] = {}
        self._build_gatt()

    # --- identity ---

    @property
    def mtu(self) -> int:
        size = self.sim.behaviour.chunk_size
        return size + 3 if size > 0 else 517

    def manufacturer_data(self) -> dict[int, Variant]:
        return {cid: Variant("ay", bytes(data)) for cid, data in self.sim.manufacturer_data().items()}

    def uuids(self) -> list[str]:
        if self.services_resolved:
            return sorted({s.uuid for s in LAYOUTS[self.layout]})
        return [u.lower() for u in self.sim.service_uuids]

    def _build_gatt(self) -> None:
        for service in LAYOUTS[self.layout]:
            service_path = f"{self.path}/service{service.handle:04x}"
            self._gatt.append((service_path, _GattService(service, self.path)))
            for spec in service.chars:
                char_path = f"{service_path}/char{spec.handle:04x}"
                cls = _NotifyCharacteristic if "notify" in spec.flags else _GattCharacteristic
                char = cls(self, spec, service, char_path)
                self._chars[spec.handle] = char
                self._gatt.append((char_path, char))
                for desc_handle, desc_uuid in spec.descriptors:
                    self._gatt.append((f"{char_path}/desc{desc_handle:04x}", _GattDescriptor(desc_uuid, char_path)))

    def characteristic(self, role: str) -> _GattCharacteristic:
        return next(c for c in self._chars.values() if c.spec.role == role)

    @property
    def advertising(self) -> bool:
        return self.failures.advertising and not self.failures.held_by_other_central and not self.connected

    # --- bus objects ---

    def export_device(self) -> None:
        if not self.exported:
            self.fake.bus.export(self.path, self._device_iface)
            self.exported = True

    def unexport_device(self) -> None:
        if self.exported:
            self.fake.bus.unexport(self.path, self._device_iface)
            self.exported = False

    def advertise(self) -> None:
        """One advertisement as BlueZ reports it: InterfacesAdded first, then RSSI churn."""
        self._adv_count += 1
        self.rssi = self.base_rssi + (0, -2, 1, -1, 2)[self._adv_count % 5]
        if not self.exported:
            self.export_device()
            return
        self._device_iface.emit_properties_changed({"RSSI": self.rssi, "ManufacturerData": self.manufacturer_data()})

    def _emit(self, **changed: Any) -> None:
        if self.exported:
            self._device_iface.emit_properties_changed(changed)

    # --- connection ---

    def begin_connect(self, msg: Message, *, pair: bool = False) -> None:
        """Answer Device1.Connect/Pair (the reply is sent here, maybe later)."""
        self.stats.connect_calls += 1
        sender = msg.sender or ""
        f = self.failures
        if self.connected:
            if self.owner not in (None, sender):
                self.stats.refused_connects += 1
                self.fake.reply_error(msg, ERR_FAILED, HELD_MESSAGE)
                return
            self.owner = sender
            if pair and not self.paired:
                self.paired = True
                self._emit(Paired=True)
            self.fake.reply(msg)
            return
        if self._pending is not None:
            self.fake.reply_error(msg, ERR_IN_PROGRESS, "In Progress")
            return
        if not self.fake.powered:
            self.fake.reply_error(msg, ERR_NOT_READY, "Resource Not Ready")
            return
        if f.held_by_other_central:
            self.stats.refused_connects += 1
            self.fake.reply_error(msg, ERR_FAILED, HELD_MESSAGE)
            return
        if not f.advertising:
            self.stats.failed_connects += 1
            self._pending = (msg, self.fake.loop.call_later(f.absent_connect_delay, self._fail_absent, msg))
            return
        if f.fail_next_connects > 0:
            f.fail_next_connects -= 1
            self.stats.failed_connects += 1
            self._abort_by_local(msg)
            return
        handle = self.fake.loop.call_later(f.connect_delay, self._finish_connect, msg, sender, pair)
        self._pending = (msg, handle)

    def _fail_absent(self, msg: Message) -> None:
        self._pending = None
        self.fake.reply_error(msg, ERR_FAILED, ABSENT_MESSAGE)

    def _abort_by_local(self, msg: Message) -> None:
        # Real BlueZ was briefly connected: bleak waits for Connected True->False
        # before it retries, so both transitions must be seen.
        self._set_connected(True)
        self.fake.reply_error(msg, ERR_FAILED, ABORT_BY_LOCAL)
        gen = self._generation
        self.fake.loop.call_soon(self._abort_settle, gen)

    def _abort_settle(self, gen: int) -> None:
        if gen == self._generation and self.connected:
            self._set_connected(False)

    def _finish_connect(self, msg: Message, sender: str, pair: bool) -> None:
        self._pending = None
        self.owner = sender
        self._set_connected(True)
        self.stats.connects += 1
        self.stats.connected_at.append(time.monotonic())
        if pair:
            self.paired = True
            self._emit(Paired=True)
        self.fake.reply(msg)
        if not self.failures.never_resolve_services:
            self.fake.loop.call_soon(self._resolve, self._generation)

    def _resolve(self, gen: int) -> None:
        if gen != self._generation or not self.connected:
            return
        self._export_gatt()
        # InterfacesAdded for the GATT objects is already queued: bleak builds its
        # service collection the moment it sees ServicesResolved.
        self.services_resolved = True
        self._emit(ServicesResolved=True, UUIDs=self.uuids())
        if hasattr(self.sim, "stream_tick"):
            self._stream(gen)

    def _stream(self, gen: int) -> None:
        """A streaming device (the shunt) notifies its frames on its own while connected.

        Frames go out whether or not anyone subscribed (the real device streams; an
        unsubscribed central just does not hear them), one tick per ``frame_interval``.
        What the device holds for a new connection (``stream_start``: the tail of a
        frame cut by a dropped link) is the first thing a subscriber hears.
        """
        if gen != self._generation or not self.connected:
            return
        sim: Any = self.sim
        chunks: list[bytes] = []
        if self.characteristic("reply").notifying:
            chunks += sim.stream_start()
        more, drop = sim.stream_tick()
        for chunk in chunks + more:
            self.notify(chunk)
        if drop:
            self.drop()
            return
        self.fake.loop.call_later(sim.frame_interval, self._stream, gen)

    def _export_gatt(self) -> None:
        if self.gatt_exported:
            return
        for path, iface in self._gatt:
            self.fake.bus.export(path, iface)
        self.gatt_exported = True

    def _unexport_gatt(self) -> None:
        if not self.gatt_exported:
            return
        for path, iface in reversed(self._gatt):
            self.fake.bus.unexport(path, iface)
        self.gatt_exported = False

    def _set_connected(self, value: bool) -> None:
        if self.connected == value:
            return
        self.connected = value
        self._generation += 1
        self.fake.count_connection(+1 if value else -1)
        self._emit(Connected=value)

    def _cancel_pending(self, error: str) -> None:
        if self._pending is not None:
            msg, handle = self._pending
            self._pending = None
            handle.cancel()
            self.fake.reply_error(msg, ERR_FAILED, error)

    def _teardown(self) -> None:
        """Link gone: the order BlueZ uses, which bleak's watchers rely on."""
        self._cancel_pending("Operation canceled")
        if not self.connected:
            return
        if self.services_resolved:
            self.services_resolved = False
            self._emit(ServicesResolved=False)
        for char in self._chars.values():
            char.release()
        self._unexport_gatt()
        self.owner = None
        self._set_connected(False)

    def disconnect(self) -> None:
        """Device1.Disconnect from a central."""
        if self.connected:
            self.stats.disconnects += 1
        self._teardown()

    def drop(self) -> bool:
        """The peripheral goes away (link loss, power off). True if it was connected."""
        was = self.connected
        if was:
            self.stats.drops += 1
        self._teardown()
        return was

    def forget_sender(self, sender: str) -> None:
        for char in self._chars.values():
            char.forget_sender(sender)
        if self.owner == sender:
            self.owner = None  # like BlueZ, the link itself survives the client

    def require_connected(self) -> None:
        if not self.connected:
            raise DBusError(ERR_FAILED, "Not connected")

    # --- data path ---

    def write(self, char: _GattCharacteristic, value: bytes, options: Mapping[str, Variant]) -> None:
        self.require_connected()
        kind_variant = options.get("type")
        kind = kind_variant.value if isinstance(kind_variant, Variant) else None
        if kind is None:
            kind = "request" if "write" in char.spec.flags else "command"
        needed = "write-without-response" if kind == "command" else "write"
        if needed not in char.spec.flags:
            raise DBusError(ERR_NOT_SUPPORTED, "Operation is not supported")
        if self.failures.in_progress_writes > 0:
            self.failures.in_progress_writes -= 1
            self.stats.in_progress_errors += 1
            raise DBusError(ERR_IN_PROGRESS, "In Progress")
        if char.spec.role != "request":
            self.stats.other_writes.append((char.spec.uuid, value))
            return
        self.stats.writes.append(value)
        if self.failures.drop_link_after_writes > 0:
            self.failures.drop_link_after_writes -= 1
            if self.failures.drop_link_after_writes == 0:
                # The write reply goes out first, then the link dies mid-request.
                self.fake.loop.call_soon(self.drop)
                return
        try:
            answer = self.sim.respond(value)
        except Exception:
            _LOGGER.exception("simulated %s failed on request %s", self.sim.type_name, value.hex())
            return
        if answer is not None:
            reply, delay = answer
            self.fake.loop.call_later(delay, self._deliver, value, reply, self._generation)

    def _deliver(self, request: bytes, reply: bytes, gen: int) -> None:
        if gen != self._generation or not self.connected:
            return  # the link went down while the module was "thinking"
        if self.failures.garbage_notifications:
            self.notify(garbage_for(request))
        sent = False
        for chunk in self.sim.chunks(reply):
            sent = self.notify(chunk) or sent
        if sent:
            self.stats.replies += 1

    def notify(self, data: bytes) -> bool:
        """Notify ``data`` on the reply characteristic if a client subscribed."""
        char = self.characteristic("reply")
        if not self.connected or not char.notifying:
            return False
        char.set_value(bytes(data))
        self.stats.notifications += 1
        return True

    def summary(self) -> dict[str, Any]:
        return {
            "mac": self.mac,
            "name": self.sim.name,
            "type": self.sim.type_name,
            "layout": self.layout,
            "connected": self.connected,
            "services_resolved": self.services_resolved,
            "advertising": self.advertising,
            "failures": self.failures.as_dict(),
            "stats": self.stats.as_dict(),
        }


# --- the fake daemon ---------------------------------------------------------------------


@dataclass
class _DiscoverySession:
    uuids: frozenset[str] = frozenset()


class FakeBlueZ:
    """``org.bluez`` with one adapter, on the bus at ``bus_address`` (default: the system bus).

    Use as ``async with FakeBlueZ(address) as fake:``; :meth:`stop` removes every
    object and flushes the signals before it leaves the bus, so connected bleak
    clients see their devices disconnect instead of going stale.
    """

    def __init__(
        self,
        bus_address: str | None = None,
        *,
        adapter: str = "hci0",
        adapter_address: str = "00:1A:7D:DA:71:13",
        adv_interval: float = 0.02,
    ) -> None:
        self.bus_address = bus_address
        self.adapter_path = f"/org/bluez/{adapter}"
        self.adapter_address = adapter_address
        self.adv_interval = adv_interval
        # Real BlueZ answers StartDiscovery only once the controller is scanning
        # (a round trip to the kernel); a delay here lets tests cancel a caller
        # while its StartDiscovery is pending. The session exists from the call on.
        self.discovery_start_delay = 0.0
        self.powered = True
        self.stats = FakeStats()
        self.peripherals: dict[str, FakePeripheral] = {}
        self.discovery_sessions: dict[str, _DiscoverySession] = {}
        self._filters: dict[str, frozenset[str]] = {}
        self.caller = ""  # sender of the method call being dispatched
        self._bus: MessageBus | None = None
        self._adapter = _Adapter(self)
        self._advertiser: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._to_close: set[socket.socket] = set()

    # --- lifecycle ---

    @property
    def bus(self) -> MessageBus:
        if self._bus is None:
            raise RuntimeError("FakeBlueZ is not started")
        return self._bus

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError("FakeBlueZ is not started")
        return self._loop

    @property
    def running(self) -> bool:
        return self._bus is not None and self._bus.connected

    async def start(self) -> "FakeBlueZ":
        self._loop = asyncio.get_running_loop()
        if self.bus_address:
            bus = MessageBus(bus_address=self.bus_address, negotiate_unix_fd=True)
        else:
            bus = MessageBus(bus_type=BusType.SYSTEM, negotiate_unix_fd=True)
        await bus.connect()
        self._bus = bus
        try:
            bus.add_message_handler(self._on_message)
            await self._call_bus(
                "AddMatch",
                "s",
                [
                    "type='signal',sender='org.freedesktop.DBus',interface='org.freedesktop.DBus',"
                    "member='NameOwnerChanged',arg2=''"
                ],
            )
            bus.export(self.adapter_path, self._adapter)
            owned = await bus.request_name(BLUEZ, NameFlag.DO_NOT_QUEUE)
            if owned is not RequestNameReply.PRIMARY_OWNER:
                raise RuntimeError(f"{BLUEZ} is already owned on this bus (bluetoothd or another fake BlueZ)")
        except BaseException:
            bus.disconnect()
            self._bus = None
            raise
        for peripheral in self.peripherals.values():
            if peripheral.exported:  # added with cached=True before start
                peripheral.exported = False
                peripheral.export_device()
        return self

    async def stop(self) -> None:
        bus = self._bus
        if bus is None:
            return
        self._stop_advertiser()
        if bus.connected:
            for peripheral in self.peripherals.values():
                peripheral.drop()
                peripheral.unexport_device()
            with contextlib.suppress(KeyError, ValueError):
                bus.unexport(self.adapter_path, self._adapter)
            # A round trip after the last signal: the daemon has them all before we hang up.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._call_bus("GetId", "", []), 2)
            bus.disconnect()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(bus.wait_for_disconnect(), 2)
        self._bus = None
        self.discovery_sessions.clear()
        for sock in list(self._to_close):
            self._close_now(sock)

    def close_later(self, sock: socket.socket, delay: float = 1.0) -> None:
        """Close our copy of a file descriptor handed out in a reply, after it was sent."""
        self._to_close.add(sock)
        self.loop.call_later(delay, self._close_now, sock)

    def _close_now(self, sock: socket.socket) -> None:
        self._to_close.discard(sock)
        sock.close()

    async def __aenter__(self) -> "FakeBlueZ":
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _call_bus(self, member: str, signature: str, body: list[Any]) -> Message:
        reply = await self.bus.call(
            Message(
                destination="org.freedesktop.DBus",
                path="/org/freedesktop/DBus",
                interface="org.freedesktop.DBus",
                member=member,
                signature=signature,
                body=body,
            )
        )
        assert reply is not None
        if reply.message_type is MessageType.ERROR:
            raise RuntimeError(f"{member} failed: {reply.error_name} {reply.body}")
        return reply

    # --- devices ---

    def free_mac(self, kind: str) -> str:
        """The first of the kind's (or module spec's topology's) deterministic MACs not attached yet."""
        from . import default_mac

        label = topology_of(kind) if is_module_spec(kind) else kind
        index = 0
        while (mac := default_mac(label, index).upper()) in self.peripherals:
            index += 1
        return mac

    def attach(
        self,
        sim: Responder,
        *,
        failures: Failures | Mapping[str, Any] | None = None,
        rssi: int = -60,
        layout: str | None = None,
        cached: bool = False,
    ) -> FakePeripheral:
        """Put ``sim`` on the air. ``cached=True`` exports it at once (known to BlueZ already)."""
        mac = sim.mac.upper()
        if mac in self.peripherals:
            raise ValueError(f"a device with address {mac} is already attached")
        if isinstance(failures, Mapping):
            failures = Failures.from_dict(failures)
        peripheral = FakePeripheral(self, sim, failures=failures, rssi=rssi, layout=layout)
        self.peripherals[mac] = peripheral
        if cached:
            if self.running:
                peripheral.export_device()
            else:
                peripheral.exported = True  # exported on start()
        return peripheral

    def add(
        self,
        device: SimulatedDevice | SimulatedModule | str,
        *,
        failures: Failures | Mapping[str, Any] | None = None,
        rssi: int = -60,
        layout: str | None = None,
        cached: bool = False,
        **sim_kwargs: Any,
    ) -> SimulatedDevice | SimulatedModule:
        """Attach a simulated device or module (or create one from a kind or ``hub:``/``chain:`` spec); return it.

        ``add("hub:battery*4,controller@97", latency=0.01)`` gives a
        :class:`~.module.SimulatedModule` (``.mac``, ``.units`` by Modbus ID); unit
        behaviour keys such as ``latency`` go to every unit, ``chunk_size`` to the module.
        """
        if isinstance(device, str):
            if sim_kwargs.get("mac") is None:
                sim_kwargs["mac"] = self.free_mac(device)
            device = create_responder(device, **sim_kwargs)
        elif sim_kwargs:
            raise TypeError(f"unexpected arguments for an existing device: {', '.join(sim_kwargs)}")
        self.attach(device, failures=failures, rssi=rssi, layout=layout, cached=cached)
        return device

    def peripheral(self, mac: str) -> FakePeripheral:
        try:
            return self.peripherals[mac.upper()]
        except KeyError:
            raise KeyError(f"no simulated device with address {mac}") from None

    def failures(self, mac: str) -> Failures:
        return self.peripheral(mac).failures

    def drop(self, mac: str) -> bool:
        return self.peripheral(mac).drop()

    def remove(self, mac: str) -> None:
        """Take the device off the air and out of BlueZ's cache."""
        peripheral = self.peripherals.pop(mac.upper())
        if self._bus is not None:
            peripheral.drop()
            peripheral.unexport_device()

    def count_connection(self, delta: int) -> None:
        self.stats.connections += delta
        self.stats.max_simultaneous_connections = max(self.stats.max_simultaneous_connections, self.stats.connections)

    def set_powered(self, value: bool) -> None:
        if value == self.powered:
            return
        self.powered = value
        if not value:
            for session_owner in list(self.discovery_sessions):
                self.stop_discovery(session_owner)
            for peripheral in self.peripherals.values():
                peripheral.drop()
        self._adapter.emit_properties_changed({"Powered": value})

    # --- D-Bus plumbing ---

    def reply(self, msg: Message) -> None:
        if not msg.flags & MessageFlag.NO_REPLY_EXPECTED and self.running:
            self.bus.send(Message.new_method_return(msg))

    def reply_error(self, msg: Message, name: str, text: str) -> None:
        if not msg.flags & MessageFlag.NO_REPLY_EXPECTED and self.running:
            self.bus.send(Message.new_error(msg, name, text))

    def _on_message(self, msg: Message) -> bool:
        """Runs before dbus-fast dispatches: remember the caller, answer Connect/Pair."""
        if msg.message_type is MessageType.SIGNAL:
            if msg.member == "NameOwnerChanged" and msg.sender == "org.freedesktop.DBus" and len(msg.body) == 3:
                name, _old, new = msg.body
                if not new and name.startswith(":"):
                    self._sender_gone(name)
            return False
        if msg.message_type is not MessageType.METHOD_CALL:
            return False
        self.caller = msg.sender or ""
        self.stats.calls.append((time.monotonic(), msg.path or "", f"{msg.interface}.{msg.member}"))
        if (
            msg.interface == ADAPTER_IFACE
            and msg.member == "StartDiscovery"
            and msg.path == self.adapter_path
            and self.discovery_start_delay > 0
        ):
            try:
                self.start_discovery(self.caller)
            except DBusError as exc:
                self.reply_error(msg, exc.type, exc.text)
            else:
                self.loop.call_later(self.discovery_start_delay, self.reply, msg)
            return True
        if msg.interface == DEVICE_IFACE and msg.member in ("Connect", "Pair"):
            peripheral = self._by_path(msg.path or "")
            if peripheral is None or not peripheral.exported:
                return False  # dbus-fast answers UnknownObject
            peripheral.begin_connect(msg, pair=msg.member == "Pair")
            return True
        return False

    def _by_path(self, path: str) -> FakePeripheral | None:
        return next((p for p in self.peripherals.values() if p.path == path), None)

    def _sender_gone(self, sender: str) -> None:
        if sender in self.discovery_sessions:
            self.stop_discovery(sender)
        self._filters.pop(sender, None)
        for peripheral in self.peripherals.values():
            peripheral.forget_sender(sender)

    # --- discovery ---

    def set_discovery_filter(self, sender: str, properties: Mapping[str, Variant]) -> None:
        uuids = properties.get("UUIDs")
        self._filters[sender] = frozenset(u.lower() for u in uuids.value) if isinstance(uuids, Variant) else frozenset()
        if sender in self.discovery_sessions:
            self.discovery_sessions[sender] = _DiscoverySession(self._filters[sender])

    def start_discovery(self, sender: str) -> None:
        if not self.powered:
            raise DBusError(ERR_NOT_READY, "Resource Not Ready")
        if sender in self.discovery_sessions:
            # BlueZ (adapter.c start_discovery) keeps one session per D-Bus client
            # and answers btd_error_busy to a second one; other clients just join.
            self.stats.discovery_refusals += 1
            raise DBusError(ERR_IN_PROGRESS, "Operation already in progress")
        was = bool(self.discovery_sessions)
        self.discovery_sessions[sender] = _DiscoverySession(self._filters.get(sender, frozenset()))
        self.stats.discovery_starts += 1
        if not was:
            self._adapter.emit_properties_changed({"Discovering": True})
            self._advertiser = self.loop.create_task(self._advertise())

    def stop_discovery(self, sender: str) -> None:
        if sender not in self.discovery_sessions:
            raise DBusError(ERR_FAILED, "No discovery started")
        del self.discovery_sessions[sender]
        if not self.discovery_sessions:
            self._stop_advertiser()
            if self.running:
                self._adapter.emit_properties_changed({"Discovering": False})

    def _stop_advertiser(self) -> None:
        task, self._advertiser = self._advertiser, None
        if task is not None:
            task.cancel()

    def _wanted(self, peripheral: "FakePeripheral") -> bool:
        filters = [s.uuids for s in self.discovery_sessions.values()]
        if any(not f for f in filters):
            return True
        advertised = {u.lower() for u in peripheral.sim.service_uuids}
        return any(advertised & f for f in filters)

    async def _advertise(self) -> None:
        # Sleep first: bleak's find_device_by_address registers its callback only
        # after StartDiscovery returned, so an immediate advertisement is lost.
        while self.discovery_sessions and self.running:
            await asyncio.sleep(self.adv_interval)
            for peripheral in list(self.peripherals.values()):
                if peripheral.advertising and self._wanted(peripheral):
                    peripheral.advertise()

    def remove_device_path(self, path: str) -> None:
        peripheral = self._by_path(path)
        if peripheral is None or not peripheral.exported:
            raise DBusError(ERR_DOES_NOT_EXIST, "Does Not Exist")
        peripheral.disconnect()
        peripheral.unexport_device()

    # --- reporting ---

    def snapshot(self) -> dict[str, Any]:
        return {**self.stats.as_dict(), "devices": {mac: p.summary() for mac, p in self.peripherals.items()}}


# --- simulated devices by kind ------------------------------------------------------------


def create_device(kind: str, **kwargs: Any) -> SimulatedDevice:
    """Build a simulated device of ``kind`` (see ``simulator.KINDS``) with optional behaviour overrides.

    ``BEHAVIOUR_KEYS`` (``latency``, ``chunk_size``, ``drop_replies``, …; bytes or
    hex for ``garbage_before_reply``) go to ``device.behaviour``; the rest
    (``mac``, ``name``, ``modbus_id``, family options) to ``simulator.create_simulated``.
    """
    from . import create_simulated  # the per-family simulators live in the package

    behaviour = {k: kwargs.pop(k) for k in BEHAVIOUR_KEYS if k in kwargs}
    device = create_simulated(kind, **kwargs)
    apply_behaviour(device, behaviour)
    return device


def create_responder(kind: str, **kwargs: Any) -> SimulatedDevice | SimulatedModule:
    """A module for a ``hub:…``/``chain:…`` spec (see :func:`.module.create_module`), else a device."""
    if is_module_spec(kind):
        return create_module(kind, **kwargs)
    return create_device(kind, **kwargs)


def kinds() -> Iterable[str]:
    from . import KINDS

    return KINDS.keys()

"""BLE transport: Modbus RTU requests over GATT with bleak (BlueZ over D-Bus).

One :class:`BleLink` talks to one BLE module (which may front several Modbus
slaves on an RS-485 bus). It

* finds the module by address and connects through ``bleak-retry-connector``;
  finding takes turns with :func:`scan` (:func:`discovery_lock`),
* resolves the request characteristic (``ffd1`` inside service ``ffd0``) and
  the reply characteristic (``fff1`` inside ``fff0``) by service, UUID *and*
  property, and then uses those characteristic objects (i.e. their handles):
  built-in BLE batteries expose duplicate UUIDs and every module has the
  ``f000ffd1…`` vendor decoy,
* sends one request at a time, reassembles the reply from notifications with
  :class:`~blupow_gateway.modbus.ResponseAssembler` and enforces a per-request
  timeout and pacing between requests,
* takes a reply only from the slave it asked (first byte = its ID); after a
  timeout it keeps the link for the module's other units, and asks the silent
  slave again on a fresh connection unless a late reply can no longer come
  (:meth:`BleLink.fresh_needed`): a Modbus reply names no register, so a late
  one could be taken for the next answer to the same slave,
* does the inverter's one-off ``ffd4`` read after connecting,
* either stays connected between polls or is disconnected by the caller,
* for stream devices (``DeviceProtocol.NOTIFY_STREAM``, the Smart Shunt) writes
  nothing: :meth:`BleLink.start_notify` subscribes the driver to its notifying
  characteristic once per connection and resets it at every connection boundary.

All failures are raised as :class:`TransportError` subclasses whose message is
fit for a user (it ends up in ``last_error`` and the logs).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import AsyncIterator, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any

from bleak import BleakClient, BleakScanner
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from bleak.exc import BleakError
from bleak_retry_connector import BleakNotFoundError, establish_connection, get_connected_devices, get_device

from . import modbus
from .devices import BaseDevice, recognise
from .devices.base import DeviceProtocol, StreamSink
from .store import normalise_mac

_LOGGER = logging.getLogger(__name__)

ONE_CENTRAL_HINT = (
    "the module accepts only one central: close the Renogy app and disconnect any hub "
    "(Renogy ONE, another gateway) using it"
)
WRITE_RETRIES = 3  # org.bluez.Error.InProgress is transient
# A reply later than this many request timeouts after its request is taken as never coming
# (real modules answer in 70-350 ms; the default timeout is 3 s).
LATE_REPLY_FACTOR = 3
DISCOVERY_GRACE = 5.0  # seconds a cancelled scan still gets to start/stop cleanly (see _discovering)


class TransportError(Exception):
    """A BLE or Modbus-over-BLE failure, with a message meant for users."""


class DeviceNotFound(TransportError):
    pass


class ConnectFailed(TransportError):
    pass


class ReplyTimeout(TransportError, TimeoutError):
    pass


class LinkLost(TransportError):
    pass


class BadReply(TransportError):
    pass


@dataclass(frozen=True)
class LinkOptions:
    adapter: str | None = "hci0"
    connect_timeout: float = 20.0
    request_timeout: float = 3.0
    keep_connected: bool = True
    find_timeout: float | None = None  # default: connect_timeout


@dataclass
class LinkStats:
    connects: int = 0
    connect_seconds: float = 0.0
    requests: int = 0
    timeouts: int = 0
    bad_frames: int = 0
    drains: int = 0  # connections closed while a late reply could still come


@dataclass(frozen=True)
class ScanResult:
    address: str
    name: str | None
    rssi: int | None
    manufacturer_ids: tuple[int, ...] = ()
    types: tuple[str, ...] = field(default_factory=tuple)


def _bluez_args(adapter: str | None) -> dict[str, str]:
    return {"adapter": adapter} if adapter else {}


_DISCOVERY_LOCKS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = weakref.WeakKeyDictionary()


def discovery_lock() -> asyncio.Lock:
    """One discovery session at a time per event loop.

    bleak shares one D-Bus connection per event loop and BlueZ allows one
    discovery per connection: a second concurrent scan fails with
    ``org.bluez.Error.InProgress``. Finding a device before connecting and the
    ``scan`` command therefore take turns.
    """
    loop = asyncio.get_running_loop()
    lock = _DISCOVERY_LOCKS.get(loop)
    if lock is None:
        lock = _DISCOVERY_LOCKS[loop] = asyncio.Lock()
    return lock


async def _complete(coro: Coroutine[Any, Any, None]) -> None:
    """Await ``coro`` to its end even if we are cancelled meanwhile, then re-raise the cancellation.

    For the D-Bus calls that start and stop discovery: one abandoned half way
    leaves BlueZ in a state bleak does not know about (see :func:`_discovering`).
    After a cancellation it gets ``DISCOVERY_GRACE`` seconds; a second
    cancellation gives up at once. Either way the cancellation is re-raised.
    """
    task = asyncio.ensure_future(coro)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        try:
            await asyncio.wait({task}, timeout=DISCOVERY_GRACE)
        finally:
            if not task.done():
                task.cancel()
            elif not task.cancelled():
                task.exception()  # mark it retrieved: the cancellation is what the caller gets
        raise


async def _stop_quietly(scanner: BleakScanner) -> None:
    try:
        await scanner.stop()  # a no-op if it never started
    except (BleakError, EOFError, OSError) as exc:
        # What was found stands. If BlueZ kept the session, the next scan or
        # find reports InProgress with describe_error's explanation.
        _LOGGER.warning("could not stop scanning: %s", describe_error(exc))


@contextlib.asynccontextmanager
async def _discovering(scanner: BleakScanner) -> AsyncIterator[None]:
    """Hold the discovery lock and run ``scanner`` for the body of the ``async with``.

    The lock is taken before the scanner starts and released only after it
    stopped, on every path (errors in start or body, cancellation). Start and
    stop are completed even when the caller is cancelled meanwhile
    (:func:`_complete`): bleak shares one D-Bus connection per event loop, so a
    StartDiscovery whose reply nobody waited for would leave a discovery session
    that nothing ever stops, and every later scan or find in this process would
    fail with ``org.bluez.Error.InProgress``. Errors from starting (``BleakError``)
    propagate; errors from stopping are logged.
    """
    async with discovery_lock():
        try:
            await _complete(scanner.start())
            yield
        finally:
            # Also after a failed or cancelled start: if BlueZ accepted the
            # StartDiscovery after all, it must be matched by a stop.
            await _complete(_stop_quietly(scanner))


def describe_error(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    lowered = text.lower()
    if "in progress" in lowered or "inprogress" in lowered:
        return f"{text} (BlueZ is busy: another scan or connection on this adapter)"
    if "abort" in lowered or "le-connection" in lowered or "not connected" in lowered:
        return f"{text} ({ONE_CENTRAL_HINT}, or move the adapter closer)"
    return text


def find_characteristic(
    services: Iterable[object], service_uuid: str, char_uuid: str, properties: Iterable[str]
) -> BleakGATTCharacteristic | None:
    """The characteristic ``char_uuid`` inside ``service_uuid`` with one of ``properties``.

    Matching on the full UUID of both the service and the characteristic keeps
    the ``f000ffd1-0451-…`` decoy and duplicate ``fff1`` characteristics of
    built-in BLE batteries out.
    """
    wanted = set(properties)
    for service in services:
        if str(getattr(service, "uuid", "")).lower() != service_uuid:
            continue
        for char in getattr(service, "characteristics", []):
            if char.uuid.lower() == char_uuid and wanted & set(char.properties):
                return char
    return None


class BleLink:
    """A Modbus link to one BLE module. Implements ``devices.base.ModbusLink``."""

    def __init__(self, address: str, device: BaseDevice, options: LinkOptions | None = None) -> None:
        mac = normalise_mac(address)
        if mac is None:
            raise ValueError(f"invalid MAC address {address!r}")
        self.address = mac
        self.device = device
        self.options = options or LinkOptions()
        self.stats = LinkStats()
        self.rssi: int | None = None
        self.name: str | None = None
        self._client: BleakClient | None = None
        self._write_char: BleakGATTCharacteristic | None = None
        self._notify_char: BleakGATTCharacteristic | None = None
        self._assembler: modbus.ResponseAssembler | None = None
        self._reply: asyncio.Future[bytes] | None = None
        self._lock = asyncio.Lock()
        self._last_request = 0.0
        self._late_until: dict[int, float] = {}  # slave -> when a late reply can no longer come
        self._lost = False
        self._settled = False  # notifications on (and the init read done): requests may go
        self._sink: StreamSink | None = None  # a stream driver subscribed on this connection
        self._generation = 0  # bumps per connection: a notification of an old one is dropped

    # --- connection ---

    @property
    def connected(self) -> bool:
        """Up and ready for requests."""
        return self._link_up and self._settled

    @property
    def _link_up(self) -> bool:
        return self._client is not None and self._client.is_connected and not self._lost

    async def _find(self) -> BLEDevice:
        """Scan until the module advertises; raises DeviceNotFound after the find timeout.

        The scan takes its turn on :func:`discovery_lock` (a concurrent ``scan``
        command would otherwise collide with it in BlueZ). The find timeout starts
        once the lock is ours: waiting behind a scan, which is bounded by its own
        length, must not turn into "not found". The wait itself is not bounded
        here; callers bound the whole connect (the scheduler's connect guard).
        """
        timeout = self.options.find_timeout or self.options.connect_timeout
        found: dict[str, tuple[BLEDevice, AdvertisementData]] = {}
        event = asyncio.Event()

        def on_advert(device: BLEDevice, adv: AdvertisementData) -> None:
            if device.address.upper() == self.address:
                found["hit"] = (device, adv)
                event.set()

        scanner = BleakScanner(on_advert, bluez=_bluez_args(self.options.adapter))  # type: ignore[arg-type]
        if discovery_lock().locked():
            _LOGGER.debug("%s: waiting for another scan on the adapter to finish", self.address)
        try:
            async with _discovering(scanner):
                try:
                    async with asyncio.timeout(timeout):
                        await event.wait()
                except TimeoutError:
                    if "hit" not in found:  # an advertisement may land just as the time runs out
                        raise DeviceNotFound(
                            f"{self.address} not found within {timeout:g} s: it is out of range, powered off, "
                            f"or connected to another central ({ONE_CENTRAL_HINT})"
                        ) from None
        except BleakError as exc:  # only starting the scanner raises it (stop errors are logged)
            raise ConnectFailed(
                f"could not scan on {self.options.adapter or 'the default adapter'}: {describe_error(exc)}"
            ) from exc
        ble_device, adv = found["hit"]
        self.rssi = adv.rssi
        self.name = adv.local_name or ble_device.name
        return ble_device

    async def _still_connected(self) -> BLEDevice | None:
        """A link BlueZ kept open for us, e.g. after the previous gateway process was killed.

        A connected module does not advertise, so a scan would never find it;
        BlueZ still lists it as connected and bleak can use that link as it is.
        """
        with contextlib.suppress(Exception):  # best effort: a D-Bus hiccup just means "scan"
            cached = await get_device(self.address)
            if cached is None:
                return None
            for device in await get_connected_devices(cached):
                path = str((device.details or {}).get("path", "")) if isinstance(device.details, dict) else ""
                if not self.options.adapter or f"/{self.options.adapter}/" in path:
                    _LOGGER.info("%s: reusing the link BlueZ kept open", self.address)
                    return device
        return None

    async def connect(self, *, settle: bool = True) -> None:
        """Connect and make the link ready for requests.

        With ``settle=False`` only the LE connection and service resolution are
        done, the part BlueZ does one device at a time; :meth:`settle` must follow
        (the scheduler runs it outside its connect lock, so an inverter's init
        pause does not hold up other devices' connects).
        """
        if self._link_up:
            if settle:
                await self.settle()
            return
        await self._close_client()
        started = time.monotonic()
        ble_device = await self._still_connected() or await self._find()
        try:
            # connect_timeout bounds the whole attempt, retries included:
            # bleak-retry-connector passes its own fixed timeout to each try.
            async with asyncio.timeout(self.options.connect_timeout):
                client = await establish_connection(
                    BleakClient,
                    ble_device,
                    self.name or self.address,
                    disconnected_callback=self._on_disconnect,
                    max_attempts=3,
                    bluez=_bluez_args(self.options.adapter),
                )
        except TimeoutError as exc:
            raise ConnectFailed(
                f"could not connect to {self.address} within {self.options.connect_timeout:g} s "
                "(the link came up but its services never resolved, or the module is busy)"
            ) from exc
        except (BleakError, BleakNotFoundError, EOFError, OSError) as exc:
            raise ConnectFailed(f"could not connect to {self.address}: {describe_error(exc)}") from exc
        self._client = client
        self._lost = False
        try:
            self._find_characteristics(client)
        except BaseException:
            await self._close_client()
            raise
        self.stats.connects += 1
        self.stats.connect_seconds = time.monotonic() - started
        _LOGGER.debug("connected to %s in %.2f s", self.address, self.stats.connect_seconds)
        if settle:
            await self.settle()

    async def settle(self) -> None:
        """Subscribe to notifications and do the device's init read (after ``connect(settle=False)``)."""
        client = self._client
        if client is None or not self._link_up:
            raise LinkLost(f"{self.address} disconnected before it was ready")
        if self._settled:
            return
        try:
            await self._subscribe(client)
        except BaseException:
            await self._close_client()
            raise
        self._settled = True

    def _find_characteristics(self, client: BleakClient) -> None:
        gatt = self.device.gatt
        services = list(client.services)
        if self.device.protocol is DeviceProtocol.NOTIFY_STREAM:
            # nothing is written; the driver subscribes itself (start_notify), but a device
            # without the characteristic is the wrong device: say so at connect
            if find_characteristic(services, gatt.notify_service, gatt.notify_char, ("notify", "indicate")) is None:
                raise ConnectFailed(
                    f"{self.address} has no characteristic {gatt.notify_char} in service {gatt.notify_service}: "
                    f"is this a {self.device.model_hint or self.device.type_name}?"
                )
            return
        self._write_char = find_characteristic(
            services, gatt.write_service, gatt.write_char, ("write-without-response", "write")
        )
        self._notify_char = find_characteristic(services, gatt.notify_service, gatt.notify_char, ("notify", "indicate"))
        if self._write_char is None or self._notify_char is None:
            missing = gatt.write_char if self._write_char is None else gatt.notify_char
            raise ConnectFailed(
                f"{self.address} has no characteristic {missing} in the expected service: "
                "is this a Renogy BT module or built-in BLE device?"
            )

    async def _subscribe(self, client: BleakClient) -> None:
        if self.device.protocol is not DeviceProtocol.MODBUS:
            return  # a stream driver subscribes through start_notify on its first read
        assert self._notify_char is not None
        try:
            await client.start_notify(self._notify_char, self._on_notify)
        except (BleakError, EOFError, OSError) as exc:
            raise ConnectFailed(f"could not subscribe to notifications: {describe_error(exc)}") from exc
        if self.device.init_read_uuid:
            await self._init_read(client)

    async def _init_read(self, client: BleakClient) -> None:
        # Built-in BLE inverters answer Modbus only after this read and a pause
        # (renogy-ble); errors are expected on modules without ffd4 and ignored.
        await asyncio.sleep(self.device.init_delay)
        char = find_characteristic(
            client.services, self.device.gatt.write_service, self.device.init_read_uuid or "", ("read",)
        )
        if char is None:
            return
        with contextlib.suppress(BleakError, EOFError, OSError, TimeoutError):
            async with asyncio.timeout(self.options.request_timeout):
                await client.read_gatt_char(char)

    def _on_disconnect(self, _client: BleakClient) -> None:
        self._lost = True
        self._end_stream()
        if self._reply is not None and not self._reply.done():
            self._reply.set_exception(LinkLost(f"{self.address} disconnected during a request"))

    async def _close_client(self) -> None:
        self._end_stream()
        client, self._client = self._client, None
        self._write_char = self._notify_char = None
        self._settled = False
        if self._late_until:
            self.stats.drains += 1
        self._late_until.clear()  # a late reply on the old connection never reaches a new one
        if client is None:
            return
        with contextlib.suppress(BleakError, EOFError, OSError, TimeoutError, AttributeError):
            async with asyncio.timeout(10):
                await client.disconnect()

    async def disconnect(self) -> None:
        async with self._lock:
            await self._close_client()

    # --- notification streams ---

    async def start_notify(self, service_uuid: str, char_uuid: str, sink: StreamSink) -> None:
        """Feed ``sink`` the notifications of ``char_uuid`` (in ``service_uuid``) on this connection.

        Once per connection: on a connection where ``sink`` is already subscribed this
        returns at once, so a driver may call it on every read. The sink is reset before
        the subscription starts and again when the connection ends (:meth:`_end_stream`),
        and a notification is fed only while its connection is the current one, so bytes
        of two connections never meet in the sink's buffer.
        """
        async with self._lock:
            if not self.connected:
                await self.connect()
            client = self._client
            assert client is not None
            if self._sink is sink:
                return
            char = find_characteristic(client.services, service_uuid, char_uuid, ("notify", "indicate"))
            if char is None:
                raise ConnectFailed(f"{self.address} has no notifying characteristic {char_uuid} in {service_uuid}")
            generation = self._generation

            def on_notify(_char: BleakGATTCharacteristic, data: bytearray) -> None:
                if generation == self._generation and self._sink is sink:
                    sink.feed(bytes(data))

            sink.reset()
            self._sink = sink
            try:
                await client.start_notify(char, on_notify)
            except (BleakError, EOFError, OSError) as exc:
                self._end_stream()
                raise LinkLost(f"could not subscribe to {char_uuid}: {describe_error(exc)}") from exc

    def _end_stream(self) -> None:
        """A connection boundary: the subscribed sink drops what it holds and hears no more of it."""
        self._generation += 1
        sink, self._sink = self._sink, None
        if sink is not None:
            sink.reset()

    # --- requests ---

    def _on_notify(self, _char: BleakGATTCharacteristic, data: bytearray) -> None:
        if self._assembler is None or self._reply is None or self._reply.done():
            return  # a late or unsolicited notification: nothing is waiting for it
        frame = self._assembler.feed(bytes(data))
        if frame is not None:
            self._reply.set_result(frame)

    async def _pace(self) -> None:
        wait = self.device.request_pacing - (time.monotonic() - self._last_request)
        if wait > 0:
            await asyncio.sleep(wait)

    async def _write(self, frame: bytes) -> None:
        assert self._client is not None and self._write_char is not None
        response = "write-without-response" not in self._write_char.properties
        for attempt in range(WRITE_RETRIES):
            try:
                # bleak retries org.bluez.Error.InProgress itself without limit: bound it
                async with asyncio.timeout(self.options.request_timeout):
                    await self._client.write_gatt_char(self._write_char, frame, response=response)
                return
            except TimeoutError as exc:
                raise LinkLost(
                    f"write to {self.address} did not complete within {self.options.request_timeout:g} s "
                    "(BlueZ kept answering 'operation in progress')"
                ) from exc
            except BleakError as exc:
                if "inprogress" in str(exc).lower().replace(" ", "") and attempt < WRITE_RETRIES - 1:
                    await asyncio.sleep(0.05 * (attempt + 1))
                    continue
                raise LinkLost(f"write to {self.address} failed: {describe_error(exc)}") from exc
            except (EOFError, OSError) as exc:
                raise LinkLost(f"write to {self.address} failed: {describe_error(exc)}") from exc

    async def request(self, request: modbus.Request, within: float | None = None) -> list[int] | int:
        """Send ``request`` and return the parsed reply (see ``modbus.parse_response``).

        ``within`` overrides the request timeout (a probe asks absent IDs and waits less).
        """
        wait = self.options.request_timeout if within is None else within
        async with self._lock:
            if self.fresh_needed(request.slave_id):
                await self._close_client()  # callers that guard connects reconnect before this
            if not self.connected:
                await self.connect()
            await self._pace()
            loop = asyncio.get_running_loop()
            self._assembler = modbus.ResponseAssembler(request)
            self._reply = loop.create_future()
            self.stats.requests += 1
            answered = False
            try:
                await self._write(request.frame)  # its own timeout raises LinkLost, not TimeoutError
                async with asyncio.timeout(wait):
                    frame = await self._reply
                answered = True
            except TimeoutError:
                self.stats.timeouts += 1
                raise ReplyTimeout(
                    f"no reply from Modbus id {request.slave_id} within {wait:g} s "
                    f"(wrong Modbus id, or the register block is not supported by this model)"
                ) from None
            except LinkLost:
                await self._close_client()
                raise
            finally:
                self._last_request = time.monotonic()
                self._assembler = None
                self._reply = None
                if not answered:  # timed out or cancelled: its reply may still come
                    self._late_until[request.slave_id] = self._last_request + LATE_REPLY_FACTOR * max(
                        wait, self.options.request_timeout
                    )
            try:
                return modbus.parse_response(frame, request)
            except modbus.FrameError as exc:  # the assembler only passes valid frames; defensive
                self.stats.bad_frames += 1
                raise BadReply(str(exc)) from exc

    def fresh_needed(self, slave_id: int) -> bool:
        """Whether ``slave_id`` must be asked on a fresh connection.

        After a request times out (or is cancelled) its reply may still come. It
        carries the slave's ID but names no register, so it could be taken for the
        answer to the next request to the same slave. Requests to other slaves are
        safe (the assembler takes only the asked ID): a silent unit neither stops
        its siblings nor costs their link. The same slave is asked again on a new
        connection, which drains whatever the old one still carried, unless
        ``LATE_REPLY_FACTOR`` request timeouts have passed (no module is that late).
        """
        until = self._late_until.get(slave_id)
        if until is None:
            return False
        if time.monotonic() >= until or not self._link_up:
            del self._late_until[slave_id]
            return False
        return True

    async def read_registers(self, slave_id: int, start: int, count: int, *, within: float | None = None) -> list[int]:
        words = await self.request(modbus.Request.read(slave_id, start, count), within)
        assert isinstance(words, list)
        return words

    async def write_register(self, slave_id: int, register: int, value: int) -> None:
        await self.request(modbus.Request.write_single(slave_id, register, value))

    async def __aenter__(self) -> BleLink:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.disconnect()


async def scan(seconds: float = 5.0, adapter: str | None = "hci0") -> list[ScanResult]:
    """Listen for advertisements for ``seconds``; one result per address, strongest RSSI kept."""
    seen: dict[str, ScanResult] = {}

    def on_advert(device: BLEDevice, adv: AdvertisementData) -> None:
        name = adv.local_name or device.name
        ids = tuple(sorted(adv.manufacturer_data))
        previous = seen.get(device.address)
        if previous is not None and (previous.rssi or -999) > adv.rssi and previous.name:
            return
        seen[device.address] = ScanResult(
            address=device.address.upper(),
            name=name.strip() if name else (previous.name if previous else None),
            rssi=adv.rssi,
            manufacturer_ids=ids,
            types=tuple(recognise(name, list(ids))),
        )

    scanner = BleakScanner(on_advert, bluez=_bluez_args(adapter))  # type: ignore[arg-type]
    if discovery_lock().locked():
        _LOGGER.debug("scan: waiting for a device search on the adapter to finish")
    try:
        # ``seconds`` of listening start once it is our turn (see BleLink._find).
        async with _discovering(scanner):
            await asyncio.sleep(seconds)
    except BleakError as exc:
        raise TransportError(f"scan failed on {adapter or 'the default adapter'}: {describe_error(exc)}") from exc
    return sorted(seen.values(), key=lambda r: (-(r.rssi or -999), r.address))

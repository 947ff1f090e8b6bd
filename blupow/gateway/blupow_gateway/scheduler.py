"""Polling: when each module is read, over how many BLE connections, and what a failure does.

The model is in modules.py: a *module* (one MAC, one BLE link) carries *units*
(a driver at a Modbus ID). A poll is one session per module: connect once, read
every unit one after another, each unit's outcome its own.

Rules (docs/mqtt-api.md, "Device list" and "Device availability"):

* every module with an enabled unit is polled every ``poll_interval`` seconds;
  a ticker starts one *cycle* per interval and ``last_cycle_s`` is how long the
  slowest module of that cycle took;
* never more than ``max_connections`` BLE connections at once: a module needs
  a *slot* before it connects and gives it back only after disconnecting;
* connection attempts are serialised by one lock (BlueZ aborts an LE connect
  when another one is in flight), while reads on links that are already
  connected run concurrently;
* with ``keep_connected`` and enough slots for every module, links stay open
  between polls (the module keeps its slot); otherwise each poll is connect,
  read, disconnect;
* stream devices (the Smart Shunt, devices/_stream.py) are polled the same way:
  ``device.read(link)`` subscribes once per connection and returns the latest good
  frame, so the state is still published once per poll. No special rule keeps their
  link: with ``keep_connected`` and a slot per module (the default for a few
  devices) it stays open and frames flow all the time, which the shunt needs (right
  after a connect it sends mostly history frames); when links cannot stay open, each
  poll connects and waits up to the driver's ``read_wait`` for a live frame. Holding
  a slot for a stream device regardless would starve the other modules;
* a unit that does not answer fails alone: its siblings are read as usual and
  the link stays up. After ``failures_before_offline`` consecutive failures a
  unit is ``offline``, and ``online`` again on its next success;
* a module none of whose units answered (or that could not connect) is retried
  with exponential backoff and jitter instead of at the next tick, and its
  link is dropped;
* a unit that is added, enabled or asked for with ``poll_now`` is polled at
  once (with its module);
* changing or removing a device never waits for its running poll: the poll is
  obsolete and is cancelled, and every wait for a task to stop is bounded
  (tasks.stop_task), so a command is answered in the time its own work takes.

Links come from an injectable ``link_factory(record, device)`` (default: the
BLE transport), so tests and benchmarks can poll simulated devices.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

from .devices import BaseDevice
from .modbus import ModbusException
from .modules import Cycle, Module, PollStats, Status, Unit
from .store import DeviceRecord, utc_now
from .tasks import stop_task, stop_tasks

_LOGGER = logging.getLogger(__name__)

FAILURES_BEFORE_OFFLINE = 3

__all__ = [
    "ControlError",
    "Link",
    "LinkFactory",
    "Listener",
    "Module",
    "PollStats",
    "Scheduler",
    "Status",
    "Unit",
    "default_link_factory",
    "error_text",
]


class Link(Protocol):
    """A transport as the scheduler uses it (``transport.BleLink`` fits)."""

    async def connect(self) -> None: ...

    async def disconnect(self) -> None: ...

    @property
    def connected(self) -> bool: ...

    async def read_registers(self, slave_id: int, start: int, count: int) -> list[int]: ...

    async def write_register(self, slave_id: int, register: int, value: int) -> None: ...


LinkFactory = Callable[[DeviceRecord, BaseDevice], Any]


class ControlError(Exception):
    """A control write failed; the message is meant for users."""


class Listener(Protocol):
    """What the gateway hears from the scheduler (all calls on the event loop)."""

    def on_values(self, unit: Unit) -> None: ...

    def on_failure(self, unit: Unit, error: str) -> None: ...

    def on_status(self, unit: Unit, old: Status, new: Status) -> None: ...

    def on_module_polled(self, module: Module) -> None: ...

    def on_cycle(self, seconds: float) -> None: ...


def error_text(exc: BaseException) -> str:
    """A failure as one line for ``last_error`` and events."""
    if isinstance(exc, ModbusException):
        return str(exc)
    text = str(exc)
    if isinstance(exc, TimeoutError) and not text:
        return "timed out"
    return text or type(exc).__name__


class _GuardedLink:
    """Wraps a link so that every (re)connection goes through the scheduler's connect lock.

    BleLink reconnects on its own when a request finds the link down; routing
    that through here keeps the "one connection attempt at a time" rule even
    then. Links without ``connect`` (the in-memory SimulatedLink) count as
    always connected.
    """

    def __init__(self, inner: Any, scheduler: Scheduler, module: Module) -> None:
        self.inner = inner
        self._scheduler = scheduler
        self._module = module

    @property
    def connected(self) -> bool:
        return bool(getattr(self.inner, "connected", True))

    async def connect(self) -> None:
        if self.connected:
            return
        connect = getattr(self.inner, "connect", None)
        if connect is None:
            return
        settle = getattr(self.inner, "settle", None)
        async with self._scheduler.connect_lock:
            if self.connected:
                return
            self._scheduler.connect_attempts += 1
            async with asyncio.timeout(self._scheduler.connect_guard):
                # Only the connection itself is serialised; a link that can be made
                # ready separately (notifications, an inverter's init pause) is, below.
                await (connect(settle=False) if settle is not None else connect())
        if settle is not None:
            async with asyncio.timeout(self._scheduler.connect_guard):
                await settle()
        self._module.connects += 1
        rssi = getattr(self.inner, "rssi", None)
        if isinstance(rssi, int):
            self._module.rssi = rssi

    async def disconnect(self) -> None:
        disconnect = getattr(self.inner, "disconnect", None)
        if disconnect is not None:
            await disconnect()

    async def _ready_for(self, slave_id: int) -> None:
        # A slave that just timed out may still send its late reply: the link asks it again
        # on a fresh connection (transport.BleLink.fresh_needed), made here under the lock.
        fresh_needed = getattr(self.inner, "fresh_needed", None)
        if fresh_needed is not None and fresh_needed(slave_id):
            await self.disconnect()
        await self.connect()

    async def start_notify(self, service_uuid: str, char_uuid: str, sink: Any) -> None:
        """For stream drivers (devices/_stream.py): (re)connect under the lock, then subscribe once."""
        await self.connect()
        await self.inner.start_notify(service_uuid, char_uuid, sink)

    async def read_registers(self, slave_id: int, start: int, count: int, *, within: float | None = None) -> list[int]:
        await self._ready_for(slave_id)
        extra = {} if within is None else {"within": within}  # only probes pass one
        words: list[int] = await self.inner.read_registers(slave_id, start, count, **extra)
        return words

    async def write_register(self, slave_id: int, register: int, value: int) -> None:
        await self._ready_for(slave_id)
        await self.inner.write_register(slave_id, register, value)


def default_link_factory(options: Any) -> LinkFactory:
    """BLE links with the settings' timeouts (imports bleak only when used)."""

    def factory(record: DeviceRecord, device: BaseDevice) -> Any:
        from .transport import BleLink

        return BleLink(record.mac_address, device, options)

    return factory


class Scheduler:
    def __init__(
        self,
        *,
        listener: Listener,
        link_factory: LinkFactory,
        poll_interval: float = 30.0,
        max_connections: int = 2,
        keep_connected: bool = True,
        connect_timeout: float = 20.0,
        request_timeout: float = 3.0,
        failures_before_offline: int = FAILURES_BEFORE_OFFLINE,
        backoff_base: float | None = None,
        backoff_cap: float | None = None,
        jitter: float = 0.2,
        rng: random.Random | None = None,
    ) -> None:
        self.listener = listener
        self.link_factory = link_factory
        self.poll_interval = poll_interval
        self.max_connections = max_connections
        self.keep_connected = keep_connected
        self.connect_timeout = connect_timeout
        self.request_timeout = request_timeout
        self.failures_before_offline = failures_before_offline
        self.backoff_base = backoff_base if backoff_base is not None else min(poll_interval, 10.0)
        self.backoff_cap = backoff_cap if backoff_cap is not None else max(poll_interval, 300.0)
        self.jitter = jitter
        self.rng = rng or random.Random()  # noqa: S311 - jitter, not security
        # BleLink.connect may scan and retry (bleak-retry-connector): bound it generously.
        self.connect_guard = connect_timeout * 4 + 10
        self.connect_lock = asyncio.Lock()
        self.connect_attempts = 0
        self.units: dict[str, Unit] = {}  # unit key -> unit
        self.modules: dict[str, Module] = {}  # MAC -> module
        self._pollable = 0  # modules whose ``pollable`` is true, counted by _rebalance
        self.last_cycle_s: float | None = None
        self.cycles = 0
        self.slots_in_use = 0
        self.max_slots_in_use = 0
        self._slots = asyncio.Semaphore(max_connections)
        self._ticker: asyncio.Task[None] | None = None
        self._stopping = False
        self._tasks: set[asyncio.Task[None]] = set()  # every module loop, including replaced ones
        self._background: set[asyncio.Task[Any]] = set()

    # --- lifecycle ---

    async def start(self) -> None:
        self._ticker = asyncio.create_task(self._tick(), name="poll-ticker")
        for module in self.modules.values():
            self._start_module(module)

    @property
    def running(self) -> bool:
        return self._ticker is not None and not self._ticker.done() and not self._stopping

    async def stop(self, grace: float = 3.0) -> None:
        """Stop polling and close every link (each within ``grace`` seconds)."""
        self._stopping = True
        for module in self.modules.values():
            module.wake.set()
        tasks: list[asyncio.Task[Any] | None] = [self._ticker, *self._tasks, *self._background]
        for unit in self.units.values():
            tasks += unit.controls
        await stop_tasks(tasks, grace)
        await asyncio.gather(*(self._close(m, grace) for m in self.modules.values()), return_exceptions=True)

    # --- the device set ---

    @property
    def keep_links(self) -> bool:
        """Links stay open between polls only while every pollable module has a slot of its own."""
        return self.keep_connected and self._pollable <= self.max_connections

    def unit(self, mac: str, modbus_id: int | None = None) -> Unit | None:
        """The unit at ``modbus_id`` behind ``mac``; without an ID, the module's only unit."""
        module = self.modules.get(mac)
        if module is None:
            return None
        units = list(module.units.values())
        if modbus_id is None:
            return units[0] if len(units) == 1 else None
        return next((u for u in units if u.modbus_id == modbus_id), None)

    def add(self, record: DeviceRecord, device: BaseDevice | None, error: str | None = None) -> Unit:
        module = self.modules.get(record.mac_address)
        if module is None:
            module = self.modules[record.mac_address] = Module(mac=record.mac_address)
            fresh = True
        else:
            fresh = False
        unit = Unit(record=record, device=device, module=module, error=error)
        if not unit.pollable:
            unit.status = Status.DISABLED
        module.units[unit.key] = unit
        self.units[unit.key] = unit
        if self._ticker is not None:
            if fresh:
                self._start_module(module)
            elif unit.pollable:
                self._trigger(module)  # a new unit is polled at once
        self._rebalance()
        return unit

    async def remove(self, key: str) -> Unit | None:
        """Take the unit out and wait (bounded) until nothing of it runs or stays connected."""
        unit = self.detach(key)
        if unit is not None:
            await self.retire(unit)
        return unit

    def detach(self, key: str) -> Unit | None:
        """Take the unit out of the schedule at once; :meth:`retire` finishes the job.

        Separate so that the gateway can detach inside its registry lock (the next
        command sees the unit gone) and wait outside it. A reading of the unit that
        is under way is dropped when it arrives; the last unit of a module takes
        the module (its loop and link) with it.
        """
        unit = self.units.pop(key, None)
        if unit is None:
            return None
        unit.retired = True
        for task in unit.controls:
            task.cancel()
        module = unit.module
        module.units.pop(key, None)
        if not module.units:
            self.modules.pop(module.mac, None)
            module.retired = True
            module.wake.set()  # a loop that lost its cancellation must not sleep on
            if module.task is not None:
                module.task.cancel()
            self._leave_cycle(module)
        self._rebalance()
        return unit

    async def retire(self, unit: Unit) -> None:
        """Stop a detached unit's control writes and, with its last unit, its module (bounded)."""
        await stop_tasks(list(unit.controls))
        module = unit.module
        if module.retired:
            await stop_task(module.task)
            await self._close(module)

    def update(self, record: DeviceRecord, device: BaseDevice | None = None) -> Unit:
        """Apply a changed record at once; a new ``device`` (driver) resets the unit's values.

        A poll that is running is not waited for (that made the answer take up to a
        whole poll). A reading made with the old driver is dropped when it arrives.
        When the module's link depends on the change (its only unit got a new
        driver, or it has no enabled unit left), the module's loop is cancelled and
        a new one closes the old link before going on.
        """
        unit = self.units[record.topic_id]
        module = unit.module
        unit.record = record
        if device is not None:
            unit.device = device
            unit.error = None
            unit.values = {}
            unit.registers = {}
        if (device is not None and not module.shared()) or not module.pollable:
            self._restart(module)
        if not unit.pollable:
            self._set_status(unit, Status.DISABLED)
            if not module.pollable:
                self._leave_cycle(module)
                module.retry_at = None
        if unit.pollable and (unit.status == Status.DISABLED or device is not None):
            unit.stats.consecutive_failures = 0
            self._set_status(unit, Status.PENDING)
            module.retry_at = None
            self._trigger(module)
        self._rebalance()
        return unit

    def _restart(self, module: Module) -> None:
        """Cancel the module's loop; a new one closes the old link first, then polls as usual."""
        previous, old_link = module.task, module.link
        module.link = None
        if previous is not None:
            previous.cancel()
        if self._ticker is not None:
            self._start_module(module, after=(previous, old_link))

    def poll_now(self, key: str | None = None) -> list[str]:
        """Poll the module of unit ``key`` (a module's MAC works too; None: every module) at once.

        Returns the MACs queued.
        """
        if key is None:
            targets = list(self.modules.values())
        else:
            targets = [self.modules[key] if key in self.modules else self.units[key].module]
        targets = [m for m in targets if m.pollable]
        idle = [m for m in targets if not m.queued and not m.lock.locked()]
        if key is None and idle:
            self._begin_cycle(idle)
        for module in targets:
            self._trigger(module)
        return [m.mac for m in targets]

    @contextlib.asynccontextmanager
    async def session(self, mac: str, profile: BaseDevice) -> AsyncIterator[_GuardedLink]:
        """A connected link to module ``mac`` for work other than polling (probe_module).

        A configured module lends its own link between polls (the module accepts one
        central only); any other module gets a temporary link that takes a connection
        slot and the connect lock like a poll, and is closed afterwards.
        """
        module = self.modules.get(mac)
        if module is not None and module.profile() is not None:
            async with module.lock:
                await self._take_slot(module)
                link = self._link(module)
                try:
                    await link.connect()
                    yield link
                finally:
                    if not self.keep_links or not module.pollable:
                        await self._release(module)
            return
        temporary = Module(mac=mac)
        record = DeviceRecord(mac_address=mac, type=profile.type_name, name=mac)
        await self._take_slot(temporary)
        link = temporary.link = _GuardedLink(self.link_factory(record, profile), self, temporary)
        try:
            await link.connect()
            yield link
        finally:
            await self._release(temporary)

    # --- controls ---

    async def write_control(self, key: str, control_key: str, on: bool) -> Any:
        """Write a control, read its state back and return the read-back value."""
        unit = self.units.get(key)
        if unit is None or unit.device is None:
            raise ControlError(f"device {key} is not available")
        control = unit.device.control(control_key)
        if control is None:
            raise ControlError(f"{unit.record.type} has no control {control_key!r}")
        if not unit.record.enabled:
            raise ControlError(f"device {unit.record.name} is disabled")
        device, module = unit.device, unit.module
        task = asyncio.current_task()
        if task is not None:  # removing the unit cancels it (and waits for it, bounded)
            unit.controls.add(task)
        try:
            async with module.lock:
                await self._take_slot(module)
                try:
                    link = self._link(module)
                    async with asyncio.timeout(self.connect_guard + self.request_timeout * 3 + 5):
                        await device.write_control(link, control_key, on)
                        block = device.block_for_field(control.state_field)
                        if block is not None:
                            words = await link.read_registers(device.modbus_id, block.start, block.count)
                            for i, word in enumerate(words):
                                unit.registers[block.start + i] = word
                except Exception as exc:
                    await self._release(module)
                    raise ControlError(f"writing {control_key} failed: {error_text(exc)}") from exc
                if not self.keep_links:
                    await self._release(module)
                unit.values = device.decode(unit.registers)
        finally:
            unit.controls.discard(task)  # type: ignore[arg-type]
        if unit.retired:
            raise ControlError(f"device {unit.record.name} was removed")
        self.listener.on_values(unit)
        return unit.values.get(control.state_field)

    # --- internals: module loops ---

    def _start_module(
        self, module: Module, after: tuple[asyncio.Task[None] | None, _GuardedLink | None] | None = None
    ) -> None:
        module.task = task = asyncio.create_task(self._run(module, after), name=f"poll-{module.mac}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if module.pollable:
            self._trigger(module)  # a new module is polled at once

    def _trigger(self, module: Module) -> None:
        module.queued = True
        module.wake.set()

    async def _run(
        self, module: Module, after: tuple[asyncio.Task[None] | None, _GuardedLink | None] | None = None
    ) -> None:
        loop = asyncio.get_running_loop()
        if after is not None:  # replacing a loop (update): the old one must be gone, its link closed
            previous, old_link = after
            await stop_task(previous)
            await self._disconnect(module, old_link)
        # A cancellation can be lost in a library's wait (Python 3.11's wait_for): then
        # ``retired`` or a newer task of the module still ends this loop once the poll in
        # hand returns, before it touches the module again.
        me = asyncio.current_task()
        while not self._stopping and not module.retired and module.task is me:
            if not module.wake.is_set():
                delay = None if module.retry_at is None else max(0.0, module.retry_at - loop.time())
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await module.wake.wait()
            if module.retired or module.task is not me:
                break
            module.wake.clear()
            module.queued = False
            if not module.pollable:
                self._leave_cycle(module)
                continue
            ok = await self._poll(module)
            if module.retired or module.task is not me:
                break
            self._leave_cycle(module)
            if ok:
                module.retry_at = None
            else:
                module.retry_at = loop.time() + self.backoff(module.failures)

    def backoff(self, failures: int) -> float:
        """Seconds before the next try after ``failures`` consecutive failures."""
        delay = min(self.backoff_cap, self.backoff_base * 2 ** max(0, failures - 1))
        return delay * self.rng.uniform(1 - self.jitter, 1 + self.jitter)

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        next_tick = loop.time() + self.poll_interval
        while not self._stopping:
            await asyncio.sleep(max(0.0, next_tick - loop.time()))
            next_tick += self.poll_interval
            if next_tick < loop.time():  # the loop was stalled: do not catch up in a burst
                next_tick = loop.time() + self.poll_interval
            due = [
                m
                for m in self.modules.values()
                if m.pollable and m.retry_at is None and not m.queued and not m.lock.locked()
            ]
            if due:
                self._begin_cycle(due)
                for module in due:
                    self._trigger(module)

    def _begin_cycle(self, modules: list[Module]) -> None:
        cycle = Cycle(started=time.monotonic(), pending={m.mac for m in modules})
        for module in modules:
            module.cycle = cycle

    def _leave_cycle(self, module: Module) -> None:
        cycle, module.cycle = module.cycle, None
        if cycle is None:
            return
        cycle.pending.discard(module.mac)
        if not cycle.pending:
            self.last_cycle_s = round(time.monotonic() - cycle.started, 3)
            self.cycles += 1
            self.listener.on_cycle(self.last_cycle_s)

    # --- internals: one poll ---

    def _link(self, module: Module) -> _GuardedLink:
        if module.link is None:
            profile = module.profile()
            first = next(iter(module.units.values()))
            assert profile is not None
            module.link = _GuardedLink(self.link_factory(first.record, profile), self, module)
        link: _GuardedLink = module.link
        return link

    def _adopt_variant(self, module: Module, unit: Unit, device: BaseDevice) -> BaseDevice:
        """Give a device added without a variant the one its advertised name implies.

        ``RNGRBP…`` is a Pro battery (Modbus id 0xFF, current in 0.1 A), not the
        legacy default (id 0x30): without this, adding it by type alone would time
        out on every poll. An explicit variant or Modbus id from the user wins. Only
        for a module's only unit: the name is the module's, not a unit's behind it.
        """
        if unit.record.variant is not None or not device.variants or module.link is None or module.shared():
            return device
        name = getattr(module.link.inner, "name", None)
        detected = device.variant_for_name(name)
        if detected is None or detected == device.variant:
            return device
        adopted = type(device)(modbus_id=unit.record.modbus_id, variant=detected, config=unit.record.config)
        _LOGGER.info(
            "%s: advertised name %s means variant %s (Modbus id %d)", unit.key, name, detected, adopted.modbus_id
        )
        unit.device = adopted
        if hasattr(module.link.inner, "device"):
            module.link.inner.device = adopted
        return adopted

    def _read_guard(self, device: BaseDevice) -> float:
        blocks = len(device.active_blocks())
        return self.request_timeout * (blocks + 2) + device.request_pacing * blocks + device.read_wait + 10

    def _obsolete(self, module: Module, link: _GuardedLink | None) -> bool:
        """The module was removed or its link replaced while this poll ran (a lost cancel)."""
        return module.retired or (link is not None and module.link is not link)

    async def _poll(self, module: Module) -> bool:
        """One session: connect once, read every unit in turn; True if any unit answered."""
        async with module.lock:
            units = module.pollable_units()
            if not units or self._stopping or module.retired:
                return False
            await self._take_slot(module)
            started = time.monotonic()
            link: _GuardedLink | None = None
            try:
                link = self._link(module)
                await link.connect()
            except Exception as exc:
                if self._obsolete(module, link):
                    return False
                await self._release(module)
                module.failures += 1
                for unit in units:
                    unit.stats.attempts += 1
                    self._failed(unit, exc, started)
                return False
            module.polls += 1
            answered = 0
            for unit in units:
                if unit.retired or not unit.pollable:
                    continue
                answered += await self._read_unit(module, link, unit)
                if self._obsolete(module, link):
                    return False
            if answered == 0:
                # Nobody answered: the module itself is likely gone; start the next try clean.
                module.failures += 1
                await self._release(module)
            else:
                module.failures = 0
                if not self.keep_links:
                    await self._release(module)
            self.listener.on_module_polled(module)
            return answered > 0

    async def _read_unit(self, module: Module, link: _GuardedLink, unit: Unit) -> bool:
        assert unit.device is not None
        device = self._adopt_variant(module, unit, unit.device)
        unit.stats.attempts += 1
        started = time.monotonic()
        try:
            async with asyncio.timeout(self._read_guard(device)):
                reading = await device.read(link)
        except Exception as exc:
            if unit.retired or unit.device is not device or self._obsolete(module, link):
                return False  # removed or changed meanwhile: this outcome is nobody's
            self._failed(unit, exc, started)
            return False
        if unit.retired or unit.device is not device or not unit.pollable or self._obsolete(module, link):
            return False  # removed, changed or disabled meanwhile: drop the reading
        unit.polled_cycle = module.polls
        self._succeeded(unit, reading.values, reading.registers, started)
        if reading.skipped:
            _LOGGER.debug("%s: skipped optional blocks: %s", unit.key, "; ".join(reading.skipped))
        return True

    def _succeeded(self, unit: Unit, values: dict[str, Any], registers: dict[int, int], started: float) -> None:
        now = utc_now()
        stats = unit.stats
        stats.successes += 1
        stats.consecutive_failures = 0
        stats.last_latency_ms = round((time.monotonic() - started) * 1000)
        stats.last_error = None
        stats.last_poll = now
        stats.last_seen = now
        unit.values = values
        unit.registers = dict(registers)
        self.listener.on_values(unit)
        self._set_status(unit, Status.ONLINE)

    def _failed(self, unit: Unit, exc: Exception, started: float) -> None:
        stats = unit.stats
        error = error_text(exc)
        known = isinstance(exc, (TimeoutError, ModbusException)) or type(exc).__module__.endswith("transport")
        if not known and stats.consecutive_failures == 0:
            _LOGGER.error("Polling %s failed unexpectedly", unit.key, exc_info=exc)
        stats.failures += 1
        stats.consecutive_failures += 1
        stats.last_latency_ms = round((time.monotonic() - started) * 1000)
        stats.last_error = error
        stats.last_poll = utc_now()
        _LOGGER.debug("Polling %s failed (%d in a row): %s", unit.key, stats.consecutive_failures, error)
        self.listener.on_failure(unit, error)
        if stats.consecutive_failures >= self.failures_before_offline:
            self._set_status(unit, Status.OFFLINE)

    def _set_status(self, unit: Unit, new: Status) -> None:
        old = unit.status
        if old == new:
            return
        unit.status = new
        self.listener.on_status(unit, old, new)

    # --- internals: connection slots ---

    async def _take_slot(self, module: Module) -> None:
        if module.holds_slot:
            return
        await self._slots.acquire()
        module.holds_slot = True
        self.slots_in_use += 1
        self.max_slots_in_use = max(self.max_slots_in_use, self.slots_in_use)

    async def _release(self, module: Module, grace: float = 10.0) -> None:
        """Disconnect (if connected) and give the slot back; never raises but CancelledError."""
        await self._disconnect(module, module.link, grace)

    async def _disconnect(self, module: Module, link: _GuardedLink | None, grace: float = 10.0) -> None:
        try:
            if link is not None:
                async with asyncio.timeout(grace):
                    await link.disconnect()
        except Exception as exc:
            _LOGGER.debug("Disconnecting %s failed: %s", module.mac, error_text(exc))
        finally:  # even when cancelled mid-disconnect: a lost slot would starve other modules
            if module.holds_slot:
                module.holds_slot = False
                self.slots_in_use -= 1
                self._slots.release()

    async def _close(self, module: Module, grace: float = 10.0) -> None:
        await self._release(module, grace)

    def _rebalance(self) -> None:
        """After add/remove/update: when links may no longer stay open, close the idle ones.

        It also counts the pollable modules for ``keep_links``: once per change of
        the device set rather than on every poll (a count per poll made the cost
        of a poll grow with the number of devices).
        """
        self._pollable = sum(1 for m in self.modules.values() if m.pollable)
        if self.keep_links:
            return
        for module in list(self.modules.values()):
            if module.holds_slot and not module.lock.locked():
                task = asyncio.create_task(self._release_idle(module))
                self._background.add(task)
                task.add_done_callback(self._background.discard)

    async def _release_idle(self, module: Module) -> None:
        async with module.lock:
            if module.holds_slot and not self.keep_links:
                await self._release(module)

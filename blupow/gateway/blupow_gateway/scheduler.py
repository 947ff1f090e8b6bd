"""Polling: when each device is read, over how many BLE connections, and what a failure does.

Rules (docs/mqtt-api.md, "Device list" and "Device availability"):

* every enabled device is polled every ``poll_interval`` seconds; a ticker
  starts one *cycle* per interval and ``last_cycle_s`` is how long the slowest
  device of that cycle took;
* never more than ``max_connections`` BLE connections at once: a device needs
  a *slot* before it connects and gives it back only after disconnecting;
* connection attempts are serialised by one lock (BlueZ aborts an LE connect
  when another one is in flight), while reads on links that are already
  connected run concurrently;
* with ``keep_connected`` and enough slots for every enabled device, links stay
  open between polls (the device keeps its slot); otherwise each poll is
  connect, read, disconnect;
* after a failure the device is retried with exponential backoff and jitter
  instead of at the next tick; after ``failures_before_offline`` consecutive
  failures it is ``offline``, and ``online`` again on the next success;
* a device that is added, enabled or asked for with ``poll_now`` is polled at
  once;
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
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from .devices import BaseDevice
from .modbus import ModbusException
from .store import DeviceRecord, utc_now
from .tasks import stop_task, stop_tasks

_LOGGER = logging.getLogger(__name__)

FAILURES_BEFORE_OFFLINE = 3


class Status(StrEnum):
    PENDING = "pending"
    ONLINE = "online"
    OFFLINE = "offline"
    DISABLED = "disabled"


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


@dataclass
class PollStats:
    attempts: int = 0
    successes: int = 0
    failures: int = 0
    consecutive_failures: int = 0
    last_latency_ms: int | None = None
    last_error: str | None = None
    last_poll: str | None = None
    last_seen: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "attempts": self.attempts,
            "successes": self.successes,
            "failures": self.failures,
            "consecutive_failures": self.consecutive_failures,
            "last_latency_ms": self.last_latency_ms,
            "last_poll": self.last_poll,
        }


@dataclass
class Cycle:
    started: float
    pending: set[str]


@dataclass(eq=False)
class DeviceWorker:
    """A configured device at run time: its driver, link, status and statistics."""

    record: DeviceRecord
    device: BaseDevice | None
    error: str | None = None  # why ``device`` could not be built (record kept, not polled)
    link: Any = None
    status: Status = Status.PENDING
    stats: PollStats = field(default_factory=PollStats)
    values: dict[str, Any] = field(default_factory=dict)
    registers: dict[int, int] = field(default_factory=dict)
    rssi: int | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    task: asyncio.Task[None] | None = None
    holds_slot: bool = False
    retry_at: float | None = None
    queued: bool = False
    cycle: Cycle | None = None
    connects: int = 0
    retired: bool = False  # removed: its poll loop must end, whatever it was doing
    controls: set[asyncio.Task[Any]] = field(default_factory=set)  # control writes in flight

    @property
    def mac(self) -> str:
        return self.record.mac_address

    @property
    def pollable(self) -> bool:
        return self.record.enabled and self.device is not None


class Listener(Protocol):
    """What the gateway hears from the scheduler (all calls on the event loop)."""

    def on_values(self, worker: DeviceWorker) -> None: ...

    def on_failure(self, worker: DeviceWorker, error: str) -> None: ...

    def on_status(self, worker: DeviceWorker, old: Status, new: Status) -> None: ...

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

    def __init__(self, inner: Any, scheduler: Scheduler, worker: DeviceWorker) -> None:
        self.inner = inner
        self._scheduler = scheduler
        self._worker = worker

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
        self._worker.connects += 1
        rssi = getattr(self.inner, "rssi", None)
        if isinstance(rssi, int):
            self._worker.rssi = rssi

    async def disconnect(self) -> None:
        disconnect = getattr(self.inner, "disconnect", None)
        if disconnect is not None:
            await disconnect()

    async def read_registers(self, slave_id: int, start: int, count: int) -> list[int]:
        await self.connect()
        words: list[int] = await self.inner.read_registers(slave_id, start, count)
        return words

    async def write_register(self, slave_id: int, register: int, value: int) -> None:
        await self.connect()
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
        self.workers: dict[str, DeviceWorker] = {}
        self._pollable = 0  # workers whose ``pollable`` is true, counted by _rebalance
        self.last_cycle_s: float | None = None
        self.cycles = 0
        self.slots_in_use = 0
        self.max_slots_in_use = 0
        self._slots = asyncio.Semaphore(max_connections)
        self._ticker: asyncio.Task[None] | None = None
        self._stopping = False
        self._tasks: set[asyncio.Task[None]] = set()  # every worker loop, including replaced ones
        self._background: set[asyncio.Task[Any]] = set()

    # --- lifecycle ---

    async def start(self) -> None:
        self._ticker = asyncio.create_task(self._tick(), name="poll-ticker")
        for worker in self.workers.values():
            self._start_worker(worker)

    @property
    def running(self) -> bool:
        return self._ticker is not None and not self._ticker.done() and not self._stopping

    async def stop(self, grace: float = 3.0) -> None:
        """Stop polling and close every link (each within ``grace`` seconds)."""
        self._stopping = True
        for worker in self.workers.values():
            worker.wake.set()
        tasks: list[asyncio.Task[Any] | None] = [self._ticker, *self._tasks, *self._background]
        for worker in self.workers.values():
            tasks += worker.controls
        await stop_tasks(tasks, grace)
        await asyncio.gather(*(self._close(w, grace) for w in self.workers.values()), return_exceptions=True)

    # --- the device set ---

    @property
    def keep_links(self) -> bool:
        """Links stay open between polls only while every pollable device has a slot of its own."""
        return self.keep_connected and self._pollable <= self.max_connections

    def add(self, record: DeviceRecord, device: BaseDevice | None, error: str | None = None) -> DeviceWorker:
        worker = DeviceWorker(record=record, device=device, error=error)
        if not worker.pollable:
            worker.status = Status.DISABLED
        self.workers[record.mac_address] = worker
        if self._ticker is not None:
            self._start_worker(worker)
        self._rebalance()
        return worker

    async def remove(self, mac: str) -> DeviceWorker | None:
        """Take the device out and wait (bounded) until nothing of it runs or stays connected."""
        worker = self.detach(mac)
        if worker is not None:
            await self.retire(worker)
        return worker

    def detach(self, mac: str) -> DeviceWorker | None:
        """Take the device out of the schedule at once; :meth:`retire` finishes the job.

        Separate so that the gateway can detach inside its registry lock (the next
        command sees the device gone) and wait for the poll outside it.
        """
        worker = self.workers.pop(mac, None)
        if worker is None:
            return None
        worker.retired = True
        worker.wake.set()  # a loop that lost its cancellation must not sleep on
        for task in (worker.task, *worker.controls):
            if task is not None:
                task.cancel()
        self._leave_cycle(worker)
        self._rebalance()
        return worker

    async def retire(self, worker: DeviceWorker) -> None:
        """Stop a detached worker's tasks (bounded) and close its link."""
        await stop_tasks([worker.task, *worker.controls])
        await self._close(worker)

    def update(self, record: DeviceRecord, device: BaseDevice | None = None) -> DeviceWorker:
        """Apply a changed record at once; a new ``device`` (driver) also means a new link.

        A poll that is running is not waited for (that made the answer take up to a
        whole poll): when it is made obsolete, by a new driver or by disabling, it is
        cancelled and the worker's new task closes the old link before going on.
        """
        worker = self.workers[record.mac_address]
        worker.record = record
        if device is not None:
            worker.device = device
            worker.error = None
            worker.values = {}
            worker.registers = {}
        if device is not None or not worker.pollable:
            self._restart(worker)
        if not worker.pollable:
            self._leave_cycle(worker)
            worker.retry_at = None
            self._set_status(worker, Status.DISABLED)
        if worker.pollable and (worker.status == Status.DISABLED or device is not None):
            worker.stats.consecutive_failures = 0
            self._set_status(worker, Status.PENDING)
            worker.retry_at = None
            self._trigger(worker)
        self._rebalance()
        return worker

    def _restart(self, worker: DeviceWorker) -> None:
        """Cancel the worker's loop; a new one closes the old link first, then polls as usual."""
        previous, old_link = worker.task, worker.link
        worker.link = None
        if previous is not None:
            previous.cancel()
        if self._ticker is not None:
            self._start_worker(worker, after=(previous, old_link))

    def poll_now(self, mac: str | None = None) -> list[str]:
        targets = [self.workers[mac]] if mac is not None else list(self.workers.values())
        targets = [w for w in targets if w.pollable]
        idle = [w for w in targets if not w.queued and not w.lock.locked()]
        if mac is None and idle:
            self._begin_cycle(idle)
        for worker in targets:
            self._trigger(worker)
        return [w.mac for w in targets]

    # --- controls ---

    async def write_control(self, mac: str, key: str, on: bool) -> Any:
        """Write a control, read its state back and return the read-back value."""
        worker = self.workers.get(mac)
        if worker is None or worker.device is None:
            raise ControlError(f"device {mac} is not available")
        control = worker.device.control(key)
        if control is None:
            raise ControlError(f"{worker.record.type} has no control {key!r}")
        if not worker.record.enabled:
            raise ControlError(f"device {mac} is disabled")
        device = worker.device
        task = asyncio.current_task()
        if task is not None:  # removing the device cancels it (and waits for it, bounded)
            worker.controls.add(task)
        try:
            async with worker.lock:
                await self._take_slot(worker)
                try:
                    link = self._link(worker)
                    async with asyncio.timeout(self.connect_guard + self.request_timeout * 3 + 5):
                        await device.write_control(link, key, on)
                        block = device.block_for_field(control.state_field)
                        if block is not None:
                            words = await link.read_registers(device.modbus_id, block.start, block.count)
                            for i, word in enumerate(words):
                                worker.registers[block.start + i] = word
                except Exception as exc:
                    await self._release(worker)
                    raise ControlError(f"writing {key} failed: {error_text(exc)}") from exc
                if not self.keep_links:
                    await self._release(worker)
                worker.values = device.decode(worker.registers)
        finally:
            worker.controls.discard(task)  # type: ignore[arg-type]
        if worker.retired or self.workers.get(worker.mac) is not worker:
            raise ControlError(f"device {mac} was removed")
        self.listener.on_values(worker)
        return worker.values.get(control.state_field)

    # --- internals: workers ---

    def _start_worker(
        self, worker: DeviceWorker, after: tuple[asyncio.Task[None] | None, _GuardedLink | None] | None = None
    ) -> None:
        worker.task = task = asyncio.create_task(self._run(worker, after), name=f"poll-{worker.mac}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if worker.pollable:
            self._trigger(worker)  # a new device is polled at once

    def _trigger(self, worker: DeviceWorker) -> None:
        worker.queued = True
        worker.wake.set()

    async def _run(
        self, worker: DeviceWorker, after: tuple[asyncio.Task[None] | None, _GuardedLink | None] | None = None
    ) -> None:
        loop = asyncio.get_running_loop()
        if after is not None:  # replacing a loop (update): the old one must be gone, its link closed
            previous, old_link = after
            await stop_task(previous)
            await self._disconnect(worker, old_link)
        # A cancellation can be lost in a library's wait (Python 3.11's wait_for): then
        # ``retired`` or a newer task of the worker still ends this loop once the poll in
        # hand returns, before it touches the worker again.
        me = asyncio.current_task()
        while not self._stopping and not worker.retired and worker.task is me:
            if not worker.wake.is_set():
                delay = None if worker.retry_at is None else max(0.0, worker.retry_at - loop.time())
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await worker.wake.wait()
            if worker.retired or worker.task is not me:
                break
            worker.wake.clear()
            worker.queued = False
            if not worker.pollable:
                self._leave_cycle(worker)
                continue
            ok = await self._poll(worker)
            if worker.retired or worker.task is not me:
                break
            self._leave_cycle(worker)
            if ok:
                worker.retry_at = None
            else:
                worker.retry_at = loop.time() + self.backoff(worker.stats.consecutive_failures)

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
                w
                for w in self.workers.values()
                if w.pollable and w.retry_at is None and not w.queued and not w.lock.locked()
            ]
            if due:
                self._begin_cycle(due)
                for worker in due:
                    self._trigger(worker)

    def _begin_cycle(self, workers: list[DeviceWorker]) -> None:
        cycle = Cycle(started=time.monotonic(), pending={w.mac for w in workers})
        for worker in workers:
            worker.cycle = cycle

    def _leave_cycle(self, worker: DeviceWorker) -> None:
        cycle, worker.cycle = worker.cycle, None
        if cycle is None:
            return
        cycle.pending.discard(worker.mac)
        if not cycle.pending:
            self.last_cycle_s = round(time.monotonic() - cycle.started, 3)
            self.cycles += 1
            self.listener.on_cycle(self.last_cycle_s)

    # --- internals: one poll ---

    def _link(self, worker: DeviceWorker) -> _GuardedLink:
        if worker.link is None:
            assert worker.device is not None
            worker.link = _GuardedLink(self.link_factory(worker.record, worker.device), self, worker)
        link: _GuardedLink = worker.link
        return link

    def _adopt_variant(self, worker: DeviceWorker, device: BaseDevice) -> BaseDevice:
        """Give a device added without a variant the one its advertised name implies.

        ``RNGRBP…`` is a Pro battery (Modbus id 0xFF, current in 0.1 A), not the
        legacy default (id 0x30): without this, adding it by type alone would time
        out on every poll. An explicit variant or Modbus id from the user wins.
        """
        if worker.record.variant is not None or not device.variants or worker.link is None:
            return device
        name = getattr(worker.link.inner, "name", None)
        detected = device.variant_for_name(name)
        if detected is None or detected == device.variant:
            return device
        adopted = type(device)(modbus_id=worker.record.modbus_id, variant=detected, config=worker.record.config)
        _LOGGER.info(
            "%s: advertised name %s means variant %s (Modbus id %d)", worker.mac, name, detected, adopted.modbus_id
        )
        worker.device = adopted
        if hasattr(worker.link.inner, "device"):
            worker.link.inner.device = adopted
        return adopted

    def _read_guard(self, device: BaseDevice) -> float:
        blocks = len(device.active_blocks())
        return self.request_timeout * (blocks + 2) + device.request_pacing * blocks + 10

    async def _poll(self, worker: DeviceWorker) -> bool:
        async with worker.lock:
            device = worker.device
            if not worker.pollable or self._stopping or device is None:
                return False
            await self._take_slot(worker)
            started = time.monotonic()
            worker.stats.attempts += 1
            link: _GuardedLink | None = None
            try:
                link = self._link(worker)
                await link.connect()
                device = self._adopt_variant(worker, device)
                async with asyncio.timeout(self._read_guard(device)):
                    reading = await device.read(link)
            except Exception as exc:
                if worker.retired or (link is not None and worker.link is not link):
                    return False  # an obsolete poll: its link is closed by whoever replaced it
                await self._release(worker)
                self._failed(worker, exc, started)
                return False
            if not self.keep_links:
                await self._release(worker)
            if worker.retired or worker.link is not link:
                return False  # removed or changed meanwhile (a lost cancellation): drop the reading
            rssi = getattr(worker.link.inner, "rssi", None)
            if isinstance(rssi, int):
                worker.rssi = rssi
            self._succeeded(worker, reading.values, reading.registers, started)
            if reading.skipped:
                _LOGGER.debug("%s: skipped optional blocks: %s", worker.mac, "; ".join(reading.skipped))
            return True

    def _succeeded(
        self, worker: DeviceWorker, values: dict[str, Any], registers: dict[int, int], started: float
    ) -> None:
        now = utc_now()
        stats = worker.stats
        stats.successes += 1
        stats.consecutive_failures = 0
        stats.last_latency_ms = round((time.monotonic() - started) * 1000)
        stats.last_error = None
        stats.last_poll = now
        stats.last_seen = now
        worker.values = values
        worker.registers = dict(registers)
        self.listener.on_values(worker)
        self._set_status(worker, Status.ONLINE)

    def _failed(self, worker: DeviceWorker, exc: Exception, started: float) -> None:
        stats = worker.stats
        error = error_text(exc)
        known = isinstance(exc, (TimeoutError, ModbusException)) or type(exc).__module__.endswith("transport")
        if not known and stats.consecutive_failures == 0:
            _LOGGER.error("Polling %s failed unexpectedly", worker.mac, exc_info=exc)
        stats.failures += 1
        stats.consecutive_failures += 1
        stats.last_latency_ms = round((time.monotonic() - started) * 1000)
        stats.last_error = error
        stats.last_poll = utc_now()
        _LOGGER.debug("Polling %s failed (%d in a row): %s", worker.mac, stats.consecutive_failures, error)
        self.listener.on_failure(worker, error)
        if stats.consecutive_failures >= self.failures_before_offline:
            self._set_status(worker, Status.OFFLINE)

    def _set_status(self, worker: DeviceWorker, new: Status) -> None:
        old = worker.status
        if old == new:
            return
        worker.status = new
        self.listener.on_status(worker, old, new)

    # --- internals: connection slots ---

    async def _take_slot(self, worker: DeviceWorker) -> None:
        if worker.holds_slot:
            return
        await self._slots.acquire()
        worker.holds_slot = True
        self.slots_in_use += 1
        self.max_slots_in_use = max(self.max_slots_in_use, self.slots_in_use)

    async def _release(self, worker: DeviceWorker, grace: float = 10.0) -> None:
        """Disconnect (if connected) and give the slot back; never raises but CancelledError."""
        await self._disconnect(worker, worker.link, grace)

    async def _disconnect(self, worker: DeviceWorker, link: _GuardedLink | None, grace: float = 10.0) -> None:
        try:
            if link is not None:
                async with asyncio.timeout(grace):
                    await link.disconnect()
        except Exception as exc:
            _LOGGER.debug("Disconnecting %s failed: %s", worker.mac, error_text(exc))
        finally:  # even when cancelled mid-disconnect: a lost slot would starve other devices
            if worker.holds_slot:
                worker.holds_slot = False
                self.slots_in_use -= 1
                self._slots.release()

    async def _close(self, worker: DeviceWorker, grace: float = 10.0) -> None:
        await self._release(worker, grace)

    def _rebalance(self) -> None:
        """After add/remove/update: when links may no longer stay open, close the idle ones.

        It also counts the pollable devices for ``keep_links``: once per change of
        the device set rather than on every poll (a count per poll made the cost
        of a poll grow with the number of devices).
        """
        self._pollable = sum(1 for w in self.workers.values() if w.pollable)
        if self.keep_links:
            return
        for worker in list(self.workers.values()):
            if worker.holds_slot and not worker.lock.locked():
                task = asyncio.create_task(self._release_idle(worker))
                self._background.add(task)
                task.add_done_callback(self._background.discard)

    async def _release_idle(self, worker: DeviceWorker) -> None:
        async with worker.lock:
            if worker.holds_slot and not self.keep_links:
                await self._release(worker)

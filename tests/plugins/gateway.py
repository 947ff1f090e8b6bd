"""pytest fixtures for in-process gateway tests: simulated BLE links and a gateway factory.

* :class:`SimWorld` holds simulated devices (``blupow_gateway.simulator``) by MAC and
  hands the gateway :class:`SimBleLink` s through the injectable ``link_factory``.
  ``add_module("hub:battery*4,controller@97")`` puts one module (one MAC, several
  Modbus units) on the air; its link routes each request to the unit at its ID.
  A SimBleLink behaves like a BLE link where it matters to the scheduler: it has
  to be connected (which takes time), it can be out of range, dropped, or held by
  another central, and the world counts simultaneous connections and
  simultaneous connection attempts.
* ``gateway_factory`` (async): starts a real :class:`~blupow_gateway.service.Gateway`
  against the private ``mosquitto`` broker with fast timings, and stops every
  gateway it made at teardown.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from blupow_gateway.devices import BaseDevice
from blupow_gateway.service import Gateway
from blupow_gateway.settings import DeviceOption, MqttOverride, Settings
from blupow_gateway.simulator import SimulatedModule, create_module, create_simulated, default_mac
from blupow_gateway.simulator.base import SimulatedDevice
from blupow_gateway.simulator.link import SimulatedLink
from blupow_gateway.store import DeviceRecord
from blupow_gateway.supervisor import BrokerConfig
from blupow_gateway.transport import ConnectFailed, DeviceNotFound, LinkLost, ScanResult

from .mosquitto import Mosquitto


@dataclass
class SimWorld:
    """Simulated devices on the air, and what the links did to them."""

    connect_delay: float = 0.02
    latency: float = 0.005
    sims: dict[str, SimulatedDevice | SimulatedModule] = field(default_factory=dict)
    out_of_range: set[str] = field(default_factory=set)
    held: set[str] = field(default_factory=set)
    links: list[SimBleLink] = field(default_factory=list)
    connected: int = 0
    max_connected: int = 0
    connecting: int = 0
    max_connecting: int = 0
    reading: int = 0
    max_reading: int = 0
    connects: dict[str, int] = field(default_factory=dict)
    reads: dict[str, int] = field(default_factory=dict)

    def add(self, kind: str, mac: str | None = None, **options: Any) -> SimulatedDevice:
        sim = create_simulated(kind, mac=mac, **options)
        sim.behaviour.latency = self.latency
        sim.behaviour.chunk_size = 0
        self.sims[sim.mac.upper()] = sim
        return sim

    def add_module(self, spec: str, mac: str | None = None, **options: Any) -> SimulatedModule:
        """A ``hub:``/``chain:`` module (see ``blupow-sim --help``) with the world's latency on every unit."""
        module = create_module(
            spec, mac=mac or self._free_mac(spec.partition(":")[0]), latency=self.latency, chunk_size=0, **options
        )
        self.sims[module.mac] = module
        return module

    def _free_mac(self, label: str) -> str:
        index = 0
        while (mac := default_mac(label, index)) in self.sims:
            index += 1
        return mac

    def link_factory(self, record: DeviceRecord, device: BaseDevice) -> SimBleLink:
        link = SimBleLink(self, record.mac_address.upper())
        self.links.append(link)
        return link

    def drop(self, mac: str) -> None:
        """The peripheral loses every link (walked out of range, power blip)."""
        for link in self.links:
            if link.mac == mac.upper() and link.connected:
                link.lost()

    async def scan(self, seconds: float, adapter: str | None) -> list[ScanResult]:
        from blupow_gateway.devices import recognise

        await asyncio.sleep(min(seconds, 0.05))
        return [
            ScanResult(sim.mac, sim.name, -60, (), tuple(recognise(sim.name, [])))
            for mac, sim in sorted(self.sims.items())
            if mac not in self.out_of_range
        ]


class SimBleLink:
    """A BLE-like link to one simulated device (see the module docstring)."""

    def __init__(self, world: SimWorld, mac: str) -> None:
        self.world = world
        self.mac = mac
        self.rssi: int | None = None
        self._connected = False
        self._inner: SimulatedLink | None = None

    @property
    def connected(self) -> bool:
        return self._connected

    async def connect(self) -> None:
        world = self.world
        world.connecting += 1
        world.max_connecting = max(world.max_connecting, world.connecting)
        try:
            await asyncio.sleep(world.connect_delay)
            sim = world.sims.get(self.mac)
            if sim is None or self.mac in world.out_of_range:
                raise DeviceNotFound(f"{self.mac} not found: it is out of range or powered off")
            if self.mac in world.held:
                raise ConnectFailed(f"could not connect to {self.mac}: held by another central")
            self._inner = SimulatedLink(sim, timeout=0.5)
            self._connected = True
            self.rssi = -60 - random.randint(0, 5)
            world.connected += 1
            world.max_connected = max(world.max_connected, world.connected)
            world.connects[self.mac] = world.connects.get(self.mac, 0) + 1
        finally:
            world.connecting -= 1

    async def disconnect(self) -> None:
        if self._connected:
            self._connected = False
            self.world.connected -= 1

    def lost(self) -> None:
        if self._connected:
            self._connected = False
            self.world.connected -= 1

    async def read_registers(self, slave_id: int, start: int, count: int) -> list[int]:
        if not self._connected or self._inner is None:
            raise LinkLost(f"{self.mac} is not connected")
        if self.mac in self.world.out_of_range:
            self.lost()
            raise LinkLost(f"{self.mac} disconnected during a request")
        world = self.world
        world.reads[self.mac] = world.reads.get(self.mac, 0) + 1
        world.reading += 1
        world.max_reading = max(world.max_reading, world.reading)
        try:
            return await self._inner.read_registers(slave_id, start, count)
        finally:
            world.reading -= 1

    async def write_register(self, slave_id: int, register: int, value: int) -> None:
        if not self._connected or self._inner is None:
            raise LinkLost(f"{self.mac} is not connected")
        await self._inner.write_register(slave_id, register, value)


FAST_SCHEDULER = {"backoff_base": 0.1, "backoff_cap": 0.4, "jitter": 0.1}

GatewayFactory = Callable[..., Awaitable[Gateway]]


def make_settings(broker: Mosquitto, devices: tuple[DeviceOption, ...] = (), **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "log_level": "debug",
        "poll_interval": 0.5,
        "max_connections": 2,
        "keep_connected": True,
        "connect_timeout": 5,
        "request_timeout": 1.0,
        "mqtt": MqttOverride(host=broker.host, port=broker.port, username=broker.username, password=broker.password),
        "devices": devices,
    }
    values.update(overrides)
    return Settings(**values)


def broker_config(broker: Mosquitto) -> BrokerConfig:
    return BrokerConfig(
        host=broker.host,
        port=broker.port,
        username=broker.username,
        password=broker.password,
        tls=False,
        source="options",
    )


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    """Poll ``predicate`` on the event loop (the gateway keeps running meanwhile)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout} s")
        await asyncio.sleep(0.01)


@pytest.fixture
def sim_world() -> SimWorld:
    return SimWorld()


@pytest.fixture
async def gateway_factory(mosquitto: Mosquitto, sim_world: SimWorld, tmp_path: Path) -> AsyncIterator[GatewayFactory]:
    made: list[Gateway] = []

    async def make(
        devices: tuple[DeviceOption, ...] = (),
        *,
        data_dir: Path | None = None,
        world: SimWorld | None = None,
        link_factory: Any = None,
        ble: bool = False,
        scheduler: dict[str, Any] | None = None,
        **settings: Any,
    ) -> Gateway:
        """``ble=True``: the gateway's own BLE links (real bleak; use with ``fake_bluez``)."""
        world = world or sim_world
        gateway = Gateway(
            make_settings(mosquitto, devices, **settings),
            broker_config(mosquitto),
            data_dir or tmp_path / "data",
            link_factory=None if ble else (link_factory or world.link_factory),
            scanner=world.scan,
            ha_delay=(0.05, 0.1),
            devices_interval=0.2,
            heartbeat_path=tmp_path / "heartbeat",
            scheduler_options={**FAST_SCHEDULER, **(scheduler or {})},
        )
        made.append(gateway)
        await gateway.start()
        await wait_until(lambda: gateway.mqtt.connected, 10, "gateway connected to the broker")
        return gateway

    try:
        yield make
    finally:
        for gateway in made:
            with contextlib.suppress(Exception):
                await gateway.stop()


# --- the gateway as a real process ----------------------------------------------------------------

GATEWAY_BIN = Path(sys.executable).with_name("blupow-gateway")


class GatewayProcess:
    """``blupow-gateway run`` as a subprocess with its own options file and data directory."""

    def __init__(self, workdir: Path, options: dict[str, Any], data_dir: Path, env: dict[str, str]) -> None:
        self.workdir = workdir
        self.options_path = workdir / "options.json"
        self.options_path.write_text(json.dumps(options))
        self.data_dir = data_dir
        self.log_path = workdir / f"gateway-{len(list(workdir.glob('gateway-*.log')))}.log"
        self.heartbeat = workdir / "heartbeat"
        full_env = dict(env)
        full_env.update({"BLUPOW_HEARTBEAT_FILE": str(self.heartbeat), "BLUPOW_HA_BIRTH_DELAY": "0.2,0.3"})
        command = [
            str(GATEWAY_BIN),
            "run",
            "--options",
            str(self.options_path),
            "--data-dir",
            str(data_dir),
        ]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=full_env, start_new_session=True
            )
        _LIVE_GATEWAYS.add(self)

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")
        return ""

    def wait_log(self, text: str, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log():
            if not self.running:
                raise RuntimeError(f"gateway exited ({self.process.returncode}) before {text!r}:\n{self.log()[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{text!r} not logged within {timeout} s:\n{self.log()[-3000:]}")
            time.sleep(0.05)

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.process.pid, sig)

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout)

    def kill(self) -> None:
        """SIGKILL the whole process group (the gateway and anything it started)."""
        _LIVE_GATEWAYS.discard(self)
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)


_LIVE_GATEWAYS: set[GatewayProcess] = set()


@atexit.register
def _kill_live_gateways() -> None:
    for process in list(_LIVE_GATEWAYS):
        process.kill()


def gateway_options(broker: Mosquitto, **extra: Any) -> dict[str, Any]:
    """An options file for a subprocess gateway talking to the private broker."""
    return {
        "log_level": "debug",
        "poll_interval": 5,
        "connect_timeout": 5,
        "request_timeout": 2,
        "mqtt": broker.options(),
        **extra,
    }


@pytest.fixture
def gateway_process(tmp_path: Path) -> Iterator[Callable[..., GatewayProcess]]:
    """Factory: ``gateway_process(options, env=...)``; every process is killed at teardown."""
    started: list[GatewayProcess] = []

    def start(
        options: dict[str, Any], *, env: dict[str, str] | None = None, data_dir: Path | None = None
    ) -> GatewayProcess:
        if env is None:  # never inherit a real Supervisor token from the machine running the tests
            env = {k: v for k, v in os.environ.items() if k not in ("SUPERVISOR_TOKEN", "HASSIO_TOKEN")}
        process = GatewayProcess(tmp_path, options, data_dir or tmp_path / "data", dict(env))
        started.append(process)
        return process

    try:
        yield start
    finally:
        for process in started:
            process.kill()

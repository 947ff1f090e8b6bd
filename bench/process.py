"""Figures 2, 3 and 4 on the gateway as users run it: ``blupow-gateway run`` in its own process.

The gateway reaches its devices with real bleak over the fake BlueZ of
``blupow-sim`` (a private dbus-daemon, simulated Renogy modules answering
Modbus over GATT notifications), and talks to a private Mosquitto with a
password. Its CPU time and memory are read from ``/proc/<pid>`` and include
everything: event loop, paho's thread, bleak and D-Bus message handling.

Polls are started with the ``poll_now`` command right after the previous cycle
ended (``<base>/<gw>/health`` is republished at the end of every cycle), so a
run does not wait for ``poll_interval``. The commands are part of the
measured CPU (one per cycle).
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.plugins.fake_bluez import SimProcess
from tests.plugins.gateway import GatewayProcess
from tests.plugins.mosquitto import Mosquitto, MqttRecorder

from .common import Figure, at_least, at_most, info, percentile, proc_cpu_seconds, proc_memory_kib

CMD = "blupow/gateway/command"
HEALTH = "blupow/gateway/health"
STATE = "blupow/gateway/state"
MIX = ("controller", "dcc", "battery", "inverter")
TYPES = {
    "controller": ("renogy_charge_controller", None),
    "dcc": ("renogy_dcc", "standard"),
    "battery": ("renogy_battery", "legacy"),
    "inverter": ("renogy_inverter", None),
}


def mac_id(mac: str) -> str:
    return mac.replace(":", "")


@dataclass
class Stack:
    """A simulator, a gateway process and a client on one private broker."""

    broker: Mosquitto
    sim: SimProcess
    gateway: GatewayProcess
    client: MqttRecorder
    workdir: Path

    @property
    def pid(self) -> int:
        return self.gateway.process.pid

    def polls(self) -> tuple[int, int]:
        """(successes, failures) over every device, from the gateway's own statistics."""
        devices = self.client.request(CMD, {"command": "list_devices"}, 10)["data"]["devices"]
        return sum(d["stats"]["successes"] for d in devices), sum(d["stats"]["failures"] for d in devices)

    def cycle(self, timeout: float = 60.0) -> None:
        """One poll cycle of every device, started now; returns when the slowest one finished."""
        since = self.client.mark()
        answer = self.client.request(CMD, {"command": "poll_now"}, 10)
        if answer["status"] != "ok":
            raise RuntimeError(f"poll_now: {answer}")
        self.client.wait_topic(HEALTH, timeout, since, lambda m: bool(m.payload))


def sim_config(path: Path, kinds: list[str], latency: float) -> Path:
    entries = [{"kind": kind, "latency": latency} for kind in kinds]
    path.write_text(json.dumps({"devices": entries}))
    return path


@contextlib.contextmanager
def stack(
    broker: Mosquitto,
    kinds: list[str],
    *,
    configured: bool = True,
    max_connections: int = 2,
    keep_connected: bool = True,
    latency: float = 0.005,
    log_level: str = "info",
    nodelay: bool = True,
) -> Iterator[Stack]:
    """Simulated ``kinds`` behind a fake BlueZ, a gateway process (configured with all of them
    unless ``configured`` is false) and a client; ``nodelay``: the client sets TCP_NODELAY."""
    workdir = Path(tempfile.mkdtemp(prefix="blupow-bench-"))
    sim = SimProcess(["--config", str(sim_config(workdir / "sim.json", kinds, latency))])
    gateway: GatewayProcess | None = None
    client: MqttRecorder | None = None
    try:
        devices = []
        if configured:
            for device in sim.devices:
                kind = next(k for k, (t, _v) in TYPES.items() if t == device.type_name)
                entry = {"mac_address": device.mac, "type": device.type_name}
                if TYPES[kind][1]:
                    entry["variant"] = TYPES[kind][1]
                devices.append(entry)
        options = {
            "log_level": log_level,
            "poll_interval": 3600,  # cycles are started by poll_now
            "max_connections": max_connections,
            "keep_connected": keep_connected,
            "connect_timeout": 10,
            "request_timeout": 2,
            "mqtt": broker.options(),
            "devices": devices,
        }
        client = MqttRecorder(broker, (STATE, HEALTH, "blupow/gateway/response", "blupow/+/state")).connect()
        sock = client.client.socket()
        if nodelay and sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        since = client.mark()
        gateway = GatewayProcess(workdir, options, workdir / "data", sim.env())
        client.wait_topic(STATE, 30, since, lambda m: m.json() == {"state": "online"})
        yield Stack(broker, sim, gateway, client, workdir)
    finally:
        if gateway is not None:
            gateway.kill()
        if client is not None:
            client.close()
        sim.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def wait_first_polls(s: Stack, count: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while s.polls()[0] < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"not every device was polled within {timeout:g} s:\n{s.gateway.log()[-2000:]}")
        time.sleep(0.1)


@dataclass
class Run:
    polls: int
    failures: int
    cpu: float
    wall: float
    rss_warm_kib: int
    rss_end_kib: int
    peak_kib: int
    cycles: int

    @property
    def cpu_per_poll_ms(self) -> float:
        return self.cpu / self.polls * 1000


def poll_run(s: Stack, devices: int, polls: int, warmup_polls: int) -> Run:
    """Warm up with ``warmup_polls`` polls, then measure CPU and memory over at least ``polls`` more.

    Inside the measured window the only commands are the ``poll_now`` that start
    each cycle; the poll count comes from the gateway's statistics before and after.
    """
    wait_first_polls(s, devices)
    while s.polls()[0] < warmup_polls:
        s.cycle()
    ok0, failed0 = s.polls()
    cpu0, wall0 = proc_cpu_seconds(s.pid), time.monotonic()
    rss_warm = proc_memory_kib(s.pid)["VmRSS"]
    for _ in range(math.ceil(polls / devices)):
        s.cycle()
    cpu, wall = proc_cpu_seconds(s.pid) - cpu0, time.monotonic() - wall0
    memory = proc_memory_kib(s.pid)
    ok, failed = s.polls()
    return Run(
        ok - ok0, failed - failed0, cpu, wall, rss_warm, memory["VmRSS"], memory["VmHWM"], math.ceil(polls / devices)
    )


def command_cpu(s: Stack, count: int) -> float:
    """CPU seconds the gateway spends on one ``poll_now`` request that polls nothing.

    ``poll_now`` for a MAC that is not configured goes through the same parsing,
    schema check and response as the benchmark's ``poll_now`` and is answered
    with an error, so no poll is started: what it costs is the harness's share
    of the measured CPU, subtracted per cycle.
    """
    cpu0 = proc_cpu_seconds(s.pid)
    for _ in range(count):
        answer = s.client.request(CMD, {"command": "poll_now", "mac_address": "00:00:00:00:00:01"}, 10)
        if answer["status"] != "error":
            raise RuntimeError(f"expected an error for an unknown device: {answer}")
    return (proc_cpu_seconds(s.pid) - cpu0) / count


# --- the original design: one python3 process per poll ------------------------------------------------

# The original design: for every poll a fresh python3 process imports bleak, finds the module,
# connects, subscribes, sends one Modbus read, waits for the notifications, decodes and prints.
POLL_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, sys
    from bleak import BleakClient, BleakScanner
    from blupow_gateway import modbus
    from blupow_gateway.devices.renogy_charge_controller import RenogyChargeController

    async def poll(address):
        driver = RenogyChargeController()
        gatt = driver.gatt
        device = await BleakScanner.find_device_by_address(address, timeout=10)
        if device is None:
            sys.exit(f"{address} not found")
        request = modbus.Request.read(driver.modbus_id, 0x0100, 34)
        assembler = modbus.ResponseAssembler(request)
        reply = asyncio.get_running_loop().create_future()

        def on_notify(_char, data):
            frame = assembler.feed(bytes(data))
            if frame is not None and not reply.done():
                reply.set_result(frame)

        async with BleakClient(device) as client:
            write = client.services.get_service(gatt.write_service).get_characteristic(gatt.write_char)
            notify = client.services.get_service(gatt.notify_service).get_characteristic(gatt.notify_char)
            await client.start_notify(notify, on_notify)
            await client.write_gatt_char(write, request.frame, response=False)
            frame = await asyncio.wait_for(reply, 5)
        words = modbus.parse_response(frame, request)
        print(json.dumps(driver.decode({0x0100 + i: w for i, w in enumerate(words)})))

    asyncio.run(poll(sys.argv[1]))
    """
)

# The same process without its BLE I/O: import bleak, decode one real reply, print. A lower bound.
DECODE_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import bleak
    from blupow_gateway import modbus
    from blupow_gateway.devices.renogy_charge_controller import RenogyChargeController

    frame = bytes.fromhex(sys.argv[1])
    request = modbus.Request.read(255, 0x0100, 34)
    words = modbus.parse_response(frame, request)
    values = RenogyChargeController().decode({0x0100 + i: w for i, w in enumerate(words)})
    print(json.dumps(values))
    """
)


def controller_reply() -> str:
    """A real reply frame of a simulated Rover to the 0x0100 x 34 read (what one poll decodes)."""
    from blupow_gateway import modbus
    from blupow_gateway.simulator import create_simulated

    sim = create_simulated("controller", frozen=True)
    reply = sim.handle(modbus.Request.read(255, 0x0100, 34).frame)
    assert reply is not None
    return reply.hex()


def children_cpu(script: str, arg: str, runs: int, env: dict[str, str] | None = None) -> float:
    """CPU seconds per run of ``python3 -c script arg``, from the children's rusage."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    for _ in range(runs):
        done = subprocess.run(
            [sys.executable, "-c", script, arg], capture_output=True, check=False, timeout=60, env=env
        )
        if done.returncode != 0 or b"battery_voltage" not in done.stdout:
            raise RuntimeError(f"baseline poll failed: {done.stderr.decode(errors='replace')[-1000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu / runs


def process_per_poll_cpu(runs: int) -> tuple[float, float]:
    """(with BLE I/O, without) CPU seconds of one process-per-poll poll of a simulated Rover.

    The polling process talks to its own ``blupow-sim`` (fake BlueZ on a private D-Bus), so
    it does the same D-Bus work per poll as the gateway plus what a fresh process adds.
    """
    workdir = Path(tempfile.mkdtemp(prefix="blupow-bench-baseline-"))
    sim = SimProcess(["--config", str(sim_config(workdir / "sim.json", ["controller"], 0.005))])
    try:
        mac = sim.device("renogy_charge_controller").mac
        with_io = children_cpu(POLL_SCRIPT, mac, runs, env=sim.env())
    finally:
        sim.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return with_io, children_cpu(DECODE_SCRIPT, controller_reply(), runs)


# --- figures ------------------------------------------------------------------------------------------


def cost_figures(broker: Mosquitto, quick: bool, inproc_ms: float | None) -> list[Figure]:
    """Figure 2: CPU per poll of the gateway process (links kept open) against a process per poll."""
    kinds = [*MIX, "controller"]  # five devices: the most links max_connections allows
    polls = 100 if quick else 500
    with stack(broker, kinds, max_connections=len(kinds), keep_connected=True) as s:
        run = poll_run(s, len(kinds), polls, warmup_polls=3 * len(kinds))
        per_command = command_cpu(s, 50 if quick else 200)
    if run.failures:
        raise RuntimeError(f"{run.failures} polls failed in the cost benchmark")
    gateway_ms = (run.cpu - per_command * run.cycles) / run.polls * 1000
    baseline_s, decode_only_s = process_per_poll_cpu(5 if quick else 20)
    baseline, decode_only = baseline_s * 1000, decode_only_s * 1000
    figures = [
        at_most(
            "cost: gateway process CPU per poll (bleak + D-Bus, links kept open)",
            round(gateway_ms, 3),
            "ms",
            5,
            f"{run.polls} polls of {len(kinds)} devices in {run.wall:.1f} s; "
            f"{run.cpu_per_poll_ms:.3f} ms before subtracting the harness's poll_now ({per_command * 1000:.2f} ms)",
        ),
        info(
            "cost: one python3 process per poll (import bleak, scan, connect, read, decode)",
            round(baseline, 1),
            "ms",
            "the original design, over the same fake BlueZ",
        ),
        at_least(
            "cost: process per poll / gateway process per poll (both with BLE I/O)",
            round(baseline / gateway_ms, 1),
            "x",
            50,
        ),
        info(
            "cost: one python3 process per poll without its BLE I/O (import bleak + decode)",
            round(decode_only, 1),
            "ms",
        ),
        info(
            "cost: that / gateway process per poll (only the gateway pays for BLE I/O)",
            round(decode_only / gateway_ms, 1),
            "x",
            "a lower bound: the baseline is stripped of the work the gateway still does",
        ),
    ]
    if inproc_ms is not None:
        figures += [
            info("cost: gateway CPU per poll, in-process with in-memory links", round(inproc_ms, 3), "ms"),
            at_least(
                "cost: process per poll / gateway per poll, both without BLE I/O",
                round(decode_only / inproc_ms, 1),
                "x",
                50,
            ),
        ]
    return figures


def memory_figures(broker: Mosquitto, quick: bool) -> list[Figure]:
    """Figure 3: 10 devices, two connection slots (so every poll connects again, the churn a leak would
    show in), a warm-up, then 1,000 polls with the resident size sampled along the way.

    The resident size grows for the first ~1,200 polls of such a run (Python's allocator and the
    libraries' caches settling: about 1.8 MB) and is flat after that, so the warm-up is 1,500 polls.
    The inverter is left out here: its 1 s start-up pause after every connect would make this run
    four times longer without touching any other code path (figure 2 polls it).
    """
    kinds = [("controller", "dcc", "battery")[i % 3] for i in range(10)]
    warmup, polls = (150, 100) if quick else (1500, 1000)
    samples: list[tuple[int, float]] = []
    with stack(broker, kinds, max_connections=2) as s:
        wait_first_polls(s, len(kinds))
        while s.polls()[0] < warmup:
            s.cycle()
        ok0, failed0 = s.polls()
        rss_warm = proc_memory_kib(s.pid)["VmRSS"]
        cpu0, wall0 = proc_cpu_seconds(s.pid), time.monotonic()
        cycles = math.ceil(polls / len(kinds))
        for cycle in range(1, cycles + 1):
            s.cycle()
            if cycle % max(1, cycles // 4) == 0:
                samples.append((cycle * len(kinds), proc_memory_kib(s.pid)["VmRSS"] / 1024))
        cpu, wall = proc_cpu_seconds(s.pid) - cpu0, time.monotonic() - wall0
        memory = proc_memory_kib(s.pid)
        ok, failed = s.polls()
    if failed - failed0:
        raise RuntimeError(f"{failed - failed0} polls failed in the memory benchmark")
    done = ok - ok0
    growth = (memory["VmRSS"] - rss_warm) / 1024
    curve = ", ".join(f"{n}: {mb:.1f}" for n, mb in samples)
    return [
        at_most(
            f"memory: peak RSS, 10 devices, {warmup + done} polls",
            round(memory["VmHWM"] / 1024, 1),
            "MB",
            60,
            "VmHWM of the gateway process",
        ),
        info(f"memory: RSS after {warmup} warm-up polls", round(rss_warm / 1024, 1), "MB", f"then MB at polls {curve}"),
        at_most(f"memory: RSS growth over the {done} polls after warm-up", round(growth, 2), "MB", 1),
        info(
            "memory run: CPU per poll (every poll connects: scan + connect + GATT)",
            round(cpu / done * 1000, 3),
            "ms",
            f"{done} polls in {wall:.1f} s",
        ),
    ]


def _latency_runs(broker: Mosquitto, runs: int, nodelay_client: bool) -> tuple[list[float], list[float]]:
    """``runs`` rounds of add_device (timed to its response and to the first state) and remove_device."""
    answered: list[float] = []
    first_state: list[float] = []
    # four simulated Rovers answering like real ones (80 ms per request); none configured at start
    with stack(broker, ["controller"] * 4, configured=False, latency=0.08, nodelay=nodelay_client) as s:
        macs = [d.mac for d in s.sim.devices]
        for i in range(runs):
            mac = macs[i % len(macs)]
            since = s.client.mark()
            started = time.monotonic()
            response = s.client.request(
                CMD, {"command": "add_device", "mac_address": mac, "type": "renogy_charge_controller"}, 10
            )
            answered.append((time.monotonic() - started) * 1000)
            if response["status"] != "ok":
                raise RuntimeError(f"add_device: {response}")
            state = s.client.wait_topic(f"blupow/{mac_id(mac)}/state", 30, since, lambda m: bool(m.payload))
            first_state.append((state.at - started) * 1000)
            removed = s.client.request(CMD, {"command": "remove_device", "mac_address": mac}, 10)
            if removed["status"] != "ok":
                raise RuntimeError(f"remove_device: {removed}")
    return answered, first_state


def latency_figures(nodelay_broker: Mosquitto, default_broker: Mosquitto, quick: bool) -> list[Figure]:
    """Figure 4: add_device -> response and -> first state on MQTT.

    The main runs use a broker with ``set_tcp_nodelay true`` and a client with
    TCP_NODELAY, so the numbers are the gateway's: with Nagle's algorithm on either
    side of the loopback connection, delayed ACKs add about 40 ms per direction
    whatever the gateway does (the gateway sets TCP_NODELAY on its own socket).
    A shorter series with Mosquitto's and paho's defaults shows that effect.
    """
    runs = 20 if quick else 100
    answered, first_state = _latency_runs(nodelay_broker, runs, nodelay_client=True)
    default_answered, _ = _latency_runs(default_broker, 10 if quick else 20, nodelay_client=False)
    note = f"{runs} runs; real gateway process over bleak/fake BlueZ; loopback Mosquitto, TCP_NODELAY"
    return [
        at_most("latency: add_device -> response p50", round(percentile(answered, 50), 1), "ms", 25, note),
        at_most("latency: add_device -> response p95", round(percentile(answered, 95), 1), "ms", 50),
        info(
            "latency: add_device -> first state p50",
            round(percentile(first_state, 50)),
            "ms",
            "BLE connect + first full read: 5 requests x (80 ms device + 50 ms pacing)",
        ),
        info("latency: add_device -> first state p95", round(percentile(first_state, 95)), "ms"),
        info(
            "latency: add_device -> response p50, Mosquitto/paho defaults (Nagle on)",
            round(percentile(default_answered, 50), 1),
            "ms",
            f"{len(default_answered)} runs; delayed ACKs of the client and broker, not the gateway",
        ),
    ]


def _storm(broker: Mosquitto, commands: int) -> tuple[list[float], list[float]]:
    """Answer times (ms) of ``commands`` mixed commands sent at random moments while four devices
    poll, and the time one device's poll takes in the same stack (the baseline)."""
    rng = random.Random(14)  # noqa: S311 - a reproducible storm, not security
    with stack(broker, ["controller"] * 4, configured=False, latency=0.08) as s:
        macs = [d.mac for d in s.sim.devices]
        for mac in macs:
            s.client.request(CMD, {"command": "add_device", "mac_address": mac, "type": "renogy_charge_controller"}, 10)
        wait_first_polls(s, len(macs))
        poll_ms: list[float] = []
        for mac in macs:  # the baseline: poll_now of one idle device -> its state
            since = s.client.mark()
            started = time.monotonic()
            s.client.request(CMD, {"command": "poll_now", "mac_address": mac}, 10)
            state = s.client.wait_topic(f"blupow/{mac_id(mac)}/state", 30, since, lambda m: bool(m.payload))
            poll_ms.append((state.at - started) * 1000)
        sent: dict[str, float] = {}
        since = s.client.mark()
        for i in range(commands):
            mac = rng.choice(macs)
            kind = rng.choices(["add", "remove", "update", "poll", "list", "all"], [3, 3, 2, 3, 1, 1])[0]
            body: dict[str, Any] = {
                "add": {"command": "add_device", "mac_address": mac, "type": "renogy_charge_controller"},
                "remove": {"command": "remove_device", "mac_address": mac},
                "update": {"command": "update_device", "mac_address": mac, "name": f"Rover {i}"},
                "poll": {"command": "poll_now", "mac_address": mac},
                "list": {"command": "list_devices"},
                "all": {"command": "poll_now"},
            }[kind]
            transaction = f"storm-{i}"
            sent[transaction] = time.monotonic()
            s.client.publish(CMD, {**body, "transaction": transaction})
            time.sleep(rng.uniform(0, 0.04))
        deadline = time.monotonic() + 60
        answered: dict[str, float] = {}
        while len(answered) < len(sent):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{len(sent) - len(answered)} of {len(sent)} commands never answered")
            for message in s.client.on("blupow/gateway/response", since):
                transaction = message.json().get("transaction")
                if transaction in sent and transaction not in answered:
                    answered[transaction] = (message.at - sent[transaction]) * 1000
            time.sleep(0.05)
    return list(answered.values()), poll_ms


def storm_figures(broker: Mosquitto, quick: bool) -> list[Figure]:
    """Figure 7: command answer times under a storm of mixed commands while devices poll.

    The baseline is one device's poll in the same run: a command that waited for a poll
    (as update_device did) or behind another device's command would show up as a maximum
    at or above it.
    """
    count = 100 if quick else 300
    answers, polls = _storm(broker, count)
    poll = percentile(polls, 50)
    worst = max(answers)
    note = f"{count} commands (add, remove, update, poll_now, list) at 0-40 ms gaps; 4 Rovers at 80 ms per request"
    return [
        info("storm: command answer p50", round(percentile(answers, 50), 1), "ms", note),
        info("storm: command answer p95", round(percentile(answers, 95), 1), "ms"),
        info("storm: command answer max", round(worst, 1), "ms"),
        info("storm: one device's poll (baseline, same run)", round(poll), "ms"),
        at_most("storm: max answer / one device's poll", round(worst / poll, 3), "x", 1.0),
    ]


__all__ = ["cost_figures", "latency_figures", "memory_figures", "process_per_poll_cpu", "storm_figures"]

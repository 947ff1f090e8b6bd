"""The whole BluPow system as separate real processes, shared by ``scripts/develop`` and the e2e tests.

Parts, in start order (each its own process group, stopped in reverse):

1. Mosquitto on a free loopback port with username/password auth (``tests/plugins/mosquitto.py``),
   with two users as the Mosquitto add-on has them: ``addons`` (handed to the gateway by the
   Supervisor) and ``homeassistant`` (entered in Home Assistant's MQTT config flow).
2. ``blupow-sim``: simulated devices behind a fake BlueZ on a private D-Bus, with its control socket.
3. A tiny fake Supervisor (HTTP on loopback) answering ``GET /services/mqtt`` with the broker's
   address and the ``addons`` credentials, checked against the add-on token: the gateway runs the
   add-on code path (``mqtt.host`` empty in its options).
4. The gateway: ``blupow-gateway run --options options.json --data-dir data``.
5. Home Assistant core 2024.3.3 from ``.venv/ha`` with a fresh config dir, offline (pip disabled).

:meth:`Stack.configure_home_assistant` then does what a user does in the UI, through Home
Assistant's own HTTP/WebSocket APIs: onboarding (creates the user), the MQTT config flow, the
BluPow config flow (the one MQTT discovery started) and, per device, the BluPow options flow.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import select
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.plugins.mosquitto import MOSQUITTO, MOSQUITTO_PASSWD, Mosquitto, MqttRecorder, pbkdf2_line

from .ha_api import HAError, HomeAssistantAPI
from .procs import SETPRIV, FatalStackError, Process, StackError, free_port, port_open, wait_until

ROOT = Path(__file__).resolve().parents[2]
GATEWAY_BIN = ROOT / ".venv" / "gateway" / "bin"
# The Home Assistant the stack runs: .venv/ha (2024.3.3, the oldest supported) unless
# BLUPOW_E2E_HA names another venv under .venv (ha-2025: 2025.4.4, what users run today).
HA_VENV = os.environ.get("BLUPOW_E2E_HA") or "ha"
HA_PYTHON = ROOT / ".venv" / HA_VENV / "bin" / "python"
CUSTOM_COMPONENT = ROOT / "custom_components" / "blupow"
MOVED_CLOCK = Path(__file__).parent / "moved_clock" / "moved_clock.c"

BASE_TOPIC = "blupow"
GATEWAY_ID = "gateway"
HA_USER = "homeassistant"
INTERNET_ONLY = ("met", "radio_browser")  # integrations onboarding adds that need the internet
INTERNET_ONLY_WAIT = 15.0  # s for onboarding to have added them
ALL_KINDS = ("controller", "dcc", "battery", "inverter")
# What the demo calls each simulated family (the device name in Home Assistant).
DEVICE_NAMES = {
    "renogy_charge_controller": "Rover 40A",
    "renogy_dcc": "DC-DC charger",
    "renogy_battery": "Lithium battery",
    "renogy_inverter": "Inverter",
}

BROKER_START_TIMEOUT = 10.0
SIM_START_TIMEOUT = 20.0
GATEWAY_START_TIMEOUT = 30.0
HA_START_TIMEOUT = 180.0  # first start of a fresh config: creates the database, loads the frontend
MQTT_SETUP_TIMEOUT = 30.0
DISCOVERY_TIMEOUT = 30.0
PROBE_FLOW_TIMEOUT = 70.0  # the integration waits up to 60 s for probe_module (const.PROBE_TIMEOUT)


@dataclass(frozen=True)
class SimDevice:
    """One simulated device as ``blupow-sim`` announces it."""

    mac: str
    type: str
    name: str  # the advertised name

    @property
    def topic_id(self) -> str:
        return self.mac.replace(":", "").upper()


@dataclass(frozen=True)
class SimModule:
    """A module with several units (``hub:`` / ``chain:``) as ``blupow-sim`` announces it."""

    mac: str
    name: str
    units: dict[int, str]  # Modbus id -> gateway type

    @property
    def topic_id(self) -> str:
        return self.mac.replace(":", "").upper()


@dataclass
class StackOptions:
    state_dir: Path
    ha_port: int = 0  # 0: a free port
    poll_interval: int = 5
    connect_timeout: int = 5  # the gateway's minimum: a device out of range is declared offline sooner
    frozen: bool = True  # simulated time stands still: every value stays constant (tests)
    kinds: tuple[str, ...] = ALL_KINDS
    hub_batteries: tuple[int, ...] = (48, 49)  # a battery bank behind one Communication Hub (none: no hub)
    hub_controller: int | None = 97  # and a charge controller on the same hub (None: batteries only)
    gateway_log_level: str = "debug"
    ha_log_level: str = "info"
    username: str = "blupow"
    password: str = field(default_factory=lambda: secrets.token_urlsafe(12))
    display_name: str = "BluPow Demo"
    ha_birth_delay: str = "0.5,1.5"  # seconds before the gateway republishes on HA's birth message
    # Home Assistant's clock moved ahead (moved_clock.c) so that an hour ends this many seconds after
    # the stack is created: its Energy dashboard draws completed hours only. None: the machine's clock.
    ha_hour_ends_in: float | None = None


# ================================================================================ broker


class Broker(Mosquitto):
    """The test broker (tests/plugins/mosquitto.py), started with a parent-death signal as well."""

    def start(self) -> None:
        if self.running:
            return
        argv = [MOSQUITTO, "-c", str(self.config_path)]
        if SETPRIV:
            argv = [SETPRIV, "--pdeathsig", "TERM", "--", *argv]
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        try:
            wait_until(self._listening, BROKER_START_TIMEOUT, f"mosquitto on port {self.port}", 0.02)
        except StackError:
            self.stop()
            raise
        self.starts += 1

    def _listening(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise FatalStackError(f"mosquitto exited with {self.process.returncode}: {self.log()}")
        return port_open(self.host, self.port)


# ================================================================================ fake Supervisor


class FakeSupervisor:
    """``GET /services/mqtt`` as the Supervisor answers it to an add-on with ``services: mqtt:need``."""

    def __init__(self, service: Mapping[str, Any]) -> None:
        self.token = secrets.token_hex(32)
        self.service = dict(service)
        self.requests = 0
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.1,), daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def env(self) -> dict[str, str]:
        """What the add-on container gets from the Supervisor."""
        return {"SUPERVISOR_TOKEN": self.token, "BLUPOW_SUPERVISOR_URL": self.url}

    def _answer(self, method: str, path: str, authorization: str | None) -> tuple[int, dict[str, Any]]:
        self.requests += 1
        if authorization != f"Bearer {self.token}":
            return 401, {"result": "error", "message": "Unauthorized"}
        if method != "GET" or path.rstrip("/") != "/services/mqtt":
            return 404, {"result": "error", "message": "Not found"}
        return 200, {"result": "ok", "data": dict(self.service)}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                status, body = fake._answer("GET", self.path, self.headers.get("Authorization"))
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                return

        return Handler


# ================================================================================ simulator


class Simulator:
    """``blupow-sim`` with a control socket; exits by itself when our end of its stdin closes."""

    def __init__(
        self,
        state_dir: Path,
        kinds: tuple[str, ...],
        frozen: bool,
        hub: tuple[int, ...] = (),
        hub_controller: int | None = None,
    ) -> None:
        self.config_path = state_dir / "sim.yaml"
        self.socket_path = state_dir / "sim.sock"
        options = {"frozen": True} if frozen else {}
        entries: list[dict[str, Any]] = [{"kind": kind, "options": options} for kind in kinds]
        if hub:
            units = [{"kind": "battery", "modbus_id": modbus_id} for modbus_id in hub]
            if hub_controller is not None:
                units.append({"kind": "controller", "modbus_id": hub_controller})
            entries.append({"kind": "hub", "units": units, "options": options})
        # JSON is YAML: no YAML writer needed. 0.1 s between advertisements keeps D-Bus traffic low.
        self.config_path.write_text(json.dumps({"adv_interval": 0.1, "devices": entries}, indent=1))
        self.process = Process(
            "blupow-sim",
            [
                str(GATEWAY_BIN / "blupow-sim"),
                "--config",
                str(self.config_path),
                "--control-socket",
                str(self.socket_path),
                "--watch-stdin",
            ],
            state_dir / "logs" / "sim.log",
            stdin_pipe=True,
            stdout_pipe=True,
            stop_timeout=10,
        )
        self.bus_address = ""
        self.devices: list[SimDevice] = []
        self.modules: list[SimModule] = []

    def start(self) -> None:
        self.process.start()
        popen = self.process.popen
        assert popen is not None and popen.stdout is not None
        deadline = time.monotonic() + SIM_START_TIMEOUT
        buffer = b""
        while b"READY\n" not in buffer:
            remaining = deadline - time.monotonic()
            readable = select.select([popen.stdout], [], [], max(0.0, remaining))[0] if remaining > 0 else []
            chunk = os.read(popen.stdout.fileno(), 4096) if readable else b""
            buffer += chunk
            if readable and not chunk:  # end of output: it exited
                with contextlib.suppress(subprocess.TimeoutExpired):
                    popen.wait(2)
                failure = self.process.exited_early() or self.process.tail()
                self.process.stop()
                raise StackError(f"blupow-sim exited before READY: {failure}")
            if not readable:
                self.process.stop()
                raise StackError(f"blupow-sim did not print READY within {SIM_START_TIMEOUT:g} s: {buffer!r}")
        for line in buffer.decode().splitlines():
            if line.startswith("DBUS_SYSTEM_BUS_ADDRESS="):
                self.bus_address = line.split("=", 1)[1]
            elif line.split(" ", 2)[1:2] == ["module"]:  # MAC module NAME 48=renogy_battery/legacy,...
                mac, _, rest = line.split(" ", 2)
                name, units = rest.rsplit(" ", 1)
                types = {int(i): t.split("/")[0].split("+")[0] for i, t in (u.split("=") for u in units.split(","))}
                self.modules.append(SimModule(mac, name, types))
            elif line != "READY":
                mac, type_name, name = line.split(" ", 2)
                self.devices.append(SimDevice(mac, type_name, name))

    def stop(self) -> None:
        self.process.stop()

    def control(self, op: str, timeout: float = 5.0, **request: Any) -> dict[str, Any]:
        """One request of the JSON-lines control protocol; StackError when the simulator refuses it."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(self.socket_path))
            sock.sendall(json.dumps({"op": op, **request}).encode() + b"\n")
            with sock.makefile("rb") as reader:
                line = reader.readline()
        reply: dict[str, Any] = json.loads(line)
        if not reply.get("ok"):
            raise StackError(f"simulator refused {op}: {reply.get('error')}")
        return reply

    def device(self, type_name: str) -> SimDevice:
        for device in self.devices:
            if device.type == type_name:
                return device
        raise KeyError(f"no simulated {type_name}")


# ================================================================================ the stack


class Stack:
    """Start, drive and stop every part; :meth:`stop` is safe to call at any point, even twice."""

    def __init__(self, options: StackOptions) -> None:
        self.options = options
        self.state_dir = options.state_dir
        self.logs_dir = self.state_dir / "logs"
        self.ha_config = self.state_dir / "ha-config"
        self.ha_port = options.ha_port or free_port()
        self.ha_url = f"http://127.0.0.1:{self.ha_port}"
        self.api = HomeAssistantAPI(self.ha_url)
        # seconds Home Assistant's clock is ahead, and when (on it) the chosen hour ends
        self.ha_ahead = 0.0
        self.hour_ends: float | None = None
        if options.ha_hour_ends_in is not None:
            ends = time.time() + options.ha_hour_ends_in
            self.ha_ahead = (3600 - ends % 3600) % 3600 or 3600.0
            self.hour_ends = ends + self.ha_ahead
        self.broker: Broker | None = None
        self.ha_mqtt_password = secrets.token_urlsafe(16)
        self.sim: Simulator | None = None
        self.supervisor: FakeSupervisor | None = None
        self.gateway: Process | None = None
        self.home_assistant: Process | None = None
        self.monitor: MqttRecorder | None = None
        self.blupow_entry_id = ""
        self.timings: dict[str, float] = {}

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Every process up; Home Assistant answering but not yet configured."""
        for path in (MOSQUITTO, MOSQUITTO_PASSWD, str(HA_PYTHON), str(GATEWAY_BIN / "blupow-gateway")):
            if not Path(path).exists():
                raise StackError(f"{path} is missing (run scripts/setup)")
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._timed("broker", self._start_broker)
            self._timed("simulator", self._start_simulator)
            self._timed("gateway", self._start_gateway)
            self._timed("home_assistant", self._start_home_assistant)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop everything in reverse order; never raises, leaves no process behind."""
        for name, stop in (
            ("home_assistant", self._stop_home_assistant),
            ("gateway", self._stop_gateway),
            ("monitor", self._stop_monitor),
            ("simulator", self._stop_simulator),
            ("supervisor", self._stop_supervisor),
            ("broker", self._stop_broker),
        ):
            try:
                stop()
            except Exception as exc:
                print(f"stack: stopping {name} failed: {exc}")

    def __enter__(self) -> Stack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _timed(self, name: str, step: Any) -> Any:
        started = time.monotonic()
        result = step()
        self.timings[name] = time.monotonic() - started
        return result

    # -- broker -------------------------------------------------------------------------------

    def _start_broker(self) -> None:
        workdir = self.state_dir / "mosquitto"
        workdir.mkdir(parents=True, exist_ok=True)
        # The Mosquitto add-on's internal users: "addons" for add-ons, "homeassistant" for Core.
        self.broker = Broker(workdir, username="addons", password=secrets.token_urlsafe(24))
        _add_broker_user(self.broker, HA_USER, self.ha_mqtt_password)
        self.broker.start()
        self.monitor = MqttRecorder(self.broker, (f"{BASE_TOPIC}/#",), client_id="e2e-monitor").connect()

    def restart_broker(self, down_for: float = 1.0) -> None:
        assert self.broker is not None
        self.broker.restart(down_for)

    def _stop_monitor(self) -> None:
        monitor, self.monitor = self.monitor, None
        if monitor is not None:
            monitor.close()

    def _stop_broker(self) -> None:
        if self.broker is not None:
            self.broker.stop()
            shutil.copy2(self.broker.log_path, self.logs_dir / "mosquitto.log")

    # -- simulator ----------------------------------------------------------------------------

    def _start_simulator(self) -> None:
        self.sim = Simulator(
            self.state_dir,
            self.options.kinds,
            self.options.frozen,
            self.options.hub_batteries,
            self.options.hub_controller,
        )
        self.sim.start()

    def _stop_simulator(self) -> None:
        if self.sim is not None:
            self.sim.stop()

    # -- gateway ------------------------------------------------------------------------------

    def _start_gateway(self) -> None:
        assert self.broker is not None and self.sim is not None
        self.supervisor = FakeSupervisor(
            {
                "host": self.broker.host,
                "port": self.broker.port,
                "ssl": False,
                "protocol": "3.1.1",
                "username": self.broker.username,
                "password": self.broker.password,
                "addon": "core_mosquitto",
            }
        )
        self.supervisor.start()
        options = {
            "log_level": self.options.gateway_log_level,
            "poll_interval": self.options.poll_interval,
            "connect_timeout": self.options.connect_timeout,
            "mqtt": {},  # empty host: ask the Supervisor, as the add-on does by default
            "devices": [],
        }
        options_path = self.state_dir / "options.json"
        options_path.write_text(json.dumps(options, indent=2))
        env = {
            **_clean_env(),
            **self.supervisor.env(),
            "DBUS_SYSTEM_BUS_ADDRESS": self.sim.bus_address,
            "BLUPOW_HEARTBEAT_FILE": str(self.state_dir / "gateway-heartbeat"),
            "BLUPOW_HA_BIRTH_DELAY": self.options.ha_birth_delay,
        }
        self.gateway = Process(
            "gateway",
            [
                str(GATEWAY_BIN / "blupow-gateway"),
                "run",
                "--options",
                str(options_path),
                "--data-dir",
                str(self.state_dir / "gateway-data"),
            ],
            self.logs_dir / "gateway.log",
            env=env,
            stop_timeout=15,
        )
        self.start_gateway()

    def start_gateway(self) -> None:
        """(Re)start the gateway process and wait until it announces itself online on MQTT."""
        assert self.gateway is not None and self.monitor is not None
        since = self.monitor.mark()
        self.gateway.start()
        topic = f"{BASE_TOPIC}/{GATEWAY_ID}/state"
        try:
            self.monitor.wait_topic(
                topic, GATEWAY_START_TIMEOUT, since, match=lambda m: json_object(m.payload).get("state") == "online"
            )
        except TimeoutError as exc:
            raise StackError(f"the gateway did not come online: {self.gateway.exited_early() or exc}") from exc

    def stop_gateway(self) -> None:
        if self.gateway is not None:
            self.gateway.stop()

    def _stop_gateway(self) -> None:
        self.stop_gateway()

    def _stop_supervisor(self) -> None:
        if self.supervisor is not None:
            self.supervisor.stop()
            self.supervisor = None

    # -- Home Assistant -----------------------------------------------------------------------

    # -- Home Assistant's clock --------------------------------------------------------------------

    def ha_time(self) -> float:
        """Now on Home Assistant's clock (seconds since the epoch)."""
        return time.time() + self.ha_ahead

    def ha_now(self) -> datetime:
        return datetime.fromtimestamp(self.ha_time(), UTC)

    def _ha_clock_env(self) -> dict[str, str]:
        """Home Assistant's wall clock moved ahead, nothing else: moved_clock/moved_clock.c, built
        here and preloaded into that process alone (Chromium and the harness keep the machine's)."""
        if not self.ha_ahead:
            return {}
        compiler = shutil.which("cc") or shutil.which("gcc")
        if compiler is None:
            raise StackError("a C compiler is missing: scripts/setup system installs gcc")
        library = self.state_dir / "libmovedclock.so"
        built = subprocess.run(
            [compiler, "-shared", "-fPIC", "-O2", "-Wall", "-Werror", "-o", str(library), str(MOVED_CLOCK), "-ldl"],
            capture_output=True,
            text=True,
            check=False,
        )
        if built.returncode != 0:
            raise StackError(f"building {MOVED_CLOCK.name} failed: {built.stderr.strip()}")
        return {"LD_PRELOAD": str(library), "BLUPOW_CLOCK_AHEAD": f"{self.ha_ahead:.0f}"}

    def _start_home_assistant(self) -> None:
        write_ha_config(self.ha_config, self.ha_port, self.options.ha_log_level)
        env = {
            **_clean_env(),
            # Offline at runtime: every requirement was installed by scripts/setup. An install attempt
            # fails at once (and is reported by check_home_assistant_log) instead of reaching out.
            "PIP_CONFIG_FILE": os.devnull,
            "PIP_NO_INDEX": "1",
        }
        env.update(self._ha_clock_env())
        self.home_assistant = Process(
            "home-assistant",
            [str(HA_PYTHON), "-m", "homeassistant", "--config", str(self.ha_config), "--log-no-color"],
            self.logs_dir / "home-assistant.console.log",
            env=env,
            cwd=self.state_dir,
            stop_timeout=40,
        )
        self.home_assistant.start()
        try:
            self.api.wait_started(HA_START_TIMEOUT)
        except StackError as exc:
            raise StackError(f"Home Assistant did not start: {self.home_assistant.exited_early() or exc}") from exc

    def _stop_home_assistant(self) -> None:
        if self.home_assistant is not None:
            self.home_assistant.stop()

    @property
    def ha_log(self) -> Path:
        return self.ha_config / "home-assistant.log"

    def check_home_assistant_log(self) -> None:
        """Fail if Home Assistant tried to install a package (it must run offline)."""
        text = self.ha_log.read_text(errors="replace") if self.ha_log.exists() else ""
        for marker in ("Attempting install of", "Unable to install package"):
            if marker in text:
                lines = [line for line in text.splitlines() if marker in line]
                raise StackError(f"Home Assistant tried to install packages at runtime: {lines[:5]}")

    # -- configuring Home Assistant like a user -----------------------------------------------

    def configure_home_assistant(self) -> None:
        """Onboarding, MQTT and BluPow set up through Home Assistant's HTTP/WebSocket APIs."""
        self._timed("onboarding", self.onboard)
        self._timed("mqtt_flow", self.setup_mqtt)
        self._timed("blupow_flow", self.setup_blupow)
        self.check_home_assistant_log()

    def onboard(self) -> None:
        steps = self.api.onboarding_steps()
        if steps.get("user"):
            raise StackError("Home Assistant is already onboarded (the config dir was not fresh)")
        self.api.onboard(self.options.display_name, self.options.username, self.options.password)
        self.api.wait_running(HA_START_TIMEOUT)
        # A long-lived token: the session outlives the 30-minute access token.
        self.api.token = self.api.ws("auth/long_lived_access_token", client_name="blupow-e2e", lifespan=30)
        # Onboarding adds the weather (met) and radio_browser integrations, which only work with
        # internet access; this stack is offline, so delete them as a user would. (2025 creates
        # them in the background after onboarding has answered: wait for them a while.)
        deleted: set[str] = set()
        deadline = time.monotonic() + INTERNET_ONLY_WAIT
        while deleted != set(INTERNET_ONLY) and time.monotonic() < deadline:
            for domain in INTERNET_ONLY:
                for entry in self.api.config_entries(domain):
                    self.api.call("DELETE", f"/api/config/config_entries/entry/{entry['entry_id']}")
                    deleted.add(domain)
            time.sleep(0.5)

    def setup_mqtt(self) -> dict[str, Any]:
        """Settings -> Add integration -> MQTT, with the broker's address and Home Assistant's login."""
        assert self.broker is not None
        form = self.api.start_flow("mqtt")
        if form.get("type") != "form" or form.get("step_id") != "broker":
            raise HAError(f"the MQTT config flow did not ask for the broker: {form!r}")
        result = self.api.configure_flow(
            form["flow_id"],
            {
                "broker": self.broker.host,
                "port": self.broker.port,
                "username": HA_USER,
                "password": self.ha_mqtt_password,
            },
        )
        if result.get("type") != "create_entry":
            raise HAError(f"the MQTT config flow did not create an entry: {result!r}")
        wait_until(
            lambda: any(e["state"] == "loaded" for e in self.api.config_entries("mqtt")),
            MQTT_SETUP_TIMEOUT,
            "the MQTT entry to load",
        )
        return result

    def discovered_flow(self, handler: str = "blupow") -> dict[str, Any]:
        """The config flow MQTT discovery started for ``handler`` ("Discovered" in the UI)."""

        def find() -> dict[str, Any] | None:
            flows = self.api.ws("config_entries/flow/progress")
            return next((f for f in flows if f["handler"] == handler), None)

        found: dict[str, Any] = wait_until(find, DISCOVERY_TIMEOUT, f"Home Assistant to discover {handler}")
        return found

    def setup_blupow(self) -> dict[str, Any]:
        """Accept "Discovered: BluPow" (started by the gateway's retained info topic)."""
        flow = self.discovered_flow()
        if flow["context"].get("source") != "mqtt":
            raise HAError(f"BluPow was not discovered over MQTT: {flow!r}")
        result = self.api.configure_flow(flow["flow_id"], {})
        if result.get("type") != "create_entry":
            raise HAError(f"the BluPow config flow did not create an entry: {result!r}")
        self.blupow_entry_id = result["result"]["entry_id"]
        wait_until(
            lambda: any(e["state"] == "loaded" for e in self.api.config_entries("blupow")),
            MQTT_SETUP_TIMEOUT,
            "the BluPow entry to load",
        )
        return result

    def options_flow_menu(self) -> dict[str, Any]:
        """Configure on the BluPow entry; waits until the integration sees the gateway online."""

        def menu() -> dict[str, Any] | None:
            result = self.api.start_options_flow(self.blupow_entry_id)
            if result.get("type") == "menu":
                return result
            if result.get("type") == "abort" and result.get("reason") in ("no_gateway", "gateway_offline"):
                return None  # the gateway's retained topics have not arrived yet
            raise HAError(f"the BluPow options flow did not show its menu: {result!r}")

        found: dict[str, Any] = wait_until(menu, DISCOVERY_TIMEOUT, "the BluPow options menu", interval=1.0)
        return found

    def add_device(self, device: SimDevice, name: str | None = None) -> dict[str, Any]:
        """Configure -> Add device -> MAC, type, name -> progress -> the gateway's answer."""
        menu = self.options_flow_menu()
        form = self.api.configure_flow(menu["flow_id"], {"next_step_id": "add_device"}, options=True)
        if form.get("type") != "form" or form.get("step_id") != "add_device":
            raise HAError(f"the add-device form did not open: {form!r}")
        data = {"mac_address": device.mac, "type": device.type, "name": name or DEVICE_NAMES.get(device.type, "")}
        result = self.api.configure_flow(form["flow_id"], data, options=True)
        return self.api.finish_progress(result, options=True)

    def add_unit(self, mac: str, type_name: str, modbus_id: int, name: str) -> dict[str, Any]:
        """Configure -> Add device with a Modbus ID: one unit behind a shared module."""
        menu = self.options_flow_menu()
        form = self.api.configure_flow(menu["flow_id"], {"next_step_id": "add_device"}, options=True)
        if form.get("type") != "form" or form.get("step_id") != "add_device":
            raise HAError(f"the add-device form did not open: {form!r}")
        data = {"mac_address": mac, "type": type_name, "name": name, "modbus_id": modbus_id}
        result = self.api.configure_flow(form["flow_id"], data, options=True)
        return self.api.finish_progress(result, options=True)

    def probe_and_add(self, mac: str, units: list[str] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
        """Configure -> Scan -> pick the module -> the gateway probes it -> tick -> add.

        Returns the form listing what the probe found and the flow's final result. ``units``: the
        Modbus ids to tick (as the form's values); None keeps what the form ticks by itself.
        """
        menu = self.options_flow_menu()
        result = self.api.configure_flow(menu["flow_id"], {"next_step_id": "scan"}, options=True)
        result = self.api.finish_progress(result, options=True)
        if result.get("step_id") != "scan_result":
            raise HAError(f"the scan found no module to pick: {result!r}")
        result = self.api.configure_flow(result["flow_id"], {"mac_address": mac}, options=True)
        found = self.api.finish_progress(result, options=True, timeout=PROBE_FLOW_TIMEOUT)
        if found.get("step_id") != "probe_result":
            raise HAError(f"the probe of {mac} listed no device to add: {found!r}")
        if units is None:
            field = next(f for f in found["data_schema"] if f["name"] == "units")
            units = list(field.get("default") or [])
        result = self.api.configure_flow(found["flow_id"], {"units": units}, options=True)
        return found, self.api.finish_progress(result, options=True)

    def group_bank(self, name: str, units: list[str]) -> dict[str, Any]:
        """Configure -> Group batteries into a battery bank -> name, tick -> the gateway's answers."""
        menu = self.options_flow_menu()
        form = self.api.configure_flow(menu["flow_id"], {"next_step_id": "bank"}, options=True)
        if form.get("step_id") != "bank":
            raise HAError(f"the battery bank form did not open: {form!r}")
        result = self.api.configure_flow(form["flow_id"], {"bank": name, "units": units}, options=True)
        return self.api.finish_progress(result, options=True)

    def add_energy_dashboard(self) -> dict[str, Any]:
        """Configure -> Add the energy counters to the Energy dashboard -> confirm what it shows."""
        menu = self.options_flow_menu()
        result = self.api.configure_flow(menu["flow_id"], {"next_step_id": "energy"}, options=True)
        if result.get("step_id") == "energy":
            result = self.api.configure_flow(result["flow_id"], {}, options=True)
        return result

    def remove_device(self, mac: str) -> dict[str, Any]:
        """Configure -> Remove device -> pick it -> confirm -> progress -> the gateway's answer."""
        menu = self.options_flow_menu()
        form = self.api.configure_flow(menu["flow_id"], {"next_step_id": "remove_device"}, options=True)
        if form.get("type") != "form" or form.get("step_id") != "remove_device":
            raise HAError(f"the remove-device form did not open: {form!r}")
        confirm = self.api.configure_flow(form["flow_id"], {"mac_address": mac}, options=True)
        if confirm.get("type") != "form" or confirm.get("step_id") != "remove_confirm":
            raise HAError(f"the removal was not put to confirmation: {confirm!r}")
        result = self.api.configure_flow(confirm["flow_id"], {}, options=True)
        return self.api.finish_progress(result, options=True)

    def add_all_devices(self) -> dict[str, dict[str, Any]]:
        """Every simulated device through the options flow; {mac: final flow result}."""
        assert self.sim is not None
        return {device.mac: self.add_device(device) for device in self.sim.devices}

    # -- registry helpers ---------------------------------------------------------------------

    def entities_of(self, mac: str) -> dict[str, dict[str, Any]]:
        """{unique_id: entity registry entry} of a device's MQTT entities."""
        prefix = f"blupow_{mac.replace(':', '').upper()}_"
        entries = self.api.ws("config/entity_registry/list")
        return {e["unique_id"]: e for e in entries if e["platform"] == "mqtt" and e["unique_id"].startswith(prefix)}

    def gateway_devices(self) -> list[dict[str, Any]]:
        """The gateway's retained device list as last seen on MQTT."""
        if self.monitor is None or (message := self.monitor.last(f"{BASE_TOPIC}/{GATEWAY_ID}/devices")) is None:
            raise StackError("the gateway never published its device list")
        devices = json.loads(message.payload) if message.payload else []
        return [device for device in devices if isinstance(device, dict)] if isinstance(devices, list) else []

    def device_entry(self, mac: str) -> dict[str, Any] | None:
        ident = f"blupow_{mac.replace(':', '').upper()}"
        for device in self.api.ws("config/device_registry/list"):
            if ["mqtt", ident] in device["identifiers"]:
                found: dict[str, Any] = device
                return found
        return None

    def energy_sensors(self, timeout: float = DISCOVERY_TIMEOUT) -> dict[str, str]:
        """Every energy counter the one-step Energy dashboard set-up uses (integration energy.py):
        solar (the controller's own counter, the inverter's integrated one), energy into and out of
        the battery (integrated by the gateway), the inverter's AC input as the grid and the DC and
        AC loads."""
        assert self.sim is not None
        controller = self.sim.device("renogy_charge_controller")
        battery = self.sim.device("renogy_battery")
        inverter = self.sim.device("renogy_inverter")
        wanted = {
            "solar": (controller.mac, f"blupow_{controller.topic_id}_power_generation_total"),
            "inverter_solar": (inverter.mac, f"blupow_{inverter.topic_id}_solar_energy"),
            "battery_from": (battery.mac, f"blupow_{battery.topic_id}_discharge_energy"),
            "battery_to": (battery.mac, f"blupow_{battery.topic_id}_charge_energy"),
            "load": (controller.mac, f"blupow_{controller.topic_id}_power_consumption_total"),
            "ac_load": (inverter.mac, f"blupow_{inverter.topic_id}_load_energy"),
            "grid": (inverter.mac, f"blupow_{inverter.topic_id}_ac_input_energy"),
        }

        def find() -> dict[str, str] | None:
            found = {}
            for role, (mac, unique_id) in wanted.items():
                entry = self.entities_of(mac).get(unique_id)
                if entry is None:
                    return None
                found[role] = entry["entity_id"]
            return found

        sensors: dict[str, str] = wait_until(find, timeout, "the energy sensors")
        return sensors

    def energy_prefs(self, sensors: Mapping[str, str]) -> dict[str, Any]:
        """The energy preferences the one-step set-up makes on an empty dashboard."""
        return {
            "energy_sources": [
                {"type": "solar", "stat_energy_from": sensors["solar"], "config_entry_solar_forecast": None},
                {"type": "solar", "stat_energy_from": sensors["inverter_solar"], "config_entry_solar_forecast": None},
                {
                    "type": "battery",
                    "stat_energy_from": sensors["battery_from"],
                    "stat_energy_to": sensors["battery_to"],
                },
                {
                    "type": "grid",
                    "flow_from": [
                        {
                            "stat_energy_from": sensors["grid"],
                            "stat_cost": None,
                            "entity_energy_price": None,
                            "number_energy_price": None,
                        }
                    ],
                    "flow_to": [],
                    "cost_adjustment_day": 0.0,
                },
            ],
            "device_consumption": [{"stat_consumption": sensors["load"]}, {"stat_consumption": sensors["ac_load"]}],
        }

    def mqtt_state(self, mac: str) -> dict[str, Any] | None:
        """The last decoded values the gateway published for a device."""
        assert self.monitor is not None
        message = self.monitor.last(f"{BASE_TOPIC}/{mac.replace(':', '').upper()}/state")
        return json_object(message.payload) if message is not None and message.payload else None

    # -- logs ---------------------------------------------------------------------------------

    def log_files(self) -> dict[str, Path]:
        files = {
            "home-assistant.log": self.ha_log,
            "home-assistant.console.log": self.logs_dir / "home-assistant.console.log",
            "gateway.log": self.logs_dir / "gateway.log",
            "sim.log": self.logs_dir / "sim.log",
        }
        if self.broker is not None:
            files["mosquitto.log"] = self.broker.log_path
        return {name: path for name, path in files.items() if path.exists()}

    def save_logs(self, dest: Path) -> list[Path]:
        dest.mkdir(parents=True, exist_ok=True)
        saved = []
        for name, path in self.log_files().items():
            target = dest / name
            with contextlib.suppress(OSError):
                shutil.copyfile(path, target)
                saved.append(target)
        return saved


# ================================================================================ helpers


def write_ha_config(config_dir: Path, port: int, log_level: str) -> None:
    """A fresh Home Assistant config: only the integrations the demo needs (no default_config,
    whose bluetooth/zeroconf/cloud parts would reach for hardware and the network)."""
    if config_dir.exists():
        shutil.rmtree(config_dir)
    (config_dir / "custom_components").mkdir(parents=True)
    # A link, so the demo runs the integration being edited.
    (config_dir / "custom_components" / "blupow").symlink_to(CUSTOM_COMPONENT, target_is_directory=True)
    (config_dir / "configuration.yaml").write_text(
        f"""\
# Written by tests/e2e/stack.py; recreated on every start.
homeassistant:
  latitude: 52.37
  longitude: 4.89
  elevation: 0
  unit_system: metric
  currency: EUR
  country: NL
  time_zone: UTC
http:
  server_host: 127.0.0.1
  server_port: {port}
frontend:
config:
history:
logbook:
energy:
recorder:
  commit_interval: 1
logger:
  default: {log_level}
  logs:
    custom_components.blupow: debug
    homeassistant.components.mqtt.discovery: debug
""",
        encoding="utf-8",
    )


def _add_broker_user(broker: Broker, username: str, password: str) -> None:
    """A second user in the broker's password file (mosquitto_passwd without -c appends)."""
    if Path(MOSQUITTO_PASSWD).exists():
        subprocess.run(
            [MOSQUITTO_PASSWD, "-b", str(broker.password_path), username, password],
            check=True,
            capture_output=True,
            timeout=10,
        )
    else:
        with broker.password_path.open("a") as handle:
            handle.write(pbkdf2_line(username, password))


def _clean_env() -> dict[str, str]:
    """Our environment without what would leak into the children (bus, supervisor, python paths)."""
    drop = ("DBUS_SYSTEM_BUS_ADDRESS", "SUPERVISOR_TOKEN", "HASSIO_TOKEN", "BLUPOW_", "PYTHONPATH", "VIRTUAL_ENV")
    return {k: v for k, v in os.environ.items() if not k.startswith(drop)}


def json_object(payload: bytes) -> dict[str, Any]:
    try:
        value = json.loads(payload)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


@contextlib.contextmanager
def running_stack(options: StackOptions) -> Iterator[Stack]:
    stack = Stack(options)
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()

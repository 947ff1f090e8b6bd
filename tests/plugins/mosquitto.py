"""pytest fixtures: a private Mosquitto broker with password authentication, and a recording client.

* ``mosquitto`` (function): ``/usr/sbin/mosquitto`` on a free loopback port with
  its own config and password file (``allow_anonymous false``, no persistence).
  ``.stop()`` / ``.start()`` restart it on the same port for broker-restart
  tests; it is always killed at teardown.
* ``mqtt_recorder`` (function): a factory for :class:`MqttRecorder`, a paho
  client that records every message on its subscriptions and can wait for one,
  publish, and send gateway commands (``request``) and wait for the answer.

The password file is made with ``mosquitto_passwd -b`` when it exists; otherwise
the PBKDF2-SHA512 line (``$7$101$salt$hash``) Mosquitto 2 expects is written here.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

MOSQUITTO = "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = "/usr/bin/mosquitto_passwd"
START_TIMEOUT = 10.0
USERNAME = "blupow-test"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pbkdf2_line(username: str, password: str, iterations: int = 101) -> str:
    """A password file line in Mosquitto 2's own format (``mosquitto_passwd`` writes the same)."""
    salt = secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, dklen=64)
    return f"{username}:$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}\n"


def write_password_file(path: Path, username: str, password: str) -> None:
    if Path(MOSQUITTO_PASSWD).exists():
        path.write_text("")
        subprocess.run(
            [MOSQUITTO_PASSWD, "-b", str(path), username, password],
            check=True,
            capture_output=True,
            timeout=10,
        )
    else:
        path.write_text(pbkdf2_line(username, password))
    path.chmod(0o600)


@dataclass
class Mosquitto:
    """One private broker; ``host``/``port``/``username``/``password`` are what clients need."""

    workdir: Path
    port: int = field(default_factory=free_port)
    host: str = "127.0.0.1"
    username: str = USERNAME
    password: str = field(default_factory=lambda: "pw-" + secrets.token_urlsafe(12))
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    tls: bool = False

    def __post_init__(self) -> None:
        self.config_path = self.workdir / "mosquitto.conf"
        self.password_path = self.workdir / "passwd"
        self.log_path = self.workdir / "mosquitto.log"
        self.ca_path = self.workdir / "ca.pem"
        write_password_file(self.password_path, self.username, self.password)
        lines = [
            f"listener {self.port} {self.host}",
            "allow_anonymous false",
            f"password_file {self.password_path}",
            "persistence false",
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            "max_packet_size 1048576",
        ]
        if self.tls:
            cert, key = make_certificates(self.workdir, self.host)
            lines += [f"cafile {self.ca_path}", f"certfile {cert}", f"keyfile {key}", "tls_version tlsv1.2"]
        if os.geteuid() == 0:
            # As root Mosquitto would switch to the "mosquitto" user, which cannot read our files.
            lines.append(f"user {pwd.getpwuid(os.geteuid()).pw_name}")
        self.config_path.write_text("\n".join(lines) + "\n")

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        if self.running:
            return
        self.process = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.config_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
                raise RuntimeError(f"mosquitto exited with {self.process.returncode}: {err} {self.log()}")
            with contextlib.suppress(OSError), socket.create_connection((self.host, self.port), timeout=0.2):
                self.starts += 1
                return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"mosquitto did not listen on {self.port} within {START_TIMEOUT} s: {self.log()}")

    def stop(self, timeout: float = 5.0) -> None:
        proc, self.process = self.process, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        if proc.stderr is not None:
            proc.stderr.close()

    def restart(self, down_for: float = 0.0) -> None:
        self.stop()
        if down_for:
            time.sleep(down_for)
        self.start()

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-4000:]
        return ""

    def options(self) -> dict[str, Any]:
        """The gateway's ``mqtt`` option block for this broker."""
        options = {"host": self.host, "port": self.port, "username": self.username, "password": self.password}
        if self.tls:
            options["tls"] = True
        return options


def make_certificates(workdir: Path, host: str) -> tuple[Path, Path]:
    """A throw-away CA (``ca.pem``) and a server certificate for ``host`` signed by it."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60, cwd=workdir)

    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=BluPow test CA",
        # What Python 3.13's strict verification (VERIFY_X509_STRICT) requires of a CA; a
        # real CA has them too, and the add-on image runs 3.13.
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    )
    openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={host}", "-keyout", "server.key", "-out", "server.csr"
    )
    (workdir / "san.cnf").write_text(
        f"subjectAltName=IP:{host},DNS:localhost\n"
        "basicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid,issuer\n"
    )
    openssl(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "san.cnf",
        "-out",
        "server.pem",
    )
    for name in ("server.key", "ca.key"):
        (workdir / name).chmod(0o600)
    return workdir / "server.pem", workdir / "server.key"


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retain: bool
    qos: int
    at: float

    @property
    def text(self) -> str:
        return self.payload.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return json.loads(self.payload)


class MqttRecorder:
    """A test client: records what arrives on ``topics`` and waits for messages."""

    def __init__(self, broker: Mosquitto, topics: tuple[str, ...] = ("#",), client_id: str | None = None) -> None:
        self.broker = broker
        self.topics = topics
        self.messages: list[Received] = []
        self._cond = threading.Condition()
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id or f"rec-{uuid.uuid4().hex[:8]}")
        self.client.username_pw_set(broker.username, broker.password)
        if broker.tls:
            self.client.tls_set(ca_certs=str(broker.ca_path))
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe

    def _on_connect(self, client: paho.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            return
        self._subscribed.clear()
        client.subscribe([(t, 1) for t in self.topics])
        self._connected.set()

    def _on_subscribe(self, *_args: Any) -> None:
        self._subscribed.set()

    def _on_message(self, _c: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
        item = Received(msg.topic, bytes(msg.payload), bool(msg.retain), msg.qos, time.monotonic())
        with self._cond:
            self.messages.append(item)
            self._cond.notify_all()

    def connect(self, timeout: float = 5.0) -> MqttRecorder:
        self.client.connect(self.broker.host, self.broker.port, keepalive=30)
        self.client.loop_start()
        if not self._subscribed.wait(timeout):
            raise TimeoutError(f"recorder did not connect and subscribe within {timeout} s")
        return self

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.disconnect()
        with contextlib.suppress(Exception):
            self.client.loop_stop()

    # --- waiting ---

    def wait_for(
        self, predicate: Callable[[Received], bool], timeout: float = 10.0, since: int = 0, what: str = ""
    ) -> Received:
        """The first message (from index ``since``) matching ``predicate``; TimeoutError otherwise."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for item in self.messages[since:]:
                    if predicate(item):
                        return item
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    seen = [m.topic for m in self.messages[since:]][-30:]
                    raise TimeoutError(f"no message {what} within {timeout} s; last topics: {seen}")
                self._cond.wait(remaining)

    def wait_topic(
        self, topic: str, timeout: float = 10.0, since: int = 0, match: Callable[[Received], bool] | None = None
    ) -> Received:
        return self.wait_for(
            lambda m: m.topic == topic and (match is None or match(m)), timeout, since, what=f"on {topic}"
        )

    def mark(self) -> int:
        with self._cond:
            return len(self.messages)

    def on(self, topic: str, since: int = 0) -> list[Received]:
        with self._cond:
            return [m for m in self.messages[since:] if m.topic == topic]

    def last(self, topic: str) -> Received | None:
        found = self.on(topic)
        return found[-1] if found else None

    # --- the same waits for async tests (a blocking wait would stall the gateway's loop) ---

    async def await_for(
        self, predicate: Callable[[Received], bool], timeout: float = 10.0, since: int = 0, what: str = ""
    ) -> Received:
        return await asyncio.to_thread(self.wait_for, predicate, timeout, since, what)

    async def await_topic(
        self, topic: str, timeout: float = 10.0, since: int = 0, match: Callable[[Received], bool] | None = None
    ) -> Received:
        return await asyncio.to_thread(self.wait_topic, topic, timeout, since, match)

    async def arequest(self, command_topic: str, request: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
        return await asyncio.to_thread(self.request, command_topic, request, timeout)

    async def arequest_raw(self, command_topic: str, payload: bytes, timeout: float = 10.0) -> dict[str, Any]:
        return await asyncio.to_thread(self.request_raw, command_topic, payload, timeout)

    async def apublish(
        self, topic: str, payload: bytes | str | dict[str, Any], *, qos: int = 1, retain: bool = False
    ) -> None:
        await asyncio.to_thread(self.publish, topic, payload, qos=qos, retain=retain)

    # --- sending ---

    def publish(self, topic: str, payload: bytes | str | dict[str, Any], *, qos: int = 1, retain: bool = False) -> None:
        data = json.dumps(payload).encode() if isinstance(payload, dict) else payload
        info = self.client.publish(topic, data, qos=qos, retain=retain)
        info.wait_for_publish(5.0)

    def request(
        self, command_topic: str, request: dict[str, Any], timeout: float = 10.0, response_topic: str | None = None
    ) -> dict[str, Any]:
        """Send one command (adds a ``transaction`` unless given) and return its response."""
        request = dict(request)
        request.setdefault("transaction", uuid.uuid4().hex)
        response_topic = response_topic or command_topic.rsplit("/", 1)[0] + "/response"
        since = self.mark()
        self.publish(command_topic, request)
        found = self.wait_for(
            lambda m: m.topic == response_topic and _transaction(m) == request["transaction"],
            timeout,
            since,
            what=f"answering {request.get('command')!r}",
        )
        result: dict[str, Any] = found.json()
        return result

    def request_raw(self, command_topic: str, payload: bytes, timeout: float = 10.0) -> dict[str, Any]:
        """Send raw bytes and return the next response (for payloads without a transaction)."""
        response_topic = command_topic.rsplit("/", 1)[0] + "/response"
        since = self.mark()
        self.publish(command_topic, payload)
        result: dict[str, Any] = self.wait_topic(response_topic, timeout, since).json()
        return result


def _transaction(message: Received) -> Any:
    try:
        return message.json().get("transaction")
    except (ValueError, AttributeError):
        return None


def retained_snapshot(broker: Mosquitto, pattern: str = "#", settle: float = 0.5) -> dict[str, bytes]:
    """The retained messages under ``pattern``, as a fresh subscriber sees them."""
    recorder = MqttRecorder(broker, (pattern,)).connect()
    try:
        time.sleep(settle)
        with recorder._cond:
            return {m.topic: m.payload for m in recorder.messages if m.retain}
    finally:
        recorder.close()


async def aretained(broker: Mosquitto, pattern: str = "#", settle: float = 0.5) -> dict[str, bytes]:
    """:func:`retained_snapshot` without blocking the event loop."""
    return await asyncio.to_thread(retained_snapshot, broker, pattern, settle)


@pytest.fixture
def mosquitto() -> Iterator[Mosquitto]:
    if not Path(MOSQUITTO).exists():
        pytest.skip(f"{MOSQUITTO} is not installed")
    workdir = Path(tempfile.mkdtemp(prefix="blupow-mosquitto-"))
    broker = Mosquitto(workdir)
    try:
        broker.start()
        yield broker
    finally:
        broker.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def mosquitto_tls() -> Iterator[Mosquitto]:
    """Like ``mosquitto`` but TLS only, with a certificate from a throw-away CA (``.ca_path``)."""
    if not Path(MOSQUITTO).exists() or shutil.which("openssl") is None:
        pytest.skip("mosquitto or openssl is not installed")
    workdir = Path(tempfile.mkdtemp(prefix="blupow-mosquitto-tls-"))
    broker = Mosquitto(workdir, tls=True)
    try:
        broker.start()
        yield broker
    finally:
        broker.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def mqtt_recorder(mosquitto: Mosquitto) -> Iterator[Callable[..., MqttRecorder]]:
    made: list[MqttRecorder] = []

    def make(topics: tuple[str, ...] = ("#",)) -> MqttRecorder:
        recorder = MqttRecorder(mosquitto, topics).connect()
        made.append(recorder)
        return recorder

    try:
        yield make
    finally:
        for recorder in made:
            recorder.close()

"""Broker discovery against a fake Supervisor (a real HTTP server on loopback)."""

from __future__ import annotations

import asyncio
import io
import logging
import socket
import time
from collections.abc import Iterator

import pytest

from blupow_gateway.logs import MASK, QUIET_LOGGERS, clear_secrets, setup_logging
from blupow_gateway.settings import MqttOverride
from blupow_gateway.supervisor import BrokerConfig, BrokerError, resolve_broker
from tests.plugins.supervisor import FakeSupervisor

HINT = "install/start the Mosquitto broker add-on or set mqtt.host"
FAST = {"first_delay": 0.05, "max_delay": 0.1}


@pytest.fixture(autouse=True)
def _forget_secrets() -> Iterator[None]:
    # Every BrokerConfig registers its password for masking; keep tests independent.
    yield
    clear_secrets()


@pytest.fixture
def log_output() -> Iterator[io.StringIO]:
    """The gateway's own log output at trace level (everything); logging is restored afterwards."""
    root = logging.getLogger()
    saved = (root.level, list(root.handlers), logging.getLogRecordFactory())
    saved_quiet = {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
    stream = io.StringIO()
    setup_logging("trace", stream=stream)
    try:
        yield stream
    finally:
        for handler in [h for h in root.handlers if h not in saved[1]]:
            root.removeHandler(handler)
        root.setLevel(saved[0])
        logging.setLogRecordFactory(saved[2])
        for name, level in saved_quiet.items():
            logging.getLogger(name).setLevel(level)
        clear_secrets()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_broker_from_the_supervisor(fake_supervisor: FakeSupervisor, log_output: io.StringIO) -> None:
    broker = await resolve_broker(MqttOverride(), env=fake_supervisor.env(), **FAST)
    data = fake_supervisor.mqtt
    assert broker == BrokerConfig(
        host="core-mosquitto",
        port=1883,
        username="addons",
        password=data["password"],
        tls=False,
        source="supervisor",
        protocol="3.1.1",
        provider="core_mosquitto",
    )
    (request,) = fake_supervisor.requests
    assert (request.method, request.path) == ("GET", "/services/mqtt")
    assert request.authorization == f"Bearer {fake_supervisor.token}"
    assert request.headers["host"] == fake_supervisor.url.removeprefix("http://")
    assert "INFO: Using the MQTT broker from the Supervisor: mqtt://core-mosquitto:1883 (user 'addons', " in (
        log_output.getvalue()
    )


async def test_not_registered_yet_then_ok(fake_supervisor: FakeSupervisor, caplog: pytest.LogCaptureFixture) -> None:
    fake_supervisor.queue(400, 400)
    caplog.set_level(logging.INFO, logger="blupow_gateway.supervisor")
    broker = await resolve_broker(MqttOverride(), env=fake_supervisor.env(), first_delay=0.05, max_delay=0.08)
    assert broker.host == "core-mosquitto"
    assert len(fake_supervisor.requests) == 3
    retries = [m for m in caplog.messages if "not registered" in m]
    assert retries == [
        f"MQTT broker not registered with the Supervisor yet, retrying in 0.05 s ({HINT})",
        f"MQTT broker not registered with the Supervisor yet, retrying in 0.08 s ({HINT})",
    ]


async def test_never_registered_gives_up_after_the_bounded_wait(fake_supervisor: FakeSupervisor) -> None:
    fake_supervisor.status = 400
    started = time.monotonic()
    with pytest.raises(BrokerError) as info:
        await resolve_broker(MqttOverride(), env=fake_supervisor.env(), max_wait=0.4, **FAST)
    elapsed = time.monotonic() - started
    assert str(info.value) == (
        "MQTT broker still not registered with the Supervisor after 0.4 s: install and start the "
        "Mosquitto broker add-on, or set mqtt.host in the add-on options"
    )
    assert 0.35 <= elapsed < 3
    assert len(fake_supervisor.requests) >= 3


async def test_no_access_is_permanent(fake_supervisor: FakeSupervisor) -> None:
    fake_supervisor.status = 403
    with pytest.raises(BrokerError) as info:
        await resolve_broker(MqttOverride(), env=fake_supervisor.env(), max_wait=30, **FAST)
    assert str(info.value) == ("no access to the mqtt service: the add-on manifest must declare services: [mqtt:need]")
    assert len(fake_supervisor.requests) == 1  # no retries


async def test_wrong_token(fake_supervisor: FakeSupervisor) -> None:
    env = fake_supervisor.env() | {"SUPERVISOR_TOKEN": "not-the-token"}
    with pytest.raises(BrokerError) as info:
        await resolve_broker(MqttOverride(), env=env, max_wait=30, **FAST)
    assert str(info.value) == "the Supervisor rejected the add-on token (HTTP 401); restart the add-on"
    assert fake_supervisor.requests[0].authorization == "Bearer not-the-token"


async def test_legacy_token_name(fake_supervisor: FakeSupervisor) -> None:
    env = {"HASSIO_TOKEN": fake_supervisor.token, "BLUPOW_SUPERVISOR_URL": fake_supervisor.url + "/"}
    broker = await resolve_broker(MqttOverride(), env=env, **FAST)
    assert broker.source == "supervisor"
    assert fake_supervisor.requests[0].path == "/services/mqtt"


async def test_unexpected_status_is_permanent(fake_supervisor: FakeSupervisor) -> None:
    fake_supervisor.status = 404
    with pytest.raises(BrokerError) as info:
        await resolve_broker(MqttOverride(), env=fake_supervisor.env(), max_wait=30, **FAST)
    assert str(info.value) == "unexpected answer from the Supervisor's mqtt service: HTTP 404: Not found"


async def test_server_errors_are_retried(fake_supervisor: FakeSupervisor, caplog: pytest.LogCaptureFixture) -> None:
    fake_supervisor.queue(500)
    broker = await resolve_broker(MqttOverride(), env=fake_supervisor.env(), **FAST)
    assert broker.port == 1883
    assert len(fake_supervisor.requests) == 2
    assert "Looking up the MQTT broker failed: HTTP 500; retrying in 0.05 s" in caplog.messages


async def test_broker_with_auth_and_tls(fake_supervisor: FakeSupervisor) -> None:
    fake_supervisor.set_broker("10.0.0.5", 8883, "solar", "pw-abc-123", ssl=True)
    broker = await resolve_broker(MqttOverride(), env=fake_supervisor.env(), **FAST)
    assert (broker.host, broker.port, broker.username, broker.password) == ("10.0.0.5", 8883, "solar", "pw-abc-123")
    assert broker.tls is True
    assert str(broker).startswith("mqtts://10.0.0.5:8883 (user 'solar', from the Supervisor")


async def test_broker_without_credentials(fake_supervisor: FakeSupervisor) -> None:
    fake_supervisor.mqtt = {"host": "core-mosquitto", "port": "1884", "app": "core_mosquitto"}
    broker = await resolve_broker(MqttOverride(), env=fake_supervisor.env(), **FAST)
    assert (broker.username, broker.password, broker.tls, broker.port) == (None, None, False, 1884)
    assert broker.provider == "core_mosquitto"  # the v2 API's key
    assert "anonymous" in str(broker)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ({"port": 1883}, "data.host is missing"),
        ({"host": "h", "port": "abc"}, "data.port must be a port number"),
        ({"host": "h", "port": 0}, "data.port must be a port number"),
        ({"host": "h", "port": 1883, "ssl": "yes"}, "data.ssl must be true or false"),
        ({"host": "h", "port": 1883, "password": 5}, "data.password must be a string"),
    ],
)
async def test_malformed_service_data(fake_supervisor: FakeSupervisor, data: dict[str, object], reason: str) -> None:
    fake_supervisor.mqtt = data
    with pytest.raises(BrokerError) as info:
        await resolve_broker(MqttOverride(), env=fake_supervisor.env(), **FAST)
    assert str(info.value) == f"unexpected answer from the Supervisor's mqtt service: {reason}"


async def test_override_never_contacts_the_supervisor(fake_supervisor: FakeSupervisor) -> None:
    override = MqttOverride(host="broker.lan", username="me", password="pw-override-77")
    broker = await resolve_broker(override, env=fake_supervisor.env(), **FAST)
    assert broker == BrokerConfig("broker.lan", 1883, "me", "pw-override-77", False, "options")
    assert fake_supervisor.requests == []


@pytest.mark.parametrize(
    ("override", "port", "tls"),
    [
        (MqttOverride(host="b", tls=True), 8883, True),
        (MqttOverride(host="b", port=1999, tls=True), 1999, True),
        (MqttOverride(host="b", port=1999), 1999, False),
    ],
)
async def test_override_ports(override: MqttOverride, port: int, tls: bool) -> None:
    broker = await resolve_broker(override, env={})
    assert (broker.port, broker.tls, broker.source) == (port, tls, "options")


async def test_no_token_and_no_override() -> None:
    with pytest.raises(BrokerError) as info:
        await resolve_broker(MqttOverride(username="x"), env={"BLUPOW_SUPERVISOR_URL": "http://127.0.0.1:9"})
    assert str(info.value) == (
        "no MQTT broker configured: set mqtt.host (or BLUPOW_MQTT_HOST); outside Home Assistant "
        "there is no Supervisor to ask (SUPERVISOR_TOKEN is not set)"
    )


async def test_unreachable_supervisor_is_retried_then_reported(caplog: pytest.LogCaptureFixture) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(BrokerError) as info:
        await resolve_broker(
            MqttOverride(), env={"SUPERVISOR_TOKEN": "t", "BLUPOW_SUPERVISOR_URL": url}, max_wait=0.2, **FAST
        )
    assert (
        str(info.value)
        == f"no MQTT broker: cannot reach the Supervisor at {url} (Connection refused) (gave up after 0.2 s)"
    )
    assert any(
        m.startswith(f"Looking up the MQTT broker failed: cannot reach the Supervisor at {url}")
        for m in caplog.messages
    )


async def test_silent_supervisor_times_out() -> None:
    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1024)
        await asyncio.sleep(5)
        writer.close()

    server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        with pytest.raises(BrokerError) as info:
            await resolve_broker(
                MqttOverride(),
                env={"SUPERVISOR_TOKEN": "t", "BLUPOW_SUPERVISOR_URL": url},
                max_wait=0.3,
                request_timeout=0.2,
                **FAST,
            )
    finally:
        server.close()
        await server.wait_closed()
    assert (
        str(info.value) == f"no MQTT broker: the Supervisor at {url} did not answer within 0.2 s (gave up after 0.3 s)"
    )


def _chunked(body: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:10], body[10:])) + b"0\r\n\r\n"


@pytest.mark.parametrize("framing", ["chunked", "content-length", "until-close"])
async def test_http_framings(framing: str) -> None:
    """The hand-written HTTP client reads every framing an HTTP/1.1 server may use."""
    body = b'{"result": "ok", "data": {"host": "core-mosquitto", "port": 1883, "ssl": false}}'
    if framing == "chunked":
        head, payload = b"Transfer-Encoding: chunked\r\n", _chunked(body)
    elif framing == "content-length":
        head, payload = b"Content-Length: %d\r\n" % len(body), body + b"trailing junk"
    else:
        head, payload = b"", body
    seen: list[bytes] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" + head + b"\r\n" + payload)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        broker = await resolve_broker(MqttOverride(), env={"SUPERVISOR_TOKEN": "tok-3", "BLUPOW_SUPERVISOR_URL": url})
    finally:
        server.close()
        await server.wait_closed()
    assert (broker.host, broker.port, broker.username) == ("core-mosquitto", 1883, None)
    request = seen[0].decode()
    assert request.startswith("GET /services/mqtt HTTP/1.1\r\n")
    assert "Authorization: Bearer tok-3\r\n" in request


@pytest.mark.parametrize("url", ["ftp://x", "supervisor", "http://", "http://host:port"])
async def test_invalid_supervisor_url(url: str) -> None:
    with pytest.raises(BrokerError) as info:
        await resolve_broker(MqttOverride(), env={"SUPERVISOR_TOKEN": "t", "BLUPOW_SUPERVISOR_URL": url})
    assert str(info.value) == f"invalid Supervisor URL {url!r} (expected http://host[:port])"


async def test_stop_request_interrupts_the_wait(fake_supervisor: FakeSupervisor) -> None:
    fake_supervisor.status = 400
    task = asyncio.create_task(
        resolve_broker(MqttOverride(), env=fake_supervisor.env(), max_wait=60, first_delay=30, max_delay=30)
    )
    async with asyncio.timeout(5):
        while not fake_supervisor.requests:
            await asyncio.sleep(0.01)
    task.cancel()
    started = time.monotonic()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - started < 1


# --- secrets -----------------------------------------------------------------------------------


async def test_password_is_absent_from_logs_and_reprs(
    fake_supervisor: FakeSupervisor, log_output: io.StringIO, caplog: pytest.LogCaptureFixture
) -> None:
    password = "pw-supervisor-6d2f9a"
    fake_supervisor.set_broker("core-mosquitto", 1883, "addons", password)
    fake_supervisor.queue(400, 500)
    broker = await resolve_broker(MqttOverride(), env=fake_supervisor.env(), **FAST)
    assert broker.password == password
    for text in (repr(broker), str(broker), str(broker.redacted()), f"{broker!r} {broker}"):
        assert password not in text
    assert "password=<set>" in repr(broker)
    assert "password" not in broker.redacted()
    logged = log_output.getvalue()
    assert "INFO: MQTT broker not registered with the Supervisor yet" in logged
    assert "Using the MQTT broker from the Supervisor" in logged
    assert password not in logged
    assert fake_supervisor.token not in logged
    assert password not in caplog.text
    # Defence in depth: even a careless log call is masked once the broker is known.
    logging.getLogger("blupow_gateway.mqtt").error("CONNACK refused for password %s", password)
    assert f"CONNACK refused for password {MASK}" in log_output.getvalue()
    assert password not in log_output.getvalue()


async def test_override_password_is_absent_from_logs(log_output: io.StringIO) -> None:
    password = "pw-manual-0b7e"
    broker = await resolve_broker(MqttOverride(host="broker.lan", username="u", password=password), env={})
    assert password not in repr(broker)
    assert "INFO: Using the MQTT broker from the add-on options: mqtt://broker.lan:1883 (user 'u', " in (
        log_output.getvalue()
    )
    logging.getLogger("blupow_gateway").info("leak %s", password)
    assert password not in log_output.getvalue()

"""Which MQTT broker to use: the user's manual settings, or the one the Supervisor offers.

Rule (all or nothing, like zigbee2mqtt): when ``mqtt.host`` is set, the manual settings are used
entirely and the Supervisor is never asked. Otherwise ``GET <supervisor>/services/mqtt`` with the
add-on token returns the broker that Mosquitto registered. Right after a host boot the Supervisor
has reset all registrations and Mosquitto has not re-registered yet, so HTTP 400 "Service not
enabled" is retried with backoff for a bounded time.

Only the standard library is used: a tiny HTTP/1.1 client on asyncio streams, so a stop request
(task cancellation) interrupts a lookup at once. The password is kept out of every repr, string
and log line, and registered with :mod:`.logs` so even an accident is masked.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from .logs import register_secret
from .settings import MqttOverride

__all__ = [
    "DEFAULT_SUPERVISOR_URL",
    "BrokerConfig",
    "BrokerError",
    "ServiceAnswer",
    "fetch_mqtt_service",
    "resolve_broker",
]

_LOGGER = logging.getLogger(__name__)

DEFAULT_SUPERVISOR_URL = "http://supervisor"
URL_ENV = "BLUPOW_SUPERVISOR_URL"
TOKEN_ENVS = ("SUPERVISOR_TOKEN", "HASSIO_TOKEN")  # HASSIO_TOKEN: the same value, legacy name
_HINT = "install/start the Mosquitto broker add-on or set mqtt.host"
_MAX_RESPONSE = 64 * 1024


class BrokerError(Exception):
    """No usable broker; the message says what the user can do about it."""


@dataclass(frozen=True)
class BrokerConfig:
    """Where and how to connect. ``repr``/``str`` never show the password."""

    host: str
    port: int
    username: str | None
    password: str | None = field(repr=False)
    tls: bool
    source: str  # "options" (manual settings) or "supervisor"
    protocol: str = "3.1.1"  # MQTT version the provider announced
    provider: str | None = None  # slug of the add-on that registered the service

    def __post_init__(self) -> None:
        register_secret(self.password)

    def __repr__(self) -> str:
        password = "set" if self.password else "none"
        return (
            f"BrokerConfig(host={self.host!r}, port={self.port}, username={self.username!r}, "
            f"password=<{password}>, tls={self.tls}, source={self.source!r})"
        )

    def __str__(self) -> str:
        scheme = "mqtts" if self.tls else "mqtt"
        who = f"user {self.username!r}" if self.username else "anonymous"
        origin = "the add-on options" if self.source == "options" else "the Supervisor"
        if self.provider:
            origin += f" ({self.provider})"
        return f"{scheme}://{self.host}:{self.port} ({who}, from {origin})"

    def redacted(self) -> dict[str, Any]:
        """For the gateway's info topic and diagnostics: everything but the password."""
        return {"host": self.host, "port": self.port, "username": self.username, "tls": self.tls, "source": self.source}


@dataclass(frozen=True)
class ServiceAnswer:
    """One reply of the services API: HTTP status and the decoded JSON envelope (or None)."""

    status: int
    body: Any

    @property
    def message(self) -> str:
        if isinstance(self.body, Mapping) and isinstance(self.body.get("message"), str):
            return self.body["message"]
        return ""


class _Transient(Exception):
    """A lookup failure worth retrying; the text is the log line's reason."""


# --- manual settings ---------------------------------------------------------------------------


def _from_override(override: MqttOverride) -> BrokerConfig:
    tls = bool(override.tls)
    return BrokerConfig(
        host=override.host or "",
        port=override.port or (8883 if tls else 1883),
        username=override.username or None,
        password=override.password or None,
        tls=tls,
        source="options",
    )


# --- the HTTP call -----------------------------------------------------------------------------


def _split_url(base_url: str) -> tuple[str, int, str, str, bool]:
    """(host, port, Host header, path prefix, https?) of the Supervisor URL."""
    try:
        parts = urlsplit(base_url)
        port = parts.port
    except ValueError:
        parts, port = None, None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise BrokerError(f"invalid Supervisor URL {base_url!r} (expected http://host[:port])")
    secure = parts.scheme == "https"
    host_header = parts.netloc.rpartition("@")[2]
    return parts.hostname, port or (443 if secure else 80), host_header, parts.path.rstrip("/"), secure


def _parse_response(raw: bytes) -> ServiceAnswer:
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        raise _Transient("incomplete HTTP response")
    lines = head.decode("iso-8859-1").split("\r\n")
    try:
        status = int(lines[0].split()[1])
    except (IndexError, ValueError):
        raise _Transient(f"bad HTTP status line {lines[0][:60]!r}") from None
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = _dechunk(body)
    elif "content-length" in headers and headers["content-length"].isdigit():
        body = body[: int(headers["content-length"])]
    try:
        decoded = json.loads(body.decode("utf-8")) if body.strip() else None
    except (UnicodeDecodeError, ValueError):
        decoded = None
    return ServiceAnswer(status, decoded)


def _dechunk(body: bytes) -> bytes:
    out = b""
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        try:
            size = int(size_line.split(b";")[0], 16)
        except ValueError:
            raise _Transient("bad chunked HTTP body") from None
        if size == 0:
            break
        out += rest[:size]
        body = rest[size + 2 :]
    return out


async def fetch_mqtt_service(base_url: str, token: str) -> ServiceAnswer:
    """One ``GET <base_url>/services/mqtt``; raises ``OSError`` when unreachable.

    Callers bound it with ``asyncio.timeout``.
    """
    if any(ch in token for ch in "\r\n\0"):
        raise BrokerError("SUPERVISOR_TOKEN contains control characters")
    host, port, host_header, path, secure = _split_url(base_url)
    request = (
        f"GET {path}/services/mqtt HTTP/1.1\r\n"
        f"Host: {host_header}\r\n"
        f"Authorization: Bearer {token}\r\n"
        "Accept: application/json\r\n"
        "Connection: close\r\n\r\n"
    ).encode("latin-1")
    ctx = ssl.create_default_context() if secure else None
    reader, writer = await asyncio.open_connection(host, port, ssl=ctx)
    try:
        writer.write(request)
        await writer.drain()
        raw = b""
        while len(raw) <= _MAX_RESPONSE:
            more = await reader.read(_MAX_RESPONSE + 1 - len(raw))
            if not more:
                break
            raw += more
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    if len(raw) > _MAX_RESPONSE:
        raise _Transient("the Supervisor's answer is too large")
    return _parse_response(raw)


# --- interpreting the answer -------------------------------------------------------------------


def _broker_from_data(data: Any) -> BrokerConfig:
    """Check the 200 envelope's ``data`` (Supervisor SCHEMA_SERVICE_MQTT) and build the config."""

    def bad(reason: str) -> BrokerError:
        return BrokerError(f"unexpected answer from the Supervisor's mqtt service: {reason}")

    if not isinstance(data, Mapping):
        raise bad("data is missing")
    host = data.get("host")
    if not isinstance(host, str) or not host.strip():
        raise bad("data.host is missing")
    port = data.get("port")
    if isinstance(port, str) and port.isdigit():  # the docs call it a string; the schema makes it an int
        port = int(port)
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise bad("data.port must be a port number")
    ssl_flag = data.get("ssl", False)
    if not isinstance(ssl_flag, bool):
        raise bad("data.ssl must be true or false")
    username, password = data.get("username"), data.get("password")
    for name, value in (("username", username), ("password", password)):
        if value is not None and not isinstance(value, str):
            raise bad(f"data.{name} must be a string")
    provider = data.get("addon", data.get("app"))  # v1 says addon, the v2 API says app
    protocol = data.get("protocol")
    return BrokerConfig(
        host=host.strip(),
        port=port,
        username=username or None,
        password=password or None,
        tls=ssl_flag,
        source="supervisor",
        protocol=protocol if isinstance(protocol, str) and protocol else "3.1.1",
        provider=provider if isinstance(provider, str) else None,
    )


def _interpret(answer: ServiceAnswer) -> BrokerConfig:
    """A broker, or raise: :class:`_Transient` to retry, :class:`BrokerError` to give up."""
    if answer.status == 200:
        body = answer.body if isinstance(answer.body, Mapping) else {}
        return _broker_from_data(body.get("data"))
    if answer.status == 400:
        # "Service not enabled": nobody has registered an MQTT broker (yet).
        raise _Transient("not registered")
    if answer.status == 401:
        raise BrokerError("the Supervisor rejected the add-on token (HTTP 401); restart the add-on")
    if answer.status == 403:
        raise BrokerError("no access to the mqtt service: the add-on manifest must declare services: [mqtt:need]")
    if answer.status >= 500:
        raise _Transient(f"HTTP {answer.status}")
    detail = f": {answer.message}" if answer.message else ""
    raise BrokerError(f"unexpected answer from the Supervisor's mqtt service: HTTP {answer.status}{detail}")


def _seconds(value: float) -> str:
    return f"{value:.3g}"


async def _ask_supervisor(
    base_url: str, token: str, *, max_wait: float, first_delay: float, max_delay: float, request_timeout: float
) -> BrokerConfig:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max_wait
    delay = first_delay
    while True:
        try:
            async with asyncio.timeout(request_timeout):
                answer = await fetch_mqtt_service(base_url, token)
            return _interpret(answer)
        except _Transient as exc:
            reason = str(exc)
        except TimeoutError:
            reason = f"the Supervisor at {base_url} did not answer within {_seconds(request_timeout)} s"
        except OSError as exc:
            # asyncio's "Connect call failed (...)" hides the plain reason that errno gives.
            why = os.strerror(exc.errno) if exc.errno else str(exc) or type(exc).__name__
            reason = f"cannot reach the Supervisor at {base_url} ({why})"
        remaining = deadline - loop.time()
        if remaining <= 0:
            if reason == "not registered":
                raise BrokerError(
                    f"MQTT broker still not registered with the Supervisor after {_seconds(max_wait)} s: "
                    "install and start the Mosquitto broker add-on, or set mqtt.host in the add-on options"
                )
            raise BrokerError(f"no MQTT broker: {reason} (gave up after {_seconds(max_wait)} s)")
        wait = min(delay, remaining)
        if reason == "not registered":
            _LOGGER.info(
                "MQTT broker not registered with the Supervisor yet, retrying in %s s (%s)", _seconds(wait), _HINT
            )
        else:
            _LOGGER.warning("Looking up the MQTT broker failed: %s; retrying in %s s", reason, _seconds(wait))
        await asyncio.sleep(wait)
        delay = min(delay * 2, max_delay)


async def resolve_broker(
    override: MqttOverride,
    *,
    env: Mapping[str, str] | None = None,
    max_wait: float = 120.0,
    first_delay: float = 5.0,
    max_delay: float = 30.0,
    request_timeout: float = 10.0,
) -> BrokerConfig:
    """The broker to connect to; raises :class:`BrokerError` with a user-facing reason.

    ``max_wait`` bounds the total time spent waiting for the broker to register (HTTP 400) or
    for an unreachable/failing Supervisor; the delay between tries starts at ``first_delay`` and
    doubles up to ``max_delay``. ``env`` defaults to ``os.environ`` (``SUPERVISOR_TOKEN``,
    ``BLUPOW_SUPERVISOR_URL``).
    """
    if override.is_set:
        broker = _from_override(override)
        _LOGGER.info("Using the MQTT broker from the add-on options: %s", broker)
        return broker
    env = os.environ if env is None else env
    token = next((env[name] for name in TOKEN_ENVS if env.get(name)), None)
    if not token:
        raise BrokerError(
            "no MQTT broker configured: set mqtt.host (or BLUPOW_MQTT_HOST); outside Home Assistant "
            "there is no Supervisor to ask (SUPERVISOR_TOKEN is not set)"
        )
    register_secret(token)
    base_url = env.get(URL_ENV) or DEFAULT_SUPERVISOR_URL
    _LOGGER.debug("Asking the Supervisor at %s for the MQTT broker", base_url)
    broker = await _ask_supervisor(
        base_url,
        token,
        max_wait=max_wait,
        first_delay=first_delay,
        max_delay=max_delay,
        request_timeout=request_timeout,
    )
    _LOGGER.info("Using the MQTT broker from the Supervisor: %s", broker)
    return broker

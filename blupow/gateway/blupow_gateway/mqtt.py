"""An asyncio-friendly MQTT client on paho-mqtt 2.x (callback API v2).

paho's own network thread (``loop_start``) does the socket work and the
reconnecting: ``connect_async`` never blocks, and ``loop_forever`` inside that
thread retries a lost or refused connection forever with a doubling delay
(``reconnect_delay_set``, capped at ``reconnect_max``). Everything paho reports
from its thread is handed to the event loop with ``call_soon_threadsafe``, so
the gateway's handlers run on the loop and never touch paho's thread.

``publish`` only queues the packet (paho's publish is thread-safe and wakes its
thread through a socket pair), so it never blocks the event loop. While the
broker is away, messages that are republished on every connection anyway
(retained states, discovery) are dropped instead of queued; responses and
events can ask to be queued and are sent after the reconnect.

The password is handed to paho and nowhere else: it is not in any log line,
``repr`` or exception text produced here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from .tasks import stop_task

_LOGGER = logging.getLogger(__name__)

Payload = str | bytes | dict[str, Any] | list[Any] | None
Handler = Callable[["Message"], Awaitable[None] | None]

# Enough for a full republish (a few hundred discovery configs) plus responses.
MAX_QUEUED = 5000


class BrokerLike(Protocol):
    """What the client needs to know about the broker (``supervisor.BrokerConfig`` fits)."""

    host: str
    port: int
    username: str | None
    password: str | None
    tls: bool


@dataclass(frozen=True)
class Message:
    """One received message, as handlers see it."""

    topic: str
    payload: bytes
    retain: bool
    qos: int


@dataclass(frozen=True)
class Will:
    topic: str
    payload: str
    qos: int = 1
    retain: bool = True


class _Client(paho.Client):
    """paho's client, remembering why the last connection attempt failed (paho does not say)."""

    last_error: str = ""

    def reconnect(self) -> MQTTErrorCode:
        try:
            return super().reconnect()
        except OSError as exc:
            self.last_error = str(exc) or type(exc).__name__
            raise


def encode(payload: Payload) -> bytes:
    """JSON for dicts and lists, UTF-8 for text, empty for None (clears a retained topic).

    Raises ValueError for a NaN or ±Infinity anywhere in a dict or list: Python
    would write them as ``NaN``/``Infinity``, which is not JSON and makes Home
    Assistant (and any strict consumer) reject the whole payload.
    """
    if payload is None:
        return b""
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, str):
        return payload.encode("utf-8")
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def _encode_or_log(topic: str, payload: Payload) -> bytes | None:
    """``encode(payload)``, or None after logging why it cannot be sent (the caller drops it)."""
    try:
        return encode(payload)
    except ValueError:
        # A bug upstream (decoding drops non-finite values): refuse this one message,
        # keep the gateway running, and say where so the bug can be found.
        _LOGGER.error("Not publishing to %s: the payload holds NaN or Infinity, which is not JSON", topic)
        return None


class MqttClient:
    """One broker connection with a last will, automatic reconnects and subscriptions.

    ``on_connect`` runs on the event loop after every successful (re)connection,
    after the subscriptions have been renewed; ``on_disconnect`` after every loss.
    """

    def __init__(
        self,
        broker: BrokerLike,
        *,
        client_id: str,
        will: Will,
        keepalive: int = 30,
        reconnect_min: float = 1.0,
        reconnect_max: float = 5.0,
        on_connect: Callable[[], Any] | None = None,
        on_disconnect: Callable[[], Any] | None = None,
    ) -> None:
        self._broker = broker
        self._client_id = client_id
        self._will = will
        self._keepalive = keepalive
        self._reconnect_min = reconnect_min
        self._reconnect_max = reconnect_max
        self._on_connect_cb = on_connect
        self._on_disconnect_cb = on_disconnect
        self._subscriptions: list[tuple[str, int, Handler]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: _Client | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._stopping = False
        self._failures = 0  # consecutive failed attempts, to log the first one loudly only
        self._handler_tasks: set[asyncio.Task[Any]] = set()
        self.connected = False
        self.connections = 0  # successful connections so far
        self.connected_since: float | None = None

    @property
    def endpoint(self) -> str:
        scheme = "mqtts" if self._broker.tls else "mqtt"
        return f"{scheme}://{self._broker.host}:{self._broker.port}"

    # --- subscriptions ---

    def subscribe(self, topic: str, handler: Handler, qos: int = 1) -> None:
        """Register ``handler`` for ``topic`` (wildcards allowed); renewed on every connection."""
        self._subscriptions.append((topic, qos, handler))
        client = self._client
        if client is not None and self.connected:
            client.subscribe(topic, qos)

    # --- lifecycle ---

    async def start(self) -> None:
        """Start connecting in the background; returns at once."""
        self._loop = asyncio.get_running_loop()
        self._client = self._make_client()
        self._launch(self._client)
        self._watchdog = asyncio.create_task(self._watch(), name="mqtt-watchdog")

    def _make_client(self) -> _Client:
        client = _Client(
            CallbackAPIVersion.VERSION2,
            client_id=self._client_id,
            clean_session=True,
            protocol=paho.MQTTv311,
        )
        # An exception in a callback must never end paho's network thread.
        client.suppress_exceptions = True
        if self._broker.username:
            client.username_pw_set(self._broker.username, self._broker.password)
        if self._broker.tls:
            client.tls_set_context(ssl.create_default_context())
        client.will_set(self._will.topic, self._will.payload, qos=self._will.qos, retain=self._will.retain)
        client.reconnect_delay_set(min_delay=max(1, round(self._reconnect_min)), max_delay=round(self._reconnect_max))
        client.max_queued_messages_set(MAX_QUEUED)
        # paho holds back QoS 1 messages beyond 20 unacknowledged ones; a discovery burst
        # would then delay a command response behind it. Mosquitto imposes no such limit.
        client.max_inflight_messages_set(0)
        client.on_connect = self._paho_connect
        client.on_disconnect = self._paho_disconnect
        client.on_connect_fail = self._paho_connect_fail
        client.on_message = self._paho_message
        return client

    def _launch(self, client: _Client) -> None:
        client.connect_async(self._broker.host, self._broker.port, keepalive=self._keepalive)
        client.loop_start()

    async def _watch(self) -> None:
        """Restart paho's network thread should it ever end while we still want a connection."""
        while not self._stopping:
            await asyncio.sleep(5)
            client = self._client
            thread = getattr(client, "_thread", None)
            if client is None or self._stopping or (thread is not None and thread.is_alive()):
                continue
            _LOGGER.warning("MQTT network thread stopped unexpectedly; restarting it")
            with contextlib.suppress(Exception):
                await asyncio.to_thread(client.loop_stop)
            self._client = self._make_client()
            self._launch(self._client)

    async def stop(self, last: list[tuple[str, Payload, int, bool]] | None = None, grace: float = 3.0) -> None:
        """Publish ``last`` (topic, payload, qos, retain) if connected, then disconnect cleanly.

        A clean DISCONNECT means the broker does not send the last will, which is
        why the gateway publishes its own offline state here first.
        """
        self._stopping = True
        await stop_task(self._watchdog, grace)
        client = self._client
        if client is None:
            return
        if self.connected and last:
            encoded = [(t, _encode_or_log(t, p), q, r) for t, p, q, r in last]
            infos = [client.publish(t, data, qos=q, retain=r) for t, data, q, r in encoded if data is not None]
            await _poll_until(lambda: all(i.is_published() for i in infos), grace)
        with contextlib.suppress(Exception):
            client.disconnect()
        # loop_stop joins paho's thread: bounded, and the thread is left alone if it hangs.
        with contextlib.suppress(Exception):
            async with asyncio.timeout(grace):
                await asyncio.to_thread(client.loop_stop)
        self.connected = False
        for task in list(self._handler_tasks):
            task.cancel()

    # --- publishing ---

    def publish(
        self, topic: str, payload: Payload, *, qos: int = 0, retain: bool = False, queue_offline: bool = False
    ) -> bool:
        """Queue one message; never blocks. Returns False when it was dropped.

        Without ``queue_offline`` a message published while disconnected is
        dropped: retained states and discovery are republished on reconnect.
        A payload that cannot be JSON (NaN, ±Infinity) is dropped with an error
        in the log, never sent as ``NaN``/``Infinity``.
        """
        client = self._client
        if client is None or (not self.connected and not queue_offline):
            return False
        data = _encode_or_log(topic, payload)
        if data is None:
            return False
        info = client.publish(topic, data, qos=qos, retain=retain)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            _LOGGER.debug("MQTT publish to %s dropped (%s)", topic, paho.error_string(info.rc))
            return False
        return True

    def pending(self) -> int:
        """QoS>0 messages queued or not yet acknowledged by the broker (paho refuses more than MAX_QUEUED)."""
        client = self._client
        # paho keeps them in _out_messages until the PUBACK; it has no public count
        return len(client._out_messages) if client is not None else 0

    async def wait_pending_below(self, limit: int, grace: float) -> bool:
        """Wait (at most ``grace`` seconds) until fewer than ``limit`` messages are pending."""
        return await _poll_until(lambda: self.pending() < limit, grace)

    async def flush(self, grace: float = 5.0) -> bool:
        """Wait until every queued QoS>0 message has been acknowledged (tests, shutdown)."""
        return await self.wait_pending_below(1, grace)

    # --- paho callbacks (paho's thread) ---

    def _to_loop(self, func: Callable[..., Any], *args: Any) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop is shutting down
            loop.call_soon_threadsafe(func, *args)

    def _paho_connect(self, client: paho.Client, _userdata: Any, _flags: Any, reason: ReasonCode, _props: Any) -> None:
        if reason.is_failure:
            self._to_loop(self._refused, str(reason))
            return
        # paho leaves Nagle's algorithm on: a response queued right after a discovery
        # burst would wait for the broker's delayed ACK (up to 40 ms).
        sock = client.socket()
        if sock is not None:
            with contextlib.suppress(OSError, AttributeError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # Subscribing here, still in paho's thread, renews them before any
        # message of the new session can be missed.
        for topic, qos, _handler in self._subscriptions:
            client.subscribe(topic, qos)
        self._to_loop(self._connected)

    def _paho_disconnect(self, _client: paho.Client, _userdata: Any, _flags: Any, reason: ReasonCode, _p: Any) -> None:
        self._to_loop(self._disconnected, str(reason))

    def _paho_connect_fail(self, client: paho.Client, _userdata: Any) -> None:
        self._to_loop(self._unreachable, getattr(client, "last_error", ""))

    def _paho_message(self, _client: paho.Client, _userdata: Any, msg: paho.MQTTMessage) -> None:
        message = Message(topic=msg.topic, payload=bytes(msg.payload), retain=bool(msg.retain), qos=msg.qos)
        self._to_loop(self._dispatch, message)

    # --- the same events, on the event loop ---

    def _connected(self) -> None:
        self.connected = True
        self.connections += 1
        self.connected_since = time.monotonic()
        self._failures = 0
        who = f" as {self._broker.username!r}" if self._broker.username else ""
        _LOGGER.info("Connected to the MQTT broker %s%s", self.endpoint, who)
        if self._on_connect_cb is not None:
            self._run(self._on_connect_cb)

    def _disconnected(self, reason: str) -> None:
        was = self.connected
        self.connected = False
        self.connected_since = None
        if self._stopping:
            return
        if was:
            _LOGGER.warning(
                "Lost the connection to the MQTT broker %s (%s); reconnecting (every %g s at most)",
                self.endpoint,
                reason,
                self._reconnect_max,
            )
            if self._on_disconnect_cb is not None:
                self._run(self._on_disconnect_cb)

    def _refused(self, reason: str) -> None:
        self._failures += 1
        level = logging.ERROR if self._failures == 1 else logging.DEBUG
        _LOGGER.log(level, "The MQTT broker %s refused the connection: %s; retrying", self.endpoint, reason)

    def _unreachable(self, reason: str) -> None:
        self._failures += 1
        if self._stopping:
            return
        level = logging.WARNING if self._failures == 1 else logging.DEBUG
        _LOGGER.log(
            level,
            "Cannot reach the MQTT broker %s (%s); retrying with growing delays (up to %g s)",
            self.endpoint,
            reason or "connection failed",
            self._reconnect_max,
        )

    def _dispatch(self, message: Message) -> None:
        for pattern, _qos, handler in self._subscriptions:
            if paho.topic_matches_sub(pattern, message.topic):
                self._run(handler, message)

    def _run(self, func: Callable[..., Any], *args: Any) -> None:
        try:
            result = func(*args)
        except Exception:
            _LOGGER.exception("MQTT handler %s failed", getattr(func, "__qualname__", func))
            return
        if asyncio.iscoroutine(result):
            task = asyncio.ensure_future(result)
            self._handler_tasks.add(task)
            task.add_done_callback(self._handler_done)

    def _handler_done(self, task: asyncio.Task[Any]) -> None:
        self._handler_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            _LOGGER.error("MQTT handler failed", exc_info=task.exception())


async def _poll_until(done: Callable[[], bool], grace: float, step: float = 0.02) -> bool:
    """Check ``done`` every ``step`` seconds for at most ``grace`` seconds."""
    for _ in range(max(1, int(grace / step))):
        if done():
            return True
        await asyncio.sleep(step)
    return done()


def new_client_id(gateway_id: str) -> str:
    """A per-process client id: two gateways must never take over each other's session."""
    return f"blupow-{gateway_id}-{secrets.token_hex(3)}"[:64]

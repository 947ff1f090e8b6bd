"""Stream devices: drivers for devices that notify frames on their own instead of answering Modbus.

A :class:`StreamDevice` is fed notification bytes by the link (``NotifyLink.start_notify``),
cuts them into frames with its :class:`FrameDecoder`, decodes each frame with the field
table (``Field.frame_offset`` …) and keeps the latest good one. ``read(link)`` — called
by the scheduler once per poll, like any driver's — subscribes on the first read of a
connection and returns the latest good frame that arrived since the previous read,
waiting up to ``read_wait`` seconds for one. So Home Assistant still gets one state per
poll interval, while the ~8.5 frames/s in between only cost their decoding.

A frame is good only if every value the table marks ``rejects_frame`` is present and
within its limits; a rejected frame is counted by reason and never published, so no
value of it reaches Home Assistant. Values outside their own limits (``rejects_frame``
False) are just left out.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Mapping
from typing import Any, ClassVar, Protocol

from .base import BaseDevice, DeviceProtocol, Field, NotifyLink, Reading, Values, is_finite


class FrameDecoder(Protocol):
    """Cuts a byte stream into frames; counts what it throws away (``counters``)."""

    counters: Counter[str]

    def feed(self, data: bytes) -> list[bytes]: ...

    def reset(self) -> None: ...


class NoLiveFrame(TimeoutError):
    """No good frame arrived within the read's wait; the message says what came instead."""


class StreamDevice(BaseDevice):
    """A driver for a notifying device; subclasses declare ``fields`` and ``new_decoder``."""

    abstract = True
    protocol: ClassVar[DeviceProtocol] = DeviceProtocol.NOTIFY_STREAM
    read_wait: ClassVar[float] = 8.0  # ~70 frames at 8.5 frames/s: plenty unless none is live
    # Fields whose absence makes a frame useless (the shunt: voltage and current).
    required: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        *,
        modbus_id: int | None = None,
        variant: str | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(modbus_id=modbus_id, variant=variant, config=config)
        self._decoder = self.new_decoder()
        self._counts: Counter[str] = Counter()
        self._latest: Values | None = None  # the latest good frame not yet returned by read()
        self._arrived = asyncio.Event()

    def new_decoder(self) -> FrameDecoder:
        raise NotImplementedError

    # --- StreamSink: called by the link ---

    def feed(self, data: bytes) -> None:
        for frame in self._decoder.feed(data):
            self.accept(frame)

    def reset(self) -> None:
        """A connection began or ended: drop the partial frame and any unreturned frame of the old one."""
        self._decoder.reset()
        self._latest = None
        self._arrived.clear()

    # --- frames ---

    def accept(self, frame: bytes) -> Values | None:
        """Decode and validate one frame; keep it as the latest if good. Returns its values or None."""
        values, reason = self.decode_frame(frame)
        if reason is not None:
            self._counts[f"rejected_{reason}"] += 1
            return None
        self._counts["good"] += 1
        self._latest = values
        self._arrived.set()
        return values

    def decode_frame(self, frame: bytes) -> tuple[Values, str | None]:
        """``(values, None)`` for a good frame, ``({}, reason)`` for a rejected one."""
        values: Values = {}
        for f in self.active_fields():
            if f.frame_offset is None:
                continue
            value = f.decode_frame(frame)
            reason = self._check(f, value)
            if reason is not None:
                return {}, reason
            if value is not None and f.within_limits(value):
                values[f.key] = value
        missing = [key for key in self.required if key not in values]
        if missing:
            return {}, "short"
        for f in self.active_fields():
            if f.compute is None:
                continue
            value = _computed(f, values)
            reason = self._check(f, value)
            if reason is not None:
                return {}, reason
            if value is not None and f.within_limits(value):
                values[f.key] = value
        return values, None

    @staticmethod
    def _check(f: Field, value: Any) -> str | None:
        """The rejection reason if ``value`` condemns the whole frame (``implausible_<key>``)."""
        if f.rejects_frame and value is not None and not f.within_limits(value):
            return f"implausible_{f.key}"
        return None

    def diagnostics(self) -> dict[str, int]:
        counts = self._counts + self._decoder.counters
        return dict(sorted(counts.items()))

    # --- polling ---

    async def read(self, link: NotifyLink) -> Reading:  # type: ignore[override]
        await link.start_notify(self.gatt.notify_service, self.gatt.notify_char, self)
        if self._latest is None:
            try:
                async with asyncio.timeout(self.read_wait):
                    await self._arrived.wait()
            except TimeoutError:
                raise NoLiveFrame(self._no_frame_text()) from None
        values, self._latest = self._latest or {}, None
        self._arrived.clear()
        return Reading(values=dict(values), diagnostics=self.diagnostics())

    def _no_frame_text(self) -> str:
        seen = ", ".join(f"{k} {v}" for k, v in self.diagnostics().items() if v) or "nothing"
        return f"no live frame within {self.read_wait:g} s (frames so far: {seen})"


def _computed(f: Field, values: Values) -> Any:
    assert f.compute is not None
    try:
        value = f.compute(values)
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None
    if not is_finite(value):
        return None
    if isinstance(value, float):
        value = round(value, 3 if f.precision is None else f.precision)
    return value

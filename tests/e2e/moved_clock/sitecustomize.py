"""Loaded into Home Assistant's process only, when the e2e stack moves its clock (stack.py).

libfaketime, with the monotonic clock left real, fails ``clock_nanosleep`` on an absolute
monotonic deadline with EINVAL, and that is how Python's ``time.sleep`` waits (paho-mqtt's
reconnect loop died of it). A ``select`` with a relative timeout is not affected, so
``time.sleep`` waits with it here. Nothing else changes: every clock reading is libfaketime's.
"""

from __future__ import annotations

import select
import time


def _sleep(seconds: float) -> None:
    if seconds < 0:
        raise ValueError("sleep length must be non-negative")
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        select.select([], [], [], left)


time.sleep = _sleep

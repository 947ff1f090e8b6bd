"""Stopping tasks: bounded, without losing their cancellation or swallowing the caller's.

Two traps made the command loop hang for good (issue 14):

* ``await task`` after ``task.cancel()`` waits without a bound, and a
  ``suppress(CancelledError)`` around it also swallows the *caller's* own
  cancellation (it cannot tell the two apart);
* a cancellation can be lost inside the task: Python 3.11's ``asyncio.wait_for``
  (used by libraries, bleak among them) drops a cancel that arrives as its inner
  future finishes, and the task carries on as if never cancelled.

:func:`stop_task` answers both: it waits with ``asyncio.wait`` (which never
raises the task's exception or cancellation, only the caller's), it repeats the
cancel while the task is still running (a lost cancel is delivered again), and
it gives up after ``within`` seconds with a logged warning instead of hanging.
Gateway code stops every task it owns through here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

_LOGGER = logging.getLogger(__name__)

STOP_TIMEOUT = 5.0
# Between repeated cancels: long enough for a task's own clean-up to finish (a
# BLE disconnect), short enough that a lost cancel costs little.
RECANCEL_INTERVAL = 0.5


async def stop_task(task: asyncio.Future[Any] | None, within: float = STOP_TIMEOUT) -> bool:
    """Cancel ``task`` and wait at most ``within`` s for it to end; True if it ended.

    Never raises the task's own outcome. A cancellation of the caller propagates
    as usual (the task is cancelled, but not waited for, then).
    """
    return await stop_tasks([] if task is None else [task], within)


async def stop_tasks(tasks: Iterable[asyncio.Future[Any] | None], within: float = STOP_TIMEOUT) -> bool:
    """:func:`stop_task` for several tasks at once, sharing one deadline."""
    current = asyncio.current_task()
    pending = {t for t in tasks if t is not None and not t.done() and t is not current}
    if not pending:
        return True
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while pending:
        for task in pending:
            task.cancel()
        remaining = deadline - loop.time()
        if remaining <= 0:
            break
        _done, pending = await asyncio.wait(pending, timeout=min(RECANCEL_INTERVAL, remaining))
    for task in pending:
        _LOGGER.warning("Task %s did not stop within %g s; left behind", _name(task), within)
    return not pending


def _name(task: asyncio.Future[Any]) -> str:
    get_name = getattr(task, "get_name", None)
    return str(get_name()) if get_name is not None else repr(task)

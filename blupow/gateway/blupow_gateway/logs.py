"""Logging in the add-on's style: ``[HH:MM:SS] LEVEL: message`` on stdout.

The Supervisor's Log tab shows the container's stdout, and the add-on's bash scripts log through
bashio in this format, so the gateway's lines read the same. The seven ``log_level`` option
values map onto Python levels (TRACE=5 and NOTICE=25 are added).

Secrets (the MQTT password, the Supervisor token) are registered with :func:`register_secret`
and masked in every record, arguments and tracebacks included: when the record is created (so
every handler, whatever its order, sees the masked text), again by a filter on our handler, and
once more in the finished line. This is defence in depth: no code is meant to log a secret.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any, TextIO

__all__ = [
    "LEVELS",
    "MASK",
    "NOTICE",
    "QUIET_LOGGERS",
    "TRACE",
    "BashioFormatter",
    "SecretFilter",
    "clear_secrets",
    "level_name",
    "mask",
    "register_secret",
    "setup_logging",
]

TRACE = 5
NOTICE = 25
logging.addLevelName(TRACE, "TRACE")
logging.addLevelName(NOTICE, "NOTICE")

LEVELS: dict[str, int] = {
    "trace": TRACE,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "notice": NOTICE,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "fatal": logging.CRITICAL,
}
# bashio's names; CRITICAL is printed FATAL like bashio::log.fatal.
_NAMES: tuple[tuple[int, str], ...] = (
    (logging.CRITICAL, "FATAL"),
    (logging.ERROR, "ERROR"),
    (logging.WARNING, "WARNING"),
    (NOTICE, "NOTICE"),
    (logging.INFO, "INFO"),
    (logging.DEBUG, "DEBUG"),
    (TRACE, "TRACE"),
)
# Chatty libraries: shown at warning and above unless the user asked for debug or trace.
QUIET_LOGGERS = ("bleak", "bleak_retry_connector", "dbus_fast", "paho", "asyncio")
MASK = "**********"

_secrets: set[str] = set()
_secrets_lock = threading.Lock()
_HANDLER_MARK = "_blupow_handler"
_FACTORY_MARK = "_blupow_masking_factory"


def register_secret(value: str | None) -> None:
    """Mask ``value`` in every log line from now on. Empty values are ignored."""
    if value:
        with _secrets_lock:
            _secrets.add(value)


def clear_secrets() -> None:
    """Forget every registered secret (tests)."""
    with _secrets_lock:
        _secrets.clear()


def mask(text: str) -> str:
    """``text`` with every registered secret replaced by :data:`MASK`."""
    with _secrets_lock:
        # Longest first, so a secret that contains another is masked whole.
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def level_name(levelno: int) -> str:
    """bashio's name for a level; levels in between take the next lower name."""
    for number, name in _NAMES:
        if levelno >= number:
            return name
    return "TRACE"


class SecretFilter(logging.Filter):
    """Renders each record's message, traceback and stack now, with secrets masked.

    It never drops a record. Because it changes the record in place, every handler that sees the
    record afterwards gets the masked text too.
    """

    _traceback_formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception as exc:  # a bad format string must not leak its raw arguments
            message = f"{record.msg!s} {record.args!r} (log call failed: {type(exc).__name__})"
        record.msg = mask(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = self._traceback_formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask(record.exc_text)
        if record.stack_info:
            record.stack_info = mask(record.stack_info)
        return True


class BashioFormatter(logging.Formatter):
    """``[HH:MM:SS] LEVEL: message``; other libraries' lines also name their logger."""

    def __init__(self) -> None:
        super().__init__(datefmt="%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.name != "root" and not record.name.startswith("blupow_gateway"):
            message = f"({record.name}) {message}"
        line = f"[{self.formatTime(record, self.datefmt)}] {level_name(record.levelno)}: {message}"
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line += "\n" + record.exc_text
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        # Second line of defence: mask the finished text as well.
        return mask(line)


def _install_masking_record_factory() -> None:
    """Mask records as they are created, before any handler or filter sees them."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, _FACTORY_MARK, False):
        return
    masker = SecretFilter()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        masker.filter(record)
        return record

    setattr(factory, _FACTORY_MARK, True)
    logging.setLogRecordFactory(factory)


def setup_logging(level: str, *, stream: TextIO | None = None) -> logging.Handler:
    """Send all logging to ``stream`` (default stdout) at the option's ``level``.

    Calling it again replaces the handler it installed before, so a changed level applies at once.
    """
    try:
        number = LEVELS[level]
    except KeyError:
        raise ValueError(f"unknown log level {level!r} (use {', '.join(LEVELS)})") from None
    _install_masking_record_factory()
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
        old.close()
    handler = logging.StreamHandler(stream if stream is not None else sys.stdout)
    setattr(handler, _HANDLER_MARK, True)
    handler.setFormatter(BashioFormatter())
    handler.addFilter(SecretFilter())
    root.addHandler(handler)
    root.setLevel(number)
    verbose = number <= logging.DEBUG
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if verbose else logging.WARNING)
    return handler

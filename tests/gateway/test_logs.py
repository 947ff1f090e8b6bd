"""bashio-style log lines, the seven option levels, quiet libraries, secret masking."""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator

import pytest

from blupow_gateway.logs import (
    LEVELS,
    MASK,
    NOTICE,
    QUIET_LOGGERS,
    TRACE,
    clear_secrets,
    level_name,
    mask,
    register_secret,
    setup_logging,
)

LINE = re.compile(r"^\[(\d\d):(\d\d):(\d\d)\] (TRACE|DEBUG|INFO|NOTICE|WARNING|ERROR|FATAL): (.*)$")
log = logging.getLogger("blupow_gateway.test")


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    """Where setup_logging writes; the root logger and library levels are restored afterwards."""
    root = logging.getLogger()
    saved_level, saved_handlers = root.level, list(root.handlers)
    saved_quiet = {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
    saved_factory = logging.getLogRecordFactory()
    try:
        yield io.StringIO()
    finally:
        for handler in [h for h in root.handlers if h not in saved_handlers]:
            root.removeHandler(handler)
        root.setLevel(saved_level)
        for name, level in saved_quiet.items():
            logging.getLogger(name).setLevel(level)
        logging.setLogRecordFactory(saved_factory)
        clear_secrets()


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_line_format(stream: io.StringIO) -> None:
    setup_logging("info", stream=stream)
    log.info("Connected to %s", "broker")
    (line,) = lines(stream)
    match = LINE.match(line)
    assert match, line
    hours, minutes, seconds = (int(match[i]) for i in (1, 2, 3))
    assert hours < 24 and minutes < 60 and seconds < 60
    assert match[4] == "INFO"
    assert match[5] == "Connected to broker"


def test_every_level_has_its_bashio_name(stream: io.StringIO) -> None:
    setup_logging("trace", stream=stream)
    for number in (TRACE, logging.DEBUG, logging.INFO, NOTICE, logging.WARNING, logging.ERROR, logging.CRITICAL):
        log.log(number, "at %d", number)
    names = [LINE.match(line)[4] for line in lines(stream)]  # type: ignore[index]
    assert names == ["TRACE", "DEBUG", "INFO", "NOTICE", "WARNING", "ERROR", "FATAL"]


def test_level_names_between_levels() -> None:
    assert level_name(NOTICE + 1) == "NOTICE"
    assert level_name(logging.CRITICAL + 10) == "FATAL"
    assert level_name(1) == "TRACE"


@pytest.mark.parametrize(
    ("option", "shown"),
    [
        ("trace", ["TRACE", "DEBUG", "INFO", "NOTICE", "WARNING", "ERROR", "FATAL"]),
        ("debug", ["DEBUG", "INFO", "NOTICE", "WARNING", "ERROR", "FATAL"]),
        ("info", ["INFO", "NOTICE", "WARNING", "ERROR", "FATAL"]),
        ("notice", ["NOTICE", "WARNING", "ERROR", "FATAL"]),
        ("warning", ["WARNING", "ERROR", "FATAL"]),
        ("error", ["ERROR", "FATAL"]),
        ("fatal", ["FATAL"]),
    ],
)
def test_option_levels_filter(stream: io.StringIO, option: str, shown: list[str]) -> None:
    setup_logging(option, stream=stream)
    for number in (TRACE, logging.DEBUG, logging.INFO, NOTICE, logging.WARNING, logging.ERROR, logging.CRITICAL):
        log.log(number, "x")
    assert [LINE.match(line)[4] for line in lines(stream)] == shown  # type: ignore[index]


def test_the_seven_option_levels() -> None:
    assert list(LEVELS) == ["trace", "debug", "info", "notice", "warning", "error", "fatal"]


def test_unknown_level() -> None:
    with pytest.raises(ValueError, match=r"unknown log level 'verbose' \(use trace, debug, info"):
        setup_logging("verbose")


@pytest.mark.parametrize(("option", "library_info_shown"), [("info", False), ("debug", True), ("trace", True)])
def test_libraries_are_quiet_unless_debugging(stream: io.StringIO, option: str, library_info_shown: bool) -> None:
    setup_logging(option, stream=stream)
    for name in ("bleak.backends.bluezdbus", "dbus_fast", "paho.mqtt.client"):
        logging.getLogger(name).info("library detail")
        logging.getLogger(name).warning("library problem")
    text = stream.getvalue()
    assert text.count("library problem") == 3
    assert text.count("library detail") == (3 if library_info_shown else 0)
    # A library's lines say which library they come from.
    assert "WARNING: (paho.mqtt.client) library problem" in text


def test_calling_setup_again_replaces_the_handler(stream: io.StringIO) -> None:
    other = io.StringIO()
    setup_logging("info", stream=other)
    setup_logging("warning", stream=stream)
    log.info("hidden")
    log.warning("once")
    assert other.getvalue() == ""
    assert [line.split(": ", 1)[1] for line in lines(stream)] == ["once"]


def test_setup_defaults_to_stdout(stream: io.StringIO, capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("info")
    log.info("to stdout")
    captured = capsys.readouterr()
    assert "INFO: to stdout" in captured.out
    assert captured.err == ""


# --- secrets -----------------------------------------------------------------------------------


def test_registered_secret_is_masked_everywhere(stream: io.StringIO) -> None:
    secret = "hunter2-0f9c5d7e"
    register_secret(secret)
    setup_logging("trace", stream=stream)
    log.info("password is %s", secret)
    log.info(f"inline {secret}")
    logging.getLogger("paho.mqtt.client").warning("CONNECT user=x password=%r", secret)
    try:
        raise RuntimeError(f"auth failed for {secret}")
    except RuntimeError:
        log.exception("connect failed")
    log.info("with stack", stack_info=True, extra={"note": secret})
    text = stream.getvalue()
    assert secret not in text
    assert text.count(MASK) == 4  # message, f-string, library line, traceback
    assert f"RuntimeError: auth failed for {MASK}" in text


def test_bad_format_arguments_do_not_leak(stream: io.StringIO) -> None:
    secret = "s3cr3t-7a1b"
    register_secret(secret)
    setup_logging("info", stream=stream)
    log.info("two %s %s", secret)  # noqa: PLE1206 - one argument short on purpose: must not raise or leak
    text = stream.getvalue()
    assert secret not in text
    assert "log call failed: TypeError" in text


def test_mask_longest_secret_first() -> None:
    try:
        register_secret("abc")
        register_secret("abcdef")
        register_secret("")
        register_secret(None)
        assert mask("x abcdef y abc z") == f"x {MASK} y {MASK} z"
        assert mask("nothing here") == "nothing here"
    finally:
        clear_secrets()
    assert mask("abc") == "abc"


def test_records_seen_by_other_handlers_are_masked_too(stream: io.StringIO) -> None:
    # The filter renders the record in place, so a handler added after ours sees the masked text.
    secret = "tok-91c2"
    register_secret(secret)
    setup_logging("info", stream=stream)
    seen: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    collector = Collect()
    logging.getLogger().addHandler(collector)
    try:
        log.info("token %s", secret)
    finally:
        logging.getLogger().removeHandler(collector)
    assert seen == [f"token {MASK}"]


def test_handlers_installed_before_ours_see_masked_records(
    stream: io.StringIO, caplog: pytest.LogCaptureFixture
) -> None:
    # pytest's capture handler was on the root logger before setup_logging ran.
    secret = "pw-c0ffee-42"
    register_secret(secret)
    setup_logging("info", stream=stream)
    with caplog.at_level(logging.INFO):
        log.warning("broker password %s rejected", secret)
    assert caplog.messages == [f"broker password {MASK} rejected"]
    assert secret not in caplog.text

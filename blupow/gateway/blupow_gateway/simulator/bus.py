"""A private ``dbus-daemon`` that stands in for the system bus in tests and ``blupow-sim``.

bleak and dbus-fast read ``DBUS_SYSTEM_BUS_ADDRESS`` when they connect, so pointing
that variable at this bus is the only seam needed to run the real BlueZ code path
against :mod:`.fake_bluez`. The policy mirrors the system bus (nobody owns names or
receives method calls unless allowed) with holes for ``org.bluez`` only, so a
gateway that works here needs no extra D-Bus permissions on a real system.

The daemon never outlives its owner: :meth:`PrivateBus.stop` runs on context exit
(also on exceptions), an ``atexit`` hook covers interpreter exit, and where
``setpriv`` exists the daemon gets ``PDEATHSIG`` so it dies with the owning process
even after ``SIGKILL``.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import select
import shutil
import signal
import subprocess
import tempfile
import time
import weakref
from pathlib import Path
from types import TracebackType

DBUS_DAEMON = "dbus-daemon"
ENV_VAR = "DBUS_SYSTEM_BUS_ADDRESS"

_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus"/>
    <deny send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"
          send_member="UpdateActivationEnvironment"/>
    <!-- what /etc/dbus-1/system.d/bluetooth.conf grants -->
    <allow own="org.bluez"/>
    <allow send_destination="org.bluez"/>
  </policy>
</busconfig>
"""

_RUNNING: weakref.WeakSet[PrivateBus] = weakref.WeakSet()


class BusError(RuntimeError):
    """The private bus could not be started."""


def pdeathsig_prefix(sig: str = "TERM") -> list[str]:
    """``setpriv --pdeathsig`` as a command prefix, or nothing where setpriv is missing.

    The parent-death signal survives ``exec`` and makes the child die with the
    thread that started it, so nothing is orphaned when the owner is SIGKILLed.
    """
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", sig, "--"] if setpriv else []


class PrivateBus:
    """Start/stop a private system-like bus; usable as a sync or async context manager."""

    def __init__(self, directory: str | os.PathLike[str] | None = None, *, start_timeout: float = 5.0) -> None:
        self._given_dir = Path(directory) if directory is not None else None
        self._dir: Path | None = None
        self._start_timeout = start_timeout
        self.process: subprocess.Popen[bytes] | None = None
        self._address: str | None = None

    @property
    def address(self) -> str:
        if self._address is None:
            raise BusError("the private bus is not running")
        return self._address

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def socket_path(self) -> Path:
        if self._dir is None:
            raise BusError("the private bus is not running")
        return self._dir / "system_bus_socket"

    def environ(self) -> dict[str, str]:
        """Environment additions that point bleak/dbus-fast at this bus."""
        return {ENV_VAR: self.address}

    def start(self) -> str:
        if self.running:
            return self.address
        daemon = shutil.which(DBUS_DAEMON)
        if daemon is None:
            raise BusError(f"{DBUS_DAEMON} not found on PATH (Debian: apt-get install dbus-daemon)")
        self._dir = self._given_dir or Path(tempfile.mkdtemp(prefix="blupow-dbus-"))
        self._dir.mkdir(parents=True, exist_ok=True)
        config = self._dir / "bus.conf"
        config.write_text(_CONFIG.format(socket=self._dir / "system_bus_socket"), encoding="utf-8")
        log = (self._dir / "dbus-daemon.log").open("wb")
        try:
            self.process = subprocess.Popen(
                [
                    *pdeathsig_prefix(),
                    daemon,
                    f"--config-file={config}",
                    "--nofork",
                    "--nopidfile",
                    "--nosyslog",
                    "--print-address=1",
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
            )
        finally:
            log.close()
        _RUNNING.add(self)
        try:
            self._address = self._read_address()
        except BaseException:
            self.stop()
            raise
        return self._address

    def _read_address(self) -> str:
        assert self.process is not None and self.process.stdout is not None
        out = self.process.stdout
        deadline = time.monotonic() + self._start_timeout
        buf = b""
        while not buf.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BusError(f"{DBUS_DAEMON} printed no address within {self._start_timeout:g} s")
            ready, _, _ = select.select([out], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(out.fileno(), 4096)
            if not chunk:
                raise BusError(f"{DBUS_DAEMON} exited during start-up: {self._log_tail()}")
            buf += chunk
        out.close()  # nothing else is printed; do not keep the pipe
        # dbus-daemon appends ",guid=..."; clients accept it, keep it as printed.
        return buf.decode().strip()

    def _log_tail(self) -> str:
        if self._dir is None:
            return ""
        with contextlib.suppress(OSError):
            return (self._dir / "dbus-daemon.log").read_text(errors="replace").strip()[-500:]
        return ""

    def stop(self) -> None:
        proc, self.process = self.process, None
        self._address = None
        _RUNNING.discard(self)
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=2)
        if proc is not None and proc.stdout is not None and not proc.stdout.closed:
            proc.stdout.close()
        if self._dir is not None:
            if self._given_dir is None:
                shutil.rmtree(self._dir, ignore_errors=True)
            else:  # a caller's directory: remove only what we put there
                for name in ("bus.conf", "dbus-daemon.log", "system_bus_socket"):
                    with contextlib.suppress(OSError):
                        (self._dir / name).unlink()
        self._dir = None

    def __enter__(self) -> PrivateBus:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    async def __aenter__(self) -> PrivateBus:
        # Start-up takes a few milliseconds; not worth a thread.
        self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


@atexit.register
def _stop_all() -> None:
    for bus in list(_RUNNING):
        bus.stop()

"""Child processes of the end-to-end stack: started in their own process group, always stopped.

Every process runs in a new session (so Ctrl-C in the demo's terminal reaches only the Python
orchestrator, which then stops the children in a sensible order) and, where ``setpriv`` exists,
with a parent-death signal, so even a SIGKILLed orchestrator leaves nothing running.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, TypeVar

T = TypeVar("T")

SETPRIV = shutil.which("setpriv")


class StackError(RuntimeError):
    """A part of the stack did not come up or misbehaved; the message says which and why."""


class FatalStackError(StackError):
    """Raised inside a :func:`wait_until` check: waiting longer cannot help (a process died)."""


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.3):
        return True
    return False


def wait_until(
    check: Callable[[], T | None],
    timeout: float,
    what: str,
    interval: float = 0.25,
    describe: Callable[[], str] | None = None,
) -> T:
    """Call ``check`` until it returns something truthy; StackError after ``timeout`` seconds.

    ``describe`` adds context (e.g. the last value seen) to the error message.
    """
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            result = check()
        except FatalStackError:
            raise
        except (OSError, ValueError, KeyError, StackError) as exc:  # not ready yet: keep trying
            result, last_error = None, exc
        if result:
            return result
        if time.monotonic() >= deadline:
            detail = f": {describe()}" if describe is not None else ""
            reason = f" (last error: {last_error})" if last_error else ""
            raise StackError(f"timed out after {timeout:g} s waiting for {what}{reason}{detail}")
        time.sleep(interval)


class Process:
    """One child process with its output in a log file."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        stdin_pipe: bool = False,
        stdout_pipe: bool = False,
        stop_timeout: float = 20.0,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.stdin_pipe = stdin_pipe
        self.stdout_pipe = stdout_pipe
        self.stop_timeout = stop_timeout
        self.popen: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen is not None else None

    def start(self) -> None:
        if self.running:
            raise StackError(f"{self.name} is already running")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        argv = self.argv
        if SETPRIV:  # the kernel sends SIGTERM when we die, whatever the way
            argv = [SETPRIV, "--pdeathsig", "TERM", "--", *argv]
        self.popen = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE if self.stdin_pipe else subprocess.DEVNULL,
            stdout=subprocess.PIPE if self.stdout_pipe else self._log,
            stderr=self._log,
            env=self.env,
            cwd=self.cwd,
            start_new_session=True,
        )

    def exited_early(self) -> str | None:
        """A description when the process already exited, for error messages."""
        if self.popen is None or self.popen.poll() is None:
            return None
        return f"{self.name} exited with code {self.popen.returncode}; log tail:\n{self.tail()}"

    def stop(self, timeout: float | None = None) -> int | None:
        """SIGTERM the process group, wait, then SIGKILL; returns the exit code."""
        popen, self.popen = self.popen, None
        if popen is None:
            return None
        timeout = self.stop_timeout if timeout is None else timeout
        if popen.poll() is None:
            _signal_group(popen.pid, signal.SIGTERM)
            try:
                popen.wait(timeout)
            except subprocess.TimeoutExpired:
                _signal_group(popen.pid, signal.SIGKILL)
                popen.wait(5)
        # Helpers the child started in its group (e.g. the simulator's dbus-daemon) go too.
        _signal_group(popen.pid, signal.SIGKILL)
        for stream in (popen.stdin, popen.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        if self._log is not None:
            self._log.close()
            self._log = None
        return popen.returncode

    def tail(self, lines: int = 60) -> str:
        return tail(self.log_path, lines)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def tail(path: Path, lines: int = 60) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 200 * lines))
            text = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return f"({path} not found)"
    return "\n".join(text.splitlines()[-lines:])

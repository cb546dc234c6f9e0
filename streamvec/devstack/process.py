"""A server process started detached and tracked by a pid file, shared by the local servers."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from streamvec import files
from streamvec.errors import DevStackError

_PR_SET_PDEATHSIG = 1
POLL_INTERVAL_S = 0.2
_TAIL_BYTES = 256 * 1024


def _die_with_parent() -> None:
    """Ask Linux to SIGTERM this child when the process that started it dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def pid_alive(pid: int) -> bool:
    """Tell whether `pid` names a live process (a zombie counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        # A zombie whose parent never reaps it (PID 1 in some containers) answers kill(0).
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


def write_properties(path: Path, properties: dict[str, str]) -> None:
    """Write a server's `key=value` configuration file in one rename."""
    text = "".join(f"{k}={v}\n" for k, v in properties.items())
    files.write_atomic(path, "# Written by streamvec on every start; edits are lost.\n" + text,
                       durable=False)


def cmdline(pid: int) -> str | None:
    """Return the command line of `pid` joined by spaces, or None where /proc cannot tell."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


class ServerProcess:
    """Base of the local servers: spawn detached, find again by pid file, stop, show the log."""

    name = "server"

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self._popen: subprocess.Popen[bytes] | None = None

    @property
    def pid_file(self) -> Path:
        """The file that holds the pid of the running server."""
        return self.data_dir / f"{self.name}.pid"

    @property
    def log_path(self) -> Path:
        """The file that receives the server's output."""
        return self.data_dir / f"{self.name}.log"

    def owns(self, command: str) -> bool:
        """Tell whether a process with this command line is this server (not a reused pid)."""
        raise NotImplementedError

    def start(self, die_with_parent: bool = False) -> None:
        """Launch the server detached unless it runs; `die_with_parent` ties it to this process."""
        raise NotImplementedError

    def healthy(self) -> bool:
        """Tell whether the server answers its protocol's simplest request."""
        raise NotImplementedError

    def wait_healthy(self, timeout: float) -> None:
        """Block until the server is healthy; raise DevStackError with the log tail if not."""
        raise NotImplementedError

    @property
    def pid(self) -> int | None:
        """The pid of this server if it is running, else None."""
        if self._popen is not None:
            return self._popen.pid if self._popen.poll() is None else None
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        if not pid_alive(pid):
            return None
        command = cmdline(pid)
        return pid if command is None or self.owns(command) else None

    def running(self) -> bool:
        """Tell whether the server process is alive."""
        return self.pid is not None

    def spawn(self, argv: Sequence[str], *, die_with_parent: bool = False) -> None:
        """Start `argv` in its own session with output appended to the log, and record its pid."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self._popen = subprocess.Popen(  # noqa: S603 - argv is built here, never by a shell
                list(argv),
                cwd=self.data_dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent if die_with_parent else None,
            )
        files.write_atomic(self.pid_file, f"{self._popen.pid}\n", durable=False)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the server: SIGTERM, then SIGKILL once `timeout` seconds have passed."""
        pid = self.pid
        if pid is not None:
            self._signal(pid, signal.SIGTERM)
            if not self._wait_gone(pid, timeout):
                self._signal(pid, signal.SIGKILL)
                self._wait_gone(pid, 10.0)
        self._popen = None
        self.pid_file.unlink(missing_ok=True)

    def _signal(self, pid: int, sig: int) -> None:
        try:
            # The server leads its own process group; signal the group so helpers go too.
            os.killpg(pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError:
            os.kill(pid, sig)

    def _wait_gone(self, pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._popen is not None and self._popen.poll() is not None:
                return True
            if self._popen is None and not pid_alive(pid):
                return True
            time.sleep(POLL_INTERVAL_S)
        return False

    def log_tail(self, lines: int = 30) -> str:
        """Return the last `lines` lines of the server's log, or a note that there is none."""
        try:
            with open(self.log_path, "rb") as log:
                # A long-lived broker's log can be large; its tail is all an error needs.
                log.seek(max(0, log.seek(0, os.SEEK_END) - _TAIL_BYTES))
                text = log.read().decode(errors="replace")
        except OSError:
            return f"(no log at {self.log_path})"
        return "\n".join(text.splitlines()[-lines:])

    def wait_until(self, check: Callable[[], bool], timeout: float, what: str) -> None:
        """Poll `check` until true; raise with the log tail if the server dies or time runs out."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.running():
                raise DevStackError(self._failure(f"{self.name} exited before {what}"))
            if check():
                return
            if time.monotonic() >= deadline:
                raise DevStackError(self._failure(f"{self.name} not {what} after {timeout:.0f} s"))
            time.sleep(POLL_INTERVAL_S)

    def _failure(self, headline: str) -> str:
        return f"{headline}; last lines of {self.log_path}:\n{self.log_tail()}"

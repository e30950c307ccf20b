"""Detached child processes tracked by pid files, and TCP port checks.

A pid file alone is not proof: the pid may have been reused by an unrelated process after a
reboot or a crash. Every check here therefore also reads ``/proc/<pid>/cmdline`` and requires a
marker (the absolute path of the component's generated config file, unique per data dir), so
`amb stack down` can never signal a process it did not start.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

# Popen objects of children started by this Python process, kept so they are reaped (no zombies,
# no "subprocess is still running" ResourceWarning) when a test session stops its own stack.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}
_PR_SET_PDEATHSIG = 1


def _reap(pid: int) -> None:
    child = _CHILDREN.get(pid)
    if child is not None:
        if child.poll() is not None:
            _CHILDREN.pop(pid, None)
        return
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def pid_alive(pid: int) -> bool:
    """True if ``pid`` is a live process (zombies count as dead; our own zombies are reaped)."""
    _reap(pid)
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # Field 3 (after the parenthesised command name) is the state; Z = zombie, X = dead.
    state = stat.rsplit(")", 1)[-1].split()[0]
    return state not in ("Z", "X")


def cmdline(pid: int) -> list[str]:
    """The argv of ``pid``, or [] if it is gone or unreadable."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def read_pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def owned_pid(pid_file: Path, marker: str) -> int | None:
    """The pid in ``pid_file`` if that process is alive and its command line contains ``marker``.

    A stale pid file (process gone, or pid reused by something else) is removed.
    """
    pid = read_pid(pid_file)
    if pid is None:
        return None
    if pid_alive(pid) and any(marker in arg for arg in cmdline(pid)):
        return pid
    with contextlib.suppress(FileNotFoundError):
        pid_file.unlink()
    return None


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM it when the process that started it dies."""
    ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def spawn(argv: Sequence[str], *, log_path: Path, pid_file: Path, cwd: Path | None = None,
          append: bool = True, die_with_parent: bool = False) -> int:
    """Start ``argv`` detached (own session, stdin closed, stdout/stderr to ``log_path``).

    ``die_with_parent`` is for test sessions and benchmarks: a run killed with SIGKILL (CI
    timeout, a second Ctrl-C) then leaves no broker behind. `amb stack up` does not use it: its
    processes must outlive the command.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab" if append else "wb") as log:
        child = subprocess.Popen(
            list(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            cwd=cwd, start_new_session=True, close_fds=True,
            preexec_fn=_die_with_parent if die_with_parent else None,
        )
    _CHILDREN[child.pid] = child
    tmp = pid_file.with_suffix(".pid.tmp")
    tmp.write_text(f"{child.pid}\n")
    tmp.replace(pid_file)
    return child.pid


def terminate(pid: int, timeout: float = 30.0) -> bool:
    """SIGTERM ``pid`` (its whole process group when it leads one), SIGKILL after ``timeout``.

    Returns True if it had to be killed.
    """

    def send(sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            if os.getpgid(pid) == pid:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)

    try:
        send(signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return False
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        send(signal.SIGKILL)
    deadline = time.monotonic() + 5
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return True


def port_free(host: str, port: int) -> bool:
    """True if nothing listens on ``host:port`` (we could bind it ourselves)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True if something accepts TCP connections on ``host:port``."""
    connect_host = "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host
    try:
        with socket.create_connection((connect_host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct ports the kernel reports free right now (held open together, then released)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock, so two `amb stack` commands never race on one data dir or cache."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def tail(path: Path, lines: int = 20, since: int = 0) -> list[str]:
    """The last ``lines`` lines of a text file ([] if missing), from byte ``since`` on at most;
    reads at most the last 256 KiB."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(since, size - 256 * 1024))
            data = fh.read()
    except OSError:
        return []
    return data.decode(errors="replace").splitlines()[-lines:]

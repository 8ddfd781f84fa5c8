"""Process bookkeeping for the local stack: start detached, check, and stop by PID only."""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import IO

_random = random.SystemRandom()  # not the seeded global: tests seed that one


def spawn(
    argv: list[str], *, cwd: Path, log_file: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in its own session so it outlives the CLI that started it."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as log:
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )
    return proc


def is_running(pid: int, marker: str) -> bool:
    """True if ``pid`` is alive and its command line contains ``marker``.

    The marker guards against a recycled PID: we never signal a process that is not ours.
    """
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    state = stat.rpartition(")")[2].split()[0]
    if state == "Z":  # a zombie is gone for our purposes; reap it if it is our child
        _reap(pid)
        return False
    return marker in cmdline


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _alive(pid: int) -> bool:
    """True until the process is gone (a zombie counts as gone, and is reaped if ours)."""
    return is_running(pid, "")


def stop(pid: int, marker: str, *, timeout: float = 15.0) -> bool:
    """SIGTERM ``pid`` (if it is ours), wait until it is gone, then SIGKILL if needed.

    Returns True if it was running. The marker is checked once, before signalling: an
    exiting process loses its command line before it is gone.
    """
    if not is_running(pid, marker):
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    while _alive(pid):
        time.sleep(0.05)
    return True


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (outgoing connections take those)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(host: str = "127.0.0.1") -> int:
    """A free TCP port on ``host``, reserved for this process (for tests and ad-hoc stacks)."""
    return free_ports(1, host)


def free_ports(count: int, host: str = "127.0.0.1") -> int:
    """The first of ``count`` consecutive free ports (a sharded stack counts up from it).

    Taken at random below the kernel's ephemeral range: a port the kernel handed out for
    ``bind(0)`` is also the kind it hands to outgoing connections, and one did take a
    ClickHouse shard's port between this check and the server's start (seen in a test run).

    A port is free only until its server binds it, so each one handed out is also reserved
    (see ``_reserve``) while this process runs: no later call, here or in another process
    asking the same way (the other pytest-xdist workers), hands it out again before that
    server is up. Unreserved, a CI run gave the broker a sharded stack's native port.
    """
    low, high = 10_000, _ephemeral_low() - count
    if high - low < 1_000:  # an unusual ephemeral range: anywhere above the system ports
        low, high = 1_024, 65_535 - count
    for _ in range(500):
        first = _random.randint(low, high)
        ports = range(first, first + count)
        if all(_bindable(host, port) for port in ports) and _reserve(ports):
            return first
    raise RuntimeError(f"no {count} consecutive free ports on {host}")


_RESERVED_DIR = Path(tempfile.gettempdir()) / f"llm-usage-ports-{os.getuid()}"
_reservations: dict[int, IO[bytes]] = {}  # port -> its locked file, oldest first
_HELD = 256  # reservations kept open; the oldest goes (its server bound it long ago)


def _reserve(ports: range) -> bool:
    """Lock one file per port (all or none); False if another caller holds any of them.

    ``flock`` locks belong to the open file, so they exclude this process's own later
    calls as well as other processes, and the kernel drops them when the process ends:
    no stale reservation survives a crash.
    """
    _RESERVED_DIR.mkdir(exist_ok=True)
    taken: list[int] = []
    for port in ports:
        handle = _locked(_RESERVED_DIR / str(port))
        if handle is None:
            for own in taken:
                _reservations.pop(own).close()
            return False
        _reservations[port] = handle
        taken.append(port)
    while len(_reservations) > _HELD:
        _reservations.pop(next(iter(_reservations))).close()
    return True


def _locked(path: Path) -> IO[bytes] | None:
    """``path`` opened and exclusively locked, or None while someone else holds it."""
    try:
        handle = path.open("ab")
    except OSError:  # another user's file, say: not ours to reserve
        return None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        return None
    return handle


def _bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True

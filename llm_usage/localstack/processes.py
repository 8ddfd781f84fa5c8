"""Process bookkeeping for the local stack: start detached, check, and stop by PID only."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import time
from pathlib import Path

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
    """A currently free TCP port on ``host`` (for tests and ad-hoc stacks)."""
    return free_ports(1, host)


def free_ports(count: int, host: str = "127.0.0.1") -> int:
    """The first of ``count`` consecutive free ports (a sharded stack counts up from it).

    Taken at random below the kernel's ephemeral range: a port the kernel handed out for
    ``bind(0)`` is also the kind it hands to outgoing connections, and one did take a
    ClickHouse shard's port between this check and the server's start (seen in a test run).
    Ask once for all the ports a stack needs: two separate calls can overlap.
    """
    low, high = 10_000, _ephemeral_low() - count
    if high - low < 1_000:  # an unusual ephemeral range: anywhere above the system ports
        low, high = 1_024, 65_535 - count
    for _ in range(500):
        first = _random.randint(low, high)
        if all(_bindable(host, first + i) for i in range(count)):
            return first
    raise RuntimeError(f"no {count} consecutive free ports on {host}")


def _bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True

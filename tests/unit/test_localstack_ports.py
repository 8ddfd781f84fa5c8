"""Ports handed out for local servers are reserved until those servers can bind them."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from llm_usage.localstack import processes


def scripted(monkeypatch: pytest.MonkeyPatch, firsts: list[int]) -> None:
    """Make the random choice of a first port return ``firsts`` in order, then choose."""
    choices: Iterator[int] = iter(firsts)
    randint = processes._random.randint
    monkeypatch.setattr(
        processes._random, "randint", lambda low, high: next(choices, None) or randint(low, high)
    )


def test_a_port_handed_out_is_not_handed_out_again_before_it_is_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first = processes.free_ports(4)
    scripted(monkeypatch, [first + 2, first + 2])  # inside the range, twice
    assert processes.free_port() not in range(first, first + 4)


def test_a_port_another_process_reserved_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from llm_usage.localstack import processes;"
            " print(processes.free_port(), flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        theirs = int(holder.stdout.readline())
        scripted(monkeypatch, [theirs, theirs])
        assert processes.free_port() != theirs
    finally:
        holder.kill()
        holder.wait()
    scripted(monkeypatch, [theirs])  # the kernel dropped the lock with its holder
    assert processes.free_port() == theirs

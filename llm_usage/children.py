"""Pipeline processes (worker, API) run as children: started, probed, stopped by own PID.

A child reads its configuration from LLM_USAGE_* variables only, exactly as in production;
:func:`settings_env` turns a :class:`Settings` object into those variables.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Self

from llm_usage.settings import Settings


def settings_env(settings: Settings) -> dict[str, str]:
    """LLM_USAGE_* variables that reproduce ``settings`` in another process."""
    env = {}
    for name, value in settings.model_dump().items():
        if value is None:  # unset optional setting: the child's default is None too
            continue
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, Path):
            text = str(value.resolve())
        else:
            text = str(value)
        env[f"LLM_USAGE_{name.upper()}"] = text
    return env


class ChildProcess:
    """``python -m <module> [args]`` with ``settings`` in its environment, logging to a file."""

    def __init__(self, argv: list[str], settings: Settings, log_path: Path) -> None:
        self.argv = argv
        self.settings = settings
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None, "process not started"
        return self.proc.pid

    def start(self) -> Self:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LLM_USAGE_")}
        env.update(settings_env(self.settings))
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", *self.argv],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: the crash case (no flush, no commit)."""
        if self.running():
            os.kill(self.pid, signal.SIGKILL)
            assert self.proc is not None
            self.proc.wait(10)

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait(10)
        return self.proc.returncode

    def tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""

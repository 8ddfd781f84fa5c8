"""Run a worker as a real subprocess (tests, benchmark): start, probe, stop by PID.

The worker reads its configuration from LLM_USAGE_* variables only, exactly as in
production; this turns a :class:`Settings` object into those variables.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from llm_usage.settings import Settings


def settings_env(settings: Settings) -> dict[str, str]:
    """LLM_USAGE_* variables that reproduce ``settings`` in another process."""
    env = {}
    for name, value in settings.model_dump().items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, Path):
            text = str(value.resolve())
        else:
            text = str(value)
        env[f"LLM_USAGE_{name.upper()}"] = text
    return env


class WorkerProcess:
    """One ``python -m stream_processor`` child, stopped only through its own PID."""

    def __init__(self, settings: Settings, log_path: Path) -> None:
        self.settings = settings
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None, "worker not started"
        return self.proc.pid

    def start(self) -> WorkerProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LLM_USAGE_")}
        env.update(settings_env(self.settings))
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "stream_processor"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def url(self, path: str) -> str:
        return f"http://{self.settings.processor_web_host}:{self.settings.processor_web_port}{path}"

    def health(self) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(self.url("/health"), timeout=2) as response:
                return dict(json.loads(response.read()))
        except urllib.error.HTTPError as exc:
            return dict(json.loads(exc.read()))
        except (OSError, ValueError):
            return None

    def wait_assigned(self, timeout: float = 60.0) -> dict[str, Any]:
        """Wait until the worker answers /health and owns calls-topic partitions."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running():
                raise RuntimeError(f"worker exited; log {self.log_path}:\n{self.tail()}")
            body = self.health()
            if body and body.get("assigned"):
                return body
            time.sleep(0.1)
        raise TimeoutError(f"worker took no partition in {timeout}s; log:\n{self.tail()}")

    def metrics(self) -> dict[str, float]:
        """Unlabelled samples of /metrics (``name`` -> value)."""
        with urllib.request.urlopen(self.url("/metrics"), timeout=2) as response:
            text = response.read().decode()
        samples = {}
        for line in text.splitlines():
            if line and not line.startswith("#") and "{" not in line:
                name, _, value = line.rpartition(" ")
                samples[name] = float(value)
        return samples

    def peak_rss_kib(self) -> int:
        """VmHWM of the running worker (peak resident memory), in KiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        return 0

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

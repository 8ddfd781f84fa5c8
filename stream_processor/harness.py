"""Run a worker as a real subprocess (tests, benchmarks, ``llm-usage run``): probe it too."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from llm_usage.children import ChildProcess, settings_env
from llm_usage.settings import Settings

__all__ = ["WorkerProcess", "settings_env"]


class WorkerProcess(ChildProcess):
    """One ``python -m stream_processor`` child, stopped only through its own PID."""

    def __init__(self, settings: Settings, log_path: Path) -> None:
        super().__init__(["stream_processor"], settings, log_path)

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

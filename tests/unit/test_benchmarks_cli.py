"""`llm-usage bench` reaches every benchmark, and each command hands its options to ``run``."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from typer.testing import CliRunner

import benchmarks.alerts
import benchmarks.worker
from llm_usage.cli import app

COMMANDS = (
    "publish",
    "worker",
    "ingest",
    "api",
    "api-rollups",
    "http-ingest",
    "reprice",
    "alerts",
    "export",
)


def test_every_benchmark_is_a_bench_command() -> None:
    result = CliRunner().invoke(app, ["bench", "--help"])
    assert result.exit_code == 0, result.output
    for command in COMMANDS:
        assert command in result.output
        assert CliRunner().invoke(app, ["bench", command, "--help"]).exit_code == 0


def test_options_reach_the_benchmark(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(benchmarks.worker, "run", lambda **kw: calls.append(kw))
    monkeypatch.setattr(benchmarks.alerts, "run", lambda **kw: calls.append(kw))
    runner = CliRunner()
    argv = ["bench", "worker", "--events", "400000", "--batch-max-events", "30000", "--attributes"]
    assert runner.invoke(app, argv).exit_code == 0
    assert (
        runner.invoke(app, ["bench", "alerts", "--seeds", "1,2", "--calls", "10000"]).exit_code == 0
    )
    worker_options = {
        "events": 400_000,
        "per_message": 200,
        "duplicates": 0,
        "batch_max_events": 30_000,
        "stall_s": 120.0,
        "attributes": True,
    }
    assert calls == [worker_options, {"seeds": [1, 2], "calls": [10_000], "ends_hours_ago": [0]}]


def test_a_malformed_list_is_a_usage_error() -> None:
    result = CliRunner().invoke(app, ["bench", "alerts", "--seeds", "1,x"])
    assert result.exit_code == 2
    assert "comma-separated integers" in result.output


def test_without_the_benchmarks_every_bench_command_says_where_they_are() -> None:
    """The image ships no benchmarks: any `bench ...` command explains, none is unknown."""
    code = (  # an import system that finds no `benchmarks`, as in the image
        "import sys\n"
        "class NotInstalled:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'benchmarks':\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, NotInstalled())\n"
        "from llm_usage.cli import app\n"
        "app(['bench', 'worker', '--events', '1000'])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 2, result.stderr
    assert "source checkout" in result.stdout

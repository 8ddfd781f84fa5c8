"""`llm-usage bench` reaches every benchmark, and each command hands its options to ``run``."""

from __future__ import annotations

from typing import Any

import pytest
from typer.testing import CliRunner

import benchmarks.alerts
import benchmarks.worker
from llm_usage.cli import app

COMMANDS = ("publish", "worker", "ingest", "api", "api-rollups", "http-ingest", "reprice", "alerts")


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
    argv = ["bench", "worker", "--events", "400000", "--batch-max-events", "30000"]
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
    }
    assert calls == [worker_options, {"seeds": [1, 2], "calls": [10_000], "ends_hours_ago": [0]}]


def test_a_malformed_list_is_a_usage_error() -> None:
    result = CliRunner().invoke(app, ["bench", "alerts", "--seeds", "1,x"])
    assert result.exit_code == 2
    assert "comma-separated integers" in result.output

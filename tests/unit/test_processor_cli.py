"""`llm-usage prices` lists the book; the harness hands settings to a worker process."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from llm_usage.cli import app
from llm_usage.settings import Settings
from stream_processor.harness import settings_env


def test_prices_lists_models_versions_and_tiers() -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["prices", "--model", "o3", "--all"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    assert "2025-04-16" in result.output and "2025-06-10" in result.output
    result = runner.invoke(app, ["prices", "--model", "sonnet-4-5"], env={"COLUMNS": "250"})
    assert ">200,000: 6/22.5/7.5/12/0.6" in result.output
    assert "claude-sonnet-4-5-20250929" in result.output


def test_settings_round_trip_through_the_environment(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, processor_group="g", processor_batch_max_seconds=0.25)
    env = settings_env(settings)
    assert env["LLM_USAGE_PROCESSOR_GROUP"] == "g"
    assert Settings(**{k.removeprefix("LLM_USAGE_").lower(): v for k, v in env.items()}) == (
        settings.model_copy(update={"home": tmp_path.resolve()})
    )

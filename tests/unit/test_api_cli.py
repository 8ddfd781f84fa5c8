"""`llm-usage api` is wired to uvicorn with the settings' host and port."""

from __future__ import annotations

from typing import Any

import pytest
from typer.testing import CliRunner

from llm_usage.cli import app


def test_api_command_serves_the_app_on_loopback_by_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import uvicorn

    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(uvicorn, "run", lambda application, **kw: calls.append(kw))
    monkeypatch.setenv("LLM_USAGE_API_KEYS", "k:t")
    result = CliRunner().invoke(app, ["api"])
    assert result.exit_code == 0, result.output
    assert calls[0]["host"] == "127.0.0.1" and calls[0]["port"] == 8000
    result = CliRunner().invoke(app, ["api", "--port", "9123", "--host", "127.0.0.2"])
    assert calls[1]["host"] == "127.0.0.2" and calls[1]["port"] == 9123

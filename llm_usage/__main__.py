"""``python -m llm_usage`` is the ``llm-usage`` command (used to start child processes)."""

from llm_usage.cli import app

app()

"""Benchmarks that print figures (not tests): `llm-usage bench ...` or run a script."""

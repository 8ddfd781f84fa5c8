"""Benchmarks that print figures (not tests): ``llm-usage bench <name>`` (``benchmarks.cli``).

One module per benchmark, each with a ``run`` function; none of it ships in the image.
"""

"""``python -m benchmarks worker --events 400000``: the same commands as ``llm-usage bench``."""

from benchmarks.cli import bench_app

bench_app(prog_name="python -m benchmarks")

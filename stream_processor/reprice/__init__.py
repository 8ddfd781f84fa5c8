"""Reprice stored calls with the current price book, raw rows and every rollup exactly."""

from stream_processor.reprice.queries import Selection
from stream_processor.reprice.runner import ModelChange, Repricer, RunResult

__all__ = ["ModelChange", "Repricer", "RunResult", "Selection"]

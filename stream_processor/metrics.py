"""Prometheus metrics of one worker, in their own registry (served at ``/metrics``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_P = "llm_usage_processor_"
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    """Every counter the issue asks for; one instance per worker process."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)

        def counter(name: str, doc: str) -> Counter:
            return Counter(_P + name, doc, registry=r)

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(_P + name, doc, registry=r)

        self.messages_in = counter("messages_in", "Kafka messages read from the calls topic")
        self.events_in = counter("events_in", "Call events read (valid or not)")
        self.events_written = counter(
            "events_written", "Rows sent in acknowledged inserts (replays included)"
        )
        self.events_deduped = counter("events_deduped", "Events dropped as repeated event_id")
        self.events_dead_lettered = counter(
            "events_dead_lettered", "Events or whole messages sent to the dead-letter topic"
        )
        self.events_unpriced = counter(
            "events_unpriced", "Events whose model is not in the price book (priced=false)"
        )
        self.price_book_reloads = counter(
            "price_book_reloads", "Times a changed price book or overrides file was loaded"
        )
        self.events_tier_unavailable = counter(
            "events_tier_unavailable",
            "Batch or fast-mode events of a model without such prices (billed at standard)",
        )
        self.renames = counter("renames", "Rename events applied to the names table")
        self.batches = counter("batches", "Batches inserted into ClickHouse")
        self.insert_failures = counter("insert_failures", "Failed ClickHouse calls (retried)")
        self.out_of_order_fetches = counter(
            "out_of_order_fetches",
            "Fetches that returned a later offset first (re-read from the expected one)",
        )
        self.insert_seconds = Histogram(
            _P + "insert_seconds",
            "Latency of one acknowledged ClickHouse batch insert",
            buckets=_BUCKETS,
            registry=r,
        )
        self.consumer_lag = Gauge(
            _P + "consumer_lag",
            "Messages behind the partition end (broker log end offset - next offset)",
            ["partition"],
            registry=r,
        )
        self.offset_gaps = gauge(
            "offset_gaps", "Partitions whose next offset has been missing too long (/health red)"
        )
        self.stalled_partitions = gauge(
            "stalled_partitions", "Partitions with lag that delivered nothing for too long"
        )
        self.buffered_events = gauge("buffered_events", "Rows waiting for their batch insert")
        self.dedupe_ids = gauge("dedupe_ids", "event_ids remembered for deduplication")
        self.clickhouse_up = gauge("clickhouse_up", "1 if the last ClickHouse call succeeded")

    def total(self, name: str) -> float:
        """Current value of one counter, e.g. ``total("messages_in")``."""
        return self.registry.get_sample_value(f"{_P}{name}_total") or 0.0

    def render(self) -> bytes:
        return generate_latest(self.registry)

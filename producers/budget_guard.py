"""``instrument(..., budget_guard=...)``: refuse a call whose budget is used up, before it
is sent (and billed).

The alerter publishes, every ``alert_interval_s``, each tenant's used-up *hard* budgets to
the budget-status topic (``llm-usage.budget-status``, key = tenant). A :class:`BudgetGuard`
reads that topic in a background thread and keeps the latest status per tenant in memory;
:meth:`BudgetGuard.check` is a dictionary lookup, so the guard adds no latency to a call.

Fail open, on purpose: when a tenant's status is missing or older than
``budget_status_max_age_s`` (the alerter is down, Kafka is unreachable), the call goes
through and the guard logs why (once a minute). Budget enforcement must never become the
outage of the services it watches; the budget alerts still fire once the pipeline is back.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from llm_usage.kafka import kafka_client_options
from llm_usage.settings import Settings

log = logging.getLogger(__name__)


class BudgetExceeded(RuntimeError):
    """The call's tenant, source or entity has used up a hard budget this period."""

    def __init__(self, budget: dict[str, Any], tenant_id: str) -> None:
        self.budget = budget
        self.tenant_id = tenant_id
        what = budget.get("name") or budget.get("budget_id")
        super().__init__(
            f"hard budget {what!r} of tenant {tenant_id} is used up until {budget.get('until')};"
            " the call was not sent"
        )


@dataclass(frozen=True)
class _Status:
    as_of: float  # epoch seconds
    exhausted: tuple[dict[str, Any], ...]


def _covers(budget: dict[str, Any], source: str | None, source_id: str | None) -> bool:
    if budget.get("source") and budget["source"] != source:
        return False
    return not budget.get("source_id") or budget["source_id"] == source_id


class BudgetGuard:
    """The latest budget status per tenant, and the check ``instrument()`` makes."""

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.clock = clock
        self._status: dict[str, _Status] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._warned_at = 0.0

    # --- what the reader thread feeds -------------------------------------------------
    def update(self, entry: dict[str, Any]) -> None:
        """Take one status message (``{"tenant_id", "as_of", "exhausted": [...]}``)."""
        as_of = datetime.fromisoformat(entry["as_of"]).timestamp()
        status = _Status(as_of, tuple(entry.get("exhausted") or ()))
        with self._lock:
            known = self._status.get(entry["tenant_id"])
            if known is None or known.as_of <= as_of:
                self._status[entry["tenant_id"]] = status

    def age_s(self, tenant_id: str) -> float | None:
        with self._lock:
            status = self._status.get(tenant_id)
        return None if status is None else self.clock() - status.as_of

    # --- the check ----------------------------------------------------------------------
    def check(self, tenant_id: str | None, source: str | None, source_id: str | None) -> None:
        """Raise :class:`BudgetExceeded` if a used-up hard budget covers this call."""
        if not tenant_id:
            return
        with self._lock:
            status = self._status.get(tenant_id)
        max_age = self.settings.budget_status_max_age_s
        if status is None or self.clock() - status.as_of > max_age:
            self._warn_stale(tenant_id, status)
            return
        for budget in status.exhausted:
            if _covers(budget, source, source_id):
                raise BudgetExceeded(budget, tenant_id)

    def _warn_stale(self, tenant_id: str, status: _Status | None) -> None:
        now = self.clock()
        if now - self._warned_at < 60:
            return
        self._warned_at = now
        why = (
            "no budget status received yet"
            if status is None
            else f"the budget status is {now - status.as_of:.0f} s old"
        )
        log.warning(
            "budget_guard lets calls of tenant %s through: %s (more than %.0f s: fail open;"
            " is `llm-usage alerter` running?)",
            tenant_id, why, self.settings.budget_status_max_age_s,
        )  # fmt: skip

    # --- the reader thread -------------------------------------------------------------
    def start(self) -> BudgetGuard:
        """Read the status topic in a daemon thread (from its start, then as it grows)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="budget-guard", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                asyncio.run(self._read())
            except Exception as exc:  # Kafka away: fail open meanwhile, then read again
                log.warning(
                    "budget_guard cannot read %s: %s", self.settings.topic_budget_status, exc
                )
                self._stop.wait(5.0)

    async def _read(self) -> None:
        topic = self.settings.topic_budget_status
        consumer = AIOKafkaConsumer(
            **kafka_client_options(self.settings), enable_auto_commit=False, group_id=None
        )
        await consumer.start()
        try:
            partitions: set[int] = set()
            while not partitions and not self._stop.is_set():
                partitions = consumer.partitions_for_topic(topic) or set()
                if not partitions:
                    await consumer.force_metadata_update()
                    await asyncio.sleep(1.0)
            tps = [TopicPartition(topic, p) for p in sorted(partitions)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            while not self._stop.is_set():
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    for record in records:
                        try:
                            self.update(json.loads(record.value or b"{}"))
                        except (KeyError, ValueError, TypeError) as exc:
                            log.warning("budget_guard: bad status message: %s", exc)
        finally:
            await consumer.stop()

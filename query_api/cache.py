"""Aggregates of settled past hours, kept in memory and served only while provably current.

A 30-day dashboard re-reads 29 days that did not change since the last page load. Whole
past hours are queried once and kept here under the *ingest version* of the hours they
cover (see :class:`Version`): a late or replayed event landing in one of those hours, or a
reprice of calls in them, changes the version and so retires the entry. Caching by time
alone would not be exact.

An entry is stored only when the newest write it covers is older than ``settle_s``: the
materialized views of one insert commit one after the other, so a version younger than that
may already show an insert whose rollup rows are not visible yet.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Version:
    """What the cached hours looked like: ``fingerprint`` changes with any write into them.

    ``fingerprint`` = (hash of every hour's last write time, number of hours with data);
    ``settled`` = the newest write is older than the settle delay, so an aggregate read
    now may be stored.
    """

    fingerprint: tuple[Any, ...]
    settled: bool


class SettledCache:
    """A thread-safe LRU of query results, bounded by the number of rows it holds."""

    def __init__(self, max_rows: int) -> None:
        self.max_rows = max_rows
        self._entries: OrderedDict[Hashable, tuple[tuple[Any, ...], Any, int]] = OrderedDict()
        self._rows = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @property
    def enabled(self) -> bool:
        return self.max_rows > 0

    def get(self, key: Hashable, version: Version) -> Any | None:
        """The value stored under ``key`` for exactly this ``version``, else None."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry[0] != version.fingerprint:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry[1]

    def put(self, key: Hashable, version: Version, value: Any, rows: int) -> None:
        """Keep ``value`` (``rows`` rows) if its version is settled and it fits."""
        if not version.settled or rows > self.max_rows:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._rows -= old[2]
            self._entries[key] = (version.fingerprint, value, rows)
            self._rows += rows
            while self._rows > self.max_rows:
                _, (_, _, dropped) = self._entries.popitem(last=False)
                self._rows -= dropped

    @property
    def rows(self) -> int:
        return self._rows


class SharedReads:
    """One read serves every request that arrived before it was sent.

    Requests that come in together (a page's panels, many viewers) need the same version
    of the same hours. A read sent after a request arrived sees every write committed
    before that arrival, so the request may use it; a read already under way when the
    request arrived may not, and the request starts (or joins) the next one.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._flights: dict[Hashable, tuple[float, Future[Any]]] = {}
        self.shared = 0

    def read(self, key: Hashable, arrived: float, fetch: Callable[[], Any]) -> Any:
        """``fetch()``'s result, or that of a read of ``key`` sent after ``arrived``
        (``time.monotonic()`` when the request came in)."""
        with self._lock:
            flight = self._flights.get(key)
            if flight is not None and flight[0] >= arrived:
                self.shared += 1
                future = flight[1]
                mine = False
            else:
                future = Future()
                self._flights[key] = (time.monotonic(), future)
                mine = True
        if mine:
            try:
                future.set_result(fetch())
            except BaseException as exc:
                future.set_exception(exc)
            finally:
                with self._lock:
                    if self._flights.get(key, (0.0, None))[1] is future:
                        del self._flights[key]
        return future.result()

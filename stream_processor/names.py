"""The latest name of each conversation and agent, for events that carry none.

``source_names`` in ClickHouse is the state of record (the query API reads names from it);
this is a worker's copy for enrichment. A rename this worker handles applies at once; the
names other workers wrote, and names that calls carried, arrive with the periodic refresh
from ``source_names``. Names last set longer than ``lookback_s`` ago are forgotten, which
bounds memory by the entities active in that time: an event of a conversation idle that
long, without a name of its own, is stored with an empty ``source_name`` (the page still
shows its latest name from ``source_names``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable


def name_key(tenant_id: str, source: str, source_id: str) -> tuple[str, str, str]:
    """Key of one conversation or agent of one tenant."""
    return (tenant_id, source, source_id)


class Names:
    """Latest name per (tenant, source, source_id), newest ``named_at`` wins."""

    def __init__(self, lookback_s: float, clock: Callable[[], float] = time.time) -> None:
        self.lookback_s = lookback_s
        self.clock = clock
        self._names: dict[tuple[str, str, str], tuple[str, int]] = {}
        self.newest_ms = 0  # the latest named_at seen: the next refresh reads from near it

    def __len__(self) -> int:
        return len(self._names)

    def get(self, key: tuple[str, str, str]) -> str:
        known = self._names.get(key)
        return known[0] if known else ""

    def apply(self, key: tuple[str, str, str], name: str, named_ms: int) -> None:
        current = self._names.get(key)
        if current is None or current[1] <= named_ms:
            self._names[key] = (name, named_ms)
        self.newest_ms = max(self.newest_ms, named_ms)

    def apply_all(self, rows: Iterable[tuple[str, str, str, str, int]]) -> None:
        """Rows of ``source_names``: tenant, source, source id, name, named_at in ms."""
        for tenant_id, source, source_id, name, named_ms in rows:
            self.apply((tenant_id, source, source_id), name, named_ms)

    def forget_old(self) -> int:
        horizon_ms = int((self.clock() - self.lookback_s) * 1000)
        old = [key for key, (_, named_ms) in self._names.items() if named_ms < horizon_ms]
        for key in old:
            del self._names[key]
        return len(old)

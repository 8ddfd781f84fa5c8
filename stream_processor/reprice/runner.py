"""Reprice stored calls with the current book, exactly once, rollups included.

A run goes through steps, each recorded in ``reprice_runs`` only after it completed:

1. ``staged``: every selected call is priced again; those whose price changes go to
   ``reprice_values`` with their new prices (and the old cost). The prompt-cache figures
   count as prices: calls stored before migration 0019 (savings 0) are filled this way.
   Nothing else is touched yet, so a run killed here is re-staged from scratch.
2. ``delta:<rollup>``: for each rollup, the delta rows (new minus old prices of the staged
   calls, see :mod:`stream_processor.reprice.queries`) are inserted under an
   ``insert_deduplication_token`` of the run and rollup: re-sent after a crash, ClickHouse
   drops the repeat. The hours of the changed calls are then marked in ``ingest_activity``
   (what the query API's cache of settled hours is checked against). All deltas are
   computed from the calls' old prices, which is why the raw table is only updated after
   the last of them.
3. ``raw``: one ``ALTER TABLE usage_events UPDATE`` sets the staged calls' new prices
   (from a Join table of the run's values); running it twice sets the same values.
4. ``finished``: the run's values are deleted.

A killed run is completed by the next ``llm-usage reprice`` (whatever its selection)
before it does anything else: it continues after the last recorded step, with the staged
values. Calls the worker writes meanwhile are priced by
the worker (which reloads a changed book, see ``pricing/watch.py``); calls it wrote with the
old book while the run was under way are found by a catch-up pass over what was ingested
since the run started, repeated until a pass that started 10 s or more after the run (when
every worker prices with the new book) finds nothing to change.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from clickhouse_connect.driver.client import Client

from stream_processor.pricing import PriceBook
from stream_processor.reprice.queries import (
    COLUMNS_SQL,
    DELTA_SETTINGS,
    MATERIALIZED_SQL,
    VALUE_COLUMNS,
    VIEWS_SQL,
    Rollup,
    Selection,
    activity_sql,
    count_sql,
    delta_sql,
    join_ddl,
    join_table,
    mutation_sql,
    rollup_of,
    stage_sql,
    target_of,
)

STAGE_CHUNK = 50_000  # changed calls per insert into reprice_values
STAGE_PAGE = 200_000  # stored calls per read
CATCH_UP_MARGIN = timedelta(seconds=5)  # calls ingested just before a pass started
# A worker prices with a changed book within PRICE_RELOAD_SECONDS (2 s) plus the calls it
# already had in hand: the last catch-up pass starts at least this long after the run.
CATCH_UP_SETTLE_SECONDS = 10.0
CATCH_UP_MAX_PASSES = 60
_ZERO = Decimal(0)


@dataclass
class ModelChange:
    """Dry-run figures of one model: calls looked at, changed, and their cost before/after."""

    calls: int = 0
    changed: int = 0
    old_cost: Decimal = field(default_factory=lambda: _ZERO)
    new_cost: Decimal = field(default_factory=lambda: _ZERO)


@dataclass
class RunResult:
    run_id: str
    scanned: int
    changed: int
    old_cost: Decimal
    new_cost: Decimal
    seconds: float
    resumed: bool = False
    passes: int = 1


Progress = Callable[[int], None]  # rows scanned so far in this pass


def book_fingerprint(book: PriceBook) -> str:
    """Changes whenever a price of the book or the overrides does."""
    digest = hashlib.sha256()
    for name in book.models():
        for entry in book.entries[name]:
            digest.update(repr((name, entry.version, entry.tiers, entry.web_search_per_1k,
                                sorted(entry.geo_multipliers.items()))).encode())  # fmt: skip
        digest.update(repr(book.aliases(name)).encode())
    return digest.hexdigest()[:16]


class Repricer:
    """Runs (or resumes) reprice runs against one database."""

    def __init__(
        self,
        client: Client,
        database: str,
        book: PriceBook,
        *,
        on_step: Callable[[str], None] | None = None,
    ) -> None:
        self.client = client
        self.database = database
        self.book = book
        self.fingerprint = book_fingerprint(book)
        self._on_step = on_step or (lambda step: None)

    # --- selection helpers -------------------------------------------------------------
    def stored_names(self, models: list[str]) -> tuple[str, ...]:
        """Model names as stored for ``models``: canonical names and every alias.

        A model added to the overrides with an alias prices calls that were stored under
        the alias (the name the producer reported) while it was unknown.
        """
        names: set[str] = set()
        for raw in models:
            canonical = self.book.resolve(raw)
            names.update({raw.strip().lower(), canonical, *self.book.aliases(canonical)})
        return tuple(sorted(names))

    def _rows(self, selection: Selection) -> Iterator[Sequence[Any]]:
        after = None
        while True:
            sql, params = stage_sql(selection, after, STAGE_PAGE)
            rows = self.client.query(sql, parameters=params).result_rows
            yield from rows
            if len(rows) < STAGE_PAGE:
                return
            last = rows[-1]
            after = (last[1], last[2], last[0])  # tenant_id, occurred_at, event_id

    def _quote(self, row: Sequence[Any]) -> tuple[Any, ...] | None:
        """New (cost, tool cost, priced, version, cache-read savings, cache-write premium)
        of a stored call (see ``REPRICED``), or None when all are as stored."""
        (_, _, occurred_at, model, inp, out, c5, c1h, read, tier, speed, geo, searches,
         cost, _token_cost, tool_cost, priced, version, saved, premium) = row  # fmt: skip
        if occurred_at.tzinfo is None:  # DateTime64(3, 'UTC') comes back naive
            occurred_at = occurred_at.replace(tzinfo=UTC)
        quote = self.book.quote(
            self.book.resolve(model), occurred_at, inp, out, c5, c1h, read,
            service_tier=tier, speed=speed, inference_geo=geo or None,
            web_search_requests=searches,
        )  # fmt: skip
        new = (quote.cost_usd, quote.tool_cost_usd, quote.priced, quote.version,
               quote.cache_read_savings_usd, quote.cache_write_premium_usd)  # fmt: skip
        return None if new == (cost, tool_cost, bool(priced), version, saved, premium) else new

    def count(self, selection: Selection) -> int:
        sql, params = count_sql(selection)
        return int(self.client.command(sql, parameters=params))  # type: ignore[arg-type]

    # --- dry run -----------------------------------------------------------------------
    def dry_run(
        self, selection: Selection, progress: Progress | None = None
    ) -> dict[str, ModelChange]:
        """Per stored model: calls, how many change, their cost before and after."""
        changes: dict[str, ModelChange] = {}
        for scanned, row in enumerate(self._rows(selection), 1):
            item = changes.setdefault(str(row[3]), ModelChange())
            item.calls += 1
            new = self._quote(row)
            if new is not None:
                item.changed += 1
                item.old_cost += row[13]
                item.new_cost += new[0]
            if progress is not None and scanned % 10_000 == 0:
                progress(scanned)
        return changes

    # --- a run -------------------------------------------------------------------------
    def run(self, selection: Selection, progress: Progress | None = None) -> RunResult:
        """Finish any interrupted run, reprice ``selection``, then catch up on late calls."""
        started = time.monotonic()
        resumed = self.resume_unfinished()
        result = self._run_once(selection, progress)
        result.resumed = resumed > 0
        last = result.run_id
        while result.passes < CATCH_UP_MAX_PASSES:
            pass_started = time.monotonic()
            since = self._run_started(last) - CATCH_UP_MARGIN
            catch_up = self._run_once(replace(selection, since=since), None)
            last = catch_up.run_id
            result.passes += 1
            result.changed += catch_up.changed
            result.old_cost += catch_up.old_cost
            result.new_cost += catch_up.new_cost
            if catch_up.changed == 0 and pass_started - started >= CATCH_UP_SETTLE_SECONDS:
                break
            time.sleep(1.0)
        result.seconds = time.monotonic() - started
        return result

    def resume_unfinished(self) -> int:
        """Complete every run a crash interrupted (before anything else touches the data).

        A staged run is completed with its staged values (its deltas may be partly in the
        rollups already); a run killed before it was staged changed nothing and is closed.
        """
        rows = self.client.query(
            "SELECT run_id, groupUniqArray(step), any(tenant_id), any(from_day), any(to_day)"
            " FROM reprice_runs GROUP BY run_id HAVING NOT has(groupUniqArray(step), 'finished')"
            " ORDER BY min(at)"
        ).result_rows
        for run_id, steps, tenant, from_day, to_day in rows:
            selection = Selection(tenant=tenant or None, from_day=from_day, to_day=to_day)
            if "staged" in steps:
                calls, old, new = self._staged_totals(run_id)
                self._apply(run_id, selection, set(steps))
            else:
                calls, old, new = 0, _ZERO, _ZERO
            self._finish(run_id, selection, calls, old, new)
        return len(rows)

    def _run_once(self, selection: Selection, progress: Progress | None) -> RunResult:
        started = time.monotonic()
        run_id = uuid.uuid4().hex
        self._record(run_id, "planned", selection)
        scanned, changed, old, new = self._stage(run_id, selection, progress)
        self._record(run_id, "staged", selection, changed, old, new)
        self._on_step("staged")
        if changed:
            self._apply(run_id, selection, set())
        self._finish(run_id, selection, changed, old, new)
        return RunResult(run_id, scanned, changed, old, new, time.monotonic() - started)

    def _apply(self, run_id: str, selection: Selection, done: set[str]) -> None:
        """Steps 2 and 3 for a staged run, skipping those recorded in ``done``."""
        materialized = [
            (str(name), str(expr))
            for name, expr in self.client.query(
                MATERIALIZED_SQL, parameters={"db": self.database}
            ).result_rows
        ]
        for rollup in self.rollups():
            step = f"delta:{rollup.target}"
            if step in done:
                continue
            token = f"reprice:{run_id}:{rollup.target}"
            self.client.command(
                delta_sql(self.database, rollup, materialized),
                parameters={"run": run_id},
                settings={**DELTA_SETTINGS, "insert_deduplication_token": token},
            )
            self.client.command(activity_sql(self.database), parameters={"run": run_id})
            self._record(run_id, step, selection)
            self._on_step(step)
        if "raw" not in done:
            self._update_raw(run_id, selection)
            self._record(run_id, "raw", selection)
            self._on_step("raw")

    def rollups(self) -> list[Rollup]:
        """Every cost rollup fed by a materialized view over usage_events."""
        found = []
        views = self.client.query(VIEWS_SQL, parameters={"db": self.database}).result_rows
        for name, select, create in views:
            table = target_of(create)
            if table is None or "usage_events" not in select:
                continue
            columns = self.client.query(
                COLUMNS_SQL, parameters={"db": self.database, "t": table}
            ).result_rows
            rollup = rollup_of(self.database, name, select, create,
                               [(str(c), str(t)) for c, t in columns])  # fmt: skip
            if rollup is not None:
                found.append(rollup)
        return found

    # --- steps -------------------------------------------------------------------------
    def _record(
        self,
        run_id: str,
        step: str,
        selection: Selection,
        calls: int = 0,
        old: Decimal = _ZERO,
        new: Decimal = _ZERO,
    ) -> None:
        row = [run_id, step, selection.tenant or "", list(selection.models), selection.from_day,
               selection.to_day, selection.since, self.fingerprint, calls, old, new]  # fmt: skip
        names = ["run_id", "step", "tenant_id", "models", "from_day", "to_day", "since", "book",
                 "calls", "old_cost_usd", "new_cost_usd"]  # fmt: skip
        self.client.insert("reprice_runs", [row], column_names=names)

    def _stage(
        self, run_id: str, selection: Selection, progress: Progress | None
    ) -> tuple[int, int, Decimal, Decimal]:
        self.client.command(
            "DELETE FROM reprice_values WHERE run_id = {run:String}", parameters={"run": run_id}
        )  # a killed earlier attempt may have left some
        scanned = changed = 0
        old = new = _ZERO
        chunk: list[list[Any]] = []
        for row in self._rows(selection):
            scanned += 1
            quote = self._quote(row)
            if quote is not None:
                changed += 1
                old += row[13]
                new += quote[0]
                chunk.append([run_id, row[0], row[1], row[2], row[3], row[13], *quote])
                if len(chunk) >= STAGE_CHUNK:
                    self.client.insert("reprice_values", chunk, column_names=list(VALUE_COLUMNS))
                    chunk = []
            if progress is not None and scanned % 10_000 == 0:
                progress(scanned)
        if chunk:
            self.client.insert("reprice_values", chunk, column_names=list(VALUE_COLUMNS))
        if progress is not None:
            progress(scanned)
        return scanned, changed, old, new

    def _staged_totals(self, run_id: str) -> tuple[int, Decimal, Decimal]:
        row = self.client.query(
            "SELECT calls, old_cost_usd, new_cost_usd FROM reprice_runs"
            " WHERE run_id = {run:String} AND step = 'staged' LIMIT 1",
            parameters={"run": run_id},
        ).result_rows[0]
        return int(row[0]), Decimal(row[1]), Decimal(row[2])

    def _update_raw(self, run_id: str, selection: Selection) -> None:
        for statement in join_ddl(self.database, run_id):
            self.client.command(statement, parameters={"run": run_id})
        sql, params = mutation_sql(self.database, run_id, selection)
        self.client.command(sql, parameters={**params, "run": run_id},
                            settings={"mutations_sync": 2})  # fmt: skip

    def _finish(
        self, run_id: str, selection: Selection, calls: int, old: Decimal, new: Decimal
    ) -> None:
        self.client.command(f"DROP TABLE IF EXISTS {join_table(self.database, run_id)} SYNC")
        self.client.command(
            "DELETE FROM reprice_values WHERE run_id = {run:String}", parameters={"run": run_id}
        )
        self._record(run_id, "finished", selection, calls, old, new)
        self._on_step("finished")

    def _run_started(self, run_id: str) -> datetime:
        value = self.client.command(
            "SELECT min(at) FROM reprice_runs WHERE run_id = {run:String}",
            parameters={"run": run_id},
        )
        return datetime.fromisoformat(str(value))

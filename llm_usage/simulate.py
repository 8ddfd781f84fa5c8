"""Realistic demo traffic: tenants with conversations and agents calling Claude.

:func:`generate` is deterministic for a seed and yields what services would publish: call
events (with a few exact duplicates, as at-least-once producers do) and rename events.
:class:`Manifest` totals each unique call once, priced with the same price book as the
worker, so anyone can check the pipeline against it.

The traffic uses the pinned SDK's line-up with the billing dimensions of its ``Usage``:
memory extraction mostly through the Batch API, agents with fast mode (only on models the
price book has fast-mode prices for), web search and extended thinking, a few
conversations and agents bound to US-only inference, and a tiny share of calls of a
fine-tuned model the book cannot price (so the page's "cost incomplete" has a case).

Every call carries attributes, as an application that attributes its costs sends them: a
``customer`` (each conversation and agent belongs to one of a few customers per tenant), an
``environment`` (mostly ``production``); chat calls a ``user`` (a few hundred per tenant,
heavy-tailed: a few users make most calls), agent calls the ``feature`` the agent serves.
They come from a random stream of their own, so the rest of a seed's traffic is the same
as without them.
"""

from __future__ import annotations

import asyncio
import functools
import math
import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from llm_usage.settings import Settings
from producers.contract import (
    EntityRenamed,
    ServiceTier,
    Source,
    Speed,
    Status,
    UsageEvent,
    uuid7,
)
from stream_processor.pricing import PriceBook

UNKNOWN_MODEL = "ft:claude-custom-1"  # a fine-tuned model: no price in the book, on purpose

# (model, weight) per source: the SDK's current line-up (anthropic.types.Model), as services
# use it, plus one service still pinned on a dated snapshot (an alias the book resolves).
MODEL_MIX: dict[Source, list[tuple[str, float]]] = {
    Source.CHAT: [
        ("claude-sonnet-5-5", 0.55),
        ("claude-haiku-5-5", 0.25),
        ("claude-opus-5-5", 0.14),
        ("claude-haiku-4-5-20251001", 0.05),
        (UNKNOWN_MODEL, 0.01),
    ],
    Source.AGENT: [
        ("claude-opus-5-5", 0.45),
        ("claude-sonnet-5-5", 0.45),
        ("claude-haiku-5-5", 0.10),
    ],
    Source.MEMORY: [("claude-haiku-5-5", 0.8), ("claude-sonnet-5-5", 0.2)],
}
SOURCE_MIX = [(Source.CHAT, 0.62), (Source.AGENT, 0.28), (Source.MEMORY, 0.10)]

# Shares of calls per source. Memory extraction is the typical Batch API workload (half
# price, results within 24 h); agents use fast mode where the model offers it, and search.
BATCH_SHARE = {Source.CHAT: 0.0, Source.AGENT: 0.0, Source.MEMORY: 0.65}
FAST_SHARE = {Source.CHAT: 0.0, Source.AGENT: 0.35, Source.MEMORY: 0.0}  # of fast-capable
WEB_SEARCH_SHARE = {Source.CHAT: 0.04, Source.AGENT: 0.25, Source.MEMORY: 0.0}
WEB_FETCH_SHARE = 0.5  # of calls that searched: they also fetched a page or three
THINKING_SHARE = {Source.CHAT: 0.1, Source.AGENT: 0.6, Source.MEMORY: 0.0}
OPUS_THINKING_SHARE = 0.7  # Opus calls think more often, whatever the source
US_GEO_SHARE = 0.06  # of conversations and agents: bound to US-only inference

CHAT_TOPICS = [
    "Quarterly report draft", "Refactor the billing module", "Trip to Lisbon", "SQL help",
    "Onboarding checklist", "Customer email reply", "Kubernetes upgrade plan", "Recipe ideas",
    "Contract review", "Marketing copy", "Bug in checkout", "Interview questions",
    "Release notes", "Data pipeline design", "Weekly planning", "Translate product page",
]  # fmt: skip
# the feature each agent (by its name's position in AGENT_NAMES) serves
AGENT_FEATURES = [
    "news_digest", "inbox_triage", "competitor_watch", "ticket_summary", "lead_enrichment",
    "code_review", "calendar", "invoice_check", "social_monitor", "changelog",
    "security_scan", "kpi_report",
]  # fmt: skip
CUSTOMER_NAMES = [
    "acme-corp", "globex", "initech", "umbrella", "hooli", "stark-industries", "wayne-enterprises",
    "soylent", "tyrell", "cyberdyne", "wonka", "massive-dynamic", "aperture", "gringotts",
    "oscorp", "vandelay", "dunder-mifflin", "pied-piper", "monarch", "black-mesa",
]  # fmt: skip
ENVIRONMENT_MIX = [("production", 0.9), ("staging", 0.07), ("development", 0.03)]
USER_SKEW = 1.1  # Zipf exponent of calls per user: the k-th user makes ~1/k^1.1 of the top's
AGENT_NAMES = [
    "Daily news digest", "Inbox triage", "Competitor watch", "Support ticket summariser",
    "Sales lead enricher", "Code review bot", "Calendar assistant", "Invoice checker",
    "Social media monitor", "Changelog writer", "Security advisory scanner", "Weekly KPI report",
]  # fmt: skip


@dataclass(frozen=True)
class SimulationConfig:
    calls: int = 10_000
    days: float = 7.0
    seed: int = 42
    tenants: int = 3
    conversations_per_tenant: int = 60
    agents_per_tenant: int = 8
    duplicate_rate: float = 0.01
    rename_rate: float = 0.25
    spike: bool = True
    end: datetime | None = None  # window end; now when None
    users_per_tenant: int = 300
    customers_per_tenant: int = 5


@dataclass
class Entity:
    tenant_id: str
    source: Source
    source_id: str
    name: str
    named: bool  # False: the first calls carry no name; a rename event fills it in
    weight: float
    every_hours: float = 0.0  # agents run on a schedule
    offset_minutes: int = 0
    us_only: bool = False  # data residency: calls ask for US-only inference where offered
    customer: str = ""  # the customer account the conversation or agent belongs to
    feature: str | None = None  # agents: the product feature they serve


@dataclass(frozen=True)
class Published:
    """One thing a service publishes: a call event (maybe a duplicate) or a rename."""

    call: UsageEvent | None = None
    rename: EntityRenamed | None = None
    duplicate: bool = False
    spike: tuple[datetime, datetime] | None = None  # the injected spike this call is part of


def _pick(rng: random.Random, weighted: list[tuple[Any, float]]) -> Any:
    return rng.choices([w[0] for w in weighted], weights=[w[1] for w in weighted])[0]


def _diurnal_weight(ts: datetime) -> float:
    """Working-hours shaped activity (peak mid-afternoon UTC, quiet at night)."""
    hour = ts.hour + ts.minute / 60
    return 0.25 + math.exp(-(((hour - 14.5) / 4.5) ** 2))


def _entities(cfg: SimulationConfig, rng: random.Random) -> list[Entity]:
    entities: list[Entity] = []
    for t in range(cfg.tenants):
        tenant = f"tenant-{t + 1}"
        for c in range(cfg.conversations_per_tenant):
            topic = rng.choice(CHAT_TOPICS)
            source = Source.MEMORY if c % 7 == 6 else Source.CHAT
            entities.append(
                Entity(
                    tenant_id=tenant,
                    source=source,
                    source_id=f"conv-{t + 1}-{c + 1:04d}",
                    name=f"{topic} #{c + 1}",
                    named=rng.random() > cfg.rename_rate,
                    weight=rng.paretovariate(1.6),
                    us_only=rng.random() < US_GEO_SHARE,
                )
            )
        for a in range(cfg.agents_per_tenant):
            entities.append(
                Entity(
                    tenant_id=tenant,
                    source=Source.AGENT,
                    source_id=f"agent-{t + 1}-{a + 1:03d}",
                    name=AGENT_NAMES[a % len(AGENT_NAMES)],
                    named=True,
                    weight=rng.paretovariate(1.3),
                    every_hours=rng.choice([1, 2, 4, 6, 12, 24]),
                    offset_minutes=rng.randrange(60),
                    us_only=rng.random() < US_GEO_SHARE,
                )
            )
    return entities


def _customers(cfg: SimulationConfig, tenant_index: int) -> list[str]:
    """The tenant's customers: names of their own (no two tenants share one)."""
    per, names = cfg.customers_per_tenant, CUSTOMER_NAMES
    out = []
    for c in range(max(1, per)):
        n = tenant_index * max(1, per) + c
        out.append(names[n % len(names)] + (f"-{n // len(names) + 1}" if n >= len(names) else ""))
    return out


def _zipf_cum_weights(n: int, skew: float) -> list[float]:
    total, cum = 0.0, []
    for rank in range(1, n + 1):
        total += rank**-skew
        cum.append(total)
    return cum


class _Attribution:
    """Who and what each call is for, from a random stream of its own (see the module)."""

    def __init__(self, cfg: SimulationConfig, entities: list[Entity]) -> None:
        self.rng = random.Random(f"attributes:{cfg.seed}")
        tenants = [f"tenant-{t + 1}" for t in range(cfg.tenants)]  # as _entities names them
        self.users = {
            tenant: [f"user-{t + 1}-{u + 1:04d}" for u in range(max(1, cfg.users_per_tenant))]
            for t, tenant in enumerate(tenants)
        }
        self.user_weights = _zipf_cum_weights(max(1, cfg.users_per_tenant), USER_SKEW)
        for t, tenant in enumerate(tenants):
            customers = _customers(cfg, t)
            weights = [1 / (c + 1) for c in range(len(customers))]  # a big one, then smaller
            for entity in (e for e in entities if e.tenant_id == tenant):
                entity.customer = self.rng.choices(customers, weights=weights)[0]
                if entity.source is Source.AGENT:
                    index = AGENT_NAMES.index(entity.name) if entity.name in AGENT_NAMES else 0
                    entity.feature = AGENT_FEATURES[index % len(AGENT_FEATURES)]

    def of(self, entity: Entity) -> dict[str, str]:
        """The attributes of one call of ``entity``."""
        attributes = {
            "customer": entity.customer,
            "environment": _pick(self.rng, ENVIRONMENT_MIX),
        }
        if entity.source is Source.CHAT:
            users = self.users[entity.tenant_id]
            attributes["user"] = self.rng.choices(users, cum_weights=self.user_weights)[0]
        if entity.feature is not None:
            attributes["feature"] = entity.feature
        return attributes


@functools.cache
def _shipped_book() -> PriceBook:
    """The book shipped with the code: what a model offers shapes the traffic, not prices."""
    return PriceBook.load()


@functools.cache
def _features(model: str) -> frozenset[str]:
    """Price tiers and inference geos the book prices ``model`` with today."""
    book = _shipped_book()
    canonical = book.resolve(model)
    entry = book.entry(canonical, datetime.now(UTC))
    geos = frozenset(entry.geo_multipliers) if entry else frozenset()
    return book.rate_sets(canonical) | geos


def has_fast_mode(model: str) -> bool:
    """Services only ask for fast mode on models that have it (fast-mode prices)."""
    return "fast" in _features(model)


def has_us_inference(model: str) -> bool:
    """US-only inference exists for recent models only (those with a US geo multiplier)."""
    return "us" in _features(model)


def _tokens(rng: random.Random, source: Source, model: str) -> dict[str, int]:
    """Token counts shaped like real traffic: long cached contexts, short outputs.

    Extended thinking makes a call's output longer; its thinking tokens are part of it.
    """
    if source is Source.MEMORY:
        fresh, out, cached = rng.lognormvariate(7.3, 0.6), rng.lognormvariate(5.0, 0.6), 0.0
    elif source is Source.AGENT:
        fresh = rng.lognormvariate(8.0, 0.9)
        out = rng.lognormvariate(6.5, 0.8)
        cached = rng.lognormvariate(9.8, 0.7) if rng.random() < 0.8 else 0.0
    else:
        fresh = rng.lognormvariate(6.8, 1.0)
        out = rng.lognormvariate(6.2, 0.7)
        cached = rng.lognormvariate(8.6, 1.0) if rng.random() < 0.65 else 0.0
    write_5m = int(rng.lognormvariate(7.0, 0.8)) if rng.random() < 0.2 else 0
    write_1h = (
        int(rng.lognormvariate(7.5, 0.8)) if source is Source.AGENT and rng.random() < 0.1 else 0
    )
    if "haiku" in model:
        out *= 0.6
    thinks = rng.random() < (OPUS_THINKING_SHARE if "opus" in model else THINKING_SHARE[source])
    output = max(1, min(int(out * 2.2 if thinks else out), 64_000))
    return {
        "input_tokens": max(1, int(fresh)),
        "output_tokens": output,
        "thinking_tokens": int(output * rng.uniform(0.4, 0.85)) if thinks else 0,
        "cache_read_input_tokens": min(int(cached), 900_000),
        "cache_creation_5m_input_tokens": write_5m,
        "cache_creation_1h_input_tokens": write_1h,
        "cache_creation_input_tokens": write_5m + write_1h,
    }


def _tier_and_speed(rng: random.Random, source: Source, model: str) -> tuple[ServiceTier, Speed]:
    """Batch for most memory extraction; fast mode for some agent calls, where offered."""
    if rng.random() < BATCH_SHARE[source]:
        return ServiceTier.BATCH, Speed.STANDARD
    if rng.random() < FAST_SHARE[source] and has_fast_mode(model):
        return ServiceTier.STANDARD, Speed.FAST
    return ServiceTier.STANDARD, Speed.STANDARD


def _server_tools(rng: random.Random, source: Source) -> tuple[int, int]:
    """(web searches, web fetches) of one call: server tools the API runs for the model."""
    if rng.random() >= WEB_SEARCH_SHARE[source]:
        return 0, 0
    searches = rng.randint(1, 5)
    return searches, rng.randint(1, 3) if rng.random() < WEB_FETCH_SHARE else 0


def _times(cfg: SimulationConfig, rng: random.Random, end: datetime) -> list[datetime | None]:
    """``cfg.calls`` call times over the window, diurnally shaped; None means "now"."""
    if cfg.days <= 0:
        return [None] * cfg.calls
    span = cfg.days * 86400.0
    times: list[datetime | None] = []
    while len(times) < cfg.calls:
        ts = end - timedelta(seconds=rng.random() * span)
        if rng.random() * 1.25 <= _diurnal_weight(ts):
            times.append(ts)
    return sorted(times)  # type: ignore[type-var]


def _schedule(agent: Entity, ts: datetime, start: datetime) -> datetime:
    """Snap an agent's call onto its schedule: every N hours, at a fixed minute."""
    step = agent.every_hours * 3600
    offset = agent.offset_minutes * 60
    slot = math.floor((ts.timestamp() - offset) / step) * step + offset
    snapped = datetime.fromtimestamp(slot + (ts.timestamp() % 60), UTC)
    return snapped if start <= snapped <= ts else ts


def generate(cfg: SimulationConfig) -> Iterator[Published]:
    """Yield the publications of ``cfg.calls`` unique calls, in time order."""
    rng = random.Random(cfg.seed)
    end = (cfg.end or datetime.now(UTC)).astimezone(UTC)
    entities = _entities(cfg, rng)
    attribution = _Attribution(cfg, entities)
    by_source: dict[Source, list[Entity]] = {s: [] for s in Source}
    for e in entities:
        by_source[e.source].append(e)
    chat_like = by_source[Source.CHAT] + by_source[Source.MEMORY]
    spike_agent = by_source[Source.AGENT][0] if by_source[Source.AGENT] else None
    spike_start = end - timedelta(days=cfg.days * 0.3, hours=2) if cfg.days > 0 else end
    renamed: set[str] = set()
    calls_seen: dict[str, int] = {}

    for i, planned in enumerate(_times(cfg, rng, end)):
        ts = planned or datetime.now(UTC)
        source = _pick(rng, SOURCE_MIX)
        pool = chat_like if source is not Source.AGENT else by_source[Source.AGENT]
        if source is Source.MEMORY:
            pool = by_source[Source.MEMORY] or chat_like
        entity = rng.choices(pool, weights=[e.weight for e in pool])[0]
        in_spike = (
            cfg.spike
            and spike_agent is not None
            and spike_start <= ts < spike_start + timedelta(hours=1)
            and rng.random() < 0.5
        )
        if in_spike:
            assert spike_agent is not None
            entity = spike_agent
        elif entity.source is Source.AGENT and cfg.days > 0:
            ts = _schedule(entity, ts, end - timedelta(days=cfg.days))
        model = _pick(rng, MODEL_MIX[entity.source])
        tokens = _tokens(rng, entity.source, model)
        tier, speed = _tier_and_speed(rng, entity.source, model)
        searches, fetches = _server_tools(rng, entity.source)
        for _ in range(searches + fetches):  # results and pages enter the context
            tokens["input_tokens"] += int(rng.lognormvariate(7.6, 0.5))
        if in_spike:
            tokens["cache_read_input_tokens"] = 0
            tokens["input_tokens"] = min(tokens["input_tokens"] * 8, 180_000)
        seen = calls_seen.get(entity.source_id, 0)
        calls_seen[entity.source_id] = seen + 1
        carries_name = entity.named or entity.source_id in renamed
        error = rng.random() < 0.015
        if error:  # a failed call bills nothing here, but is still a call
            tokens = dict.fromkeys(tokens, 0)
            searches = fetches = 0
        per_output_token_ms = 5 if speed is Speed.FAST else 12  # fast mode: ~2.5x faster
        duration = (
            rng.lognormvariate(7.8, 0.6)
            + tokens["output_tokens"] * per_output_token_ms
            + searches * 700
            + fetches * 400
        )
        event = UsageEvent(
            event_id=uuid7(),  # unique per run, even with the same seed
            tenant_id=entity.tenant_id,
            occurred_at=ts,
            source=entity.source,
            source_id=entity.source_id,
            source_name=entity.name if carries_name else None,
            model=model,
            duration_ms=int(duration),
            status=Status.ERROR if error else Status.OK,
            request_id=f"req_{rng.getrandbits(64):016x}",
            metadata={"sim": True, "seq": i},
            input_tokens=tokens["input_tokens"],
            output_tokens=tokens["output_tokens"],
            cache_creation_input_tokens=tokens["cache_creation_input_tokens"],
            cache_creation_5m_input_tokens=tokens["cache_creation_5m_input_tokens"],
            cache_creation_1h_input_tokens=tokens["cache_creation_1h_input_tokens"],
            cache_read_input_tokens=tokens["cache_read_input_tokens"],
            service_tier=tier,
            speed=speed,
            inference_geo="us" if entity.us_only and has_us_inference(model) else "global",
            web_search_requests=searches,
            web_fetch_requests=fetches,
            thinking_tokens=tokens["thinking_tokens"],
            attributes=attribution.of(entity),
        )
        spike = (spike_start, spike_start + timedelta(hours=1)) if in_spike else None
        yield Published(call=event, spike=spike)
        if rng.random() < cfg.duplicate_rate:
            yield Published(call=event, duplicate=True)
        if not carries_name and seen >= 1 and rng.random() < 0.5:
            renamed.add(entity.source_id)
            yield Published(
                rename=EntityRenamed(
                    tenant_id=entity.tenant_id,
                    source=entity.source,
                    source_id=entity.source_id,
                    name=entity.name,
                    renamed_at=min(ts + timedelta(seconds=5), datetime.now(UTC)),
                )
            )


@dataclass
class Totals:
    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    web_search_requests: int = 0
    cost_usd: Decimal = Decimal(0)
    unpriced_calls: int = 0

    def add(self, event: UsageEvent, cost: Decimal | None) -> None:
        self.calls += 1
        self.input_tokens += event.input_tokens
        self.output_tokens += event.output_tokens
        self.cache_creation_input_tokens += event.cache_creation_input_tokens
        self.cache_read_input_tokens += event.cache_read_input_tokens
        self.web_search_requests += event.web_search_requests or 0
        if cost is None:
            self.unpriced_calls += 1
        else:
            self.cost_usd += cost

    def as_json(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_creation_input_tokens": self.cache_creation_input_tokens,
            "cache_read_input_tokens": self.cache_read_input_tokens,
            "web_search_requests": self.web_search_requests,
            "cost_usd": str(self.cost_usd),
            "unpriced_calls": self.unpriced_calls,
        }


def _same_model(model: str) -> str:
    return model


@dataclass
class Manifest:
    """Totals of what was published, each unique valid call counted once.

    ``model_of`` names models as the worker stores them (the book's ``resolve``), so that
    ``by_model`` can be checked against the API's cost by model.
    """

    price: Callable[[UsageEvent], Decimal | None]
    total: Totals = field(default_factory=Totals)
    by_tenant: dict[str, Totals] = field(default_factory=dict)
    by_source: dict[str, Totals] = field(default_factory=dict)
    by_model: dict[str, Totals] = field(default_factory=dict)
    # attribute key -> value -> totals of the calls carrying that value (all tenants)
    by_attribute: dict[str, dict[str, Totals]] = field(default_factory=dict)
    renames: int = 0
    duplicates_published: int = 0
    model_of: Callable[[str], str] = _same_model
    # injected spikes: (tenant_id, source, source_id) -> [start, end) of the spike
    spikes: dict[tuple[str, str, str], tuple[datetime, datetime]] = field(default_factory=dict)

    def record(self, item: Published) -> None:
        if item.rename is not None:
            self.renames += 1
            return
        assert item.call is not None
        if item.duplicate:
            self.duplicates_published += 1
            return
        event = item.call
        if item.spike is not None:
            self.spikes[(event.tenant_id, event.source.value, event.source_id)] = item.spike
        cost = self.price(event)
        self.total.add(event, cost)
        self.by_tenant.setdefault(event.tenant_id, Totals()).add(event, cost)
        self.by_source.setdefault(event.source.value, Totals()).add(event, cost)
        self.by_model.setdefault(self.model_of(event.model), Totals()).add(event, cost)
        for key, value in event.attributes.items():
            self.by_attribute.setdefault(key, {}).setdefault(value, Totals()).add(event, cost)

    def as_json(self) -> dict[str, Any]:
        return {
            **self.total.as_json(),
            "by_tenant": {k: v.as_json() for k, v in sorted(self.by_tenant.items())},
            "by_source": {k: v.as_json() for k, v in sorted(self.by_source.items())},
            "by_model": {k: v.as_json() for k, v in sorted(self.by_model.items())},
            "by_attribute": {
                key: {value: t.as_json() for value, t in sorted(values.items())}
                for key, values in sorted(self.by_attribute.items())
            },
            "renames_published": self.renames,
            "duplicates_published": self.duplicates_published,
            "spikes": [
                {
                    "tenant_id": tenant,
                    "source": source,
                    "source_id": source_id,
                    "start": start.isoformat(),
                    "end": end.isoformat(),
                }
                for (tenant, source, source_id), (start, end) in sorted(self.spikes.items())
            ],
        }


def book_pricer(book: PriceBook) -> Callable[[UsageEvent], Decimal | None]:
    """Price an event exactly as the worker's enricher does: same book, same model
    normalisation, same billing fields (tier, fast mode, inference geo, web searches)."""

    def price(event: UsageEvent) -> Decimal | None:
        quote = book.quote_event(book.resolve(event.model), event)
        return quote.cost_usd if quote.priced else None

    return price


async def publish(
    settings: Settings,
    cfg: SimulationConfig,
    *,
    rate: float | None = None,
    on_progress: Callable[[int], None] | None = None,
    stop: asyncio.Event | None = None,
) -> Manifest:
    """Publish ``cfg``'s traffic through :class:`UsagePublisher`; return its manifest.

    ``rate`` limits unique calls per second (None: as fast as the publisher takes them);
    ``stop`` ends a live run early (the manifest then covers what was published).
    The manifest prices with the worker's book: the shipped one plus ``price_overrides``.
    """
    from producers.publisher import UsagePublisher

    book = PriceBook.load(overrides=settings.price_overrides)
    manifest = Manifest(price=book_pricer(book), model_of=book.resolve)
    started = time.monotonic()
    async with UsagePublisher(settings) as publisher:
        for item in generate(cfg):
            if stop is not None and stop.is_set():
                break
            if item.rename is not None:
                await publisher.publish_rename(item.rename)
            elif item.call is not None:
                await publisher.publish(item.call)
            manifest.record(item)
            if item.call is not None and not item.duplicate:
                if on_progress is not None:
                    on_progress(1)
                if rate:
                    ahead = manifest.total.calls / rate - (time.monotonic() - started)
                    if ahead > 0:
                        await asyncio.sleep(ahead)
        await publisher.flush()
    return manifest


WRITE_COLUMNS = (
    "event_id", "tenant_id", "occurred_at", "source", "source_id", "source_name", "model",
    "input_tokens", "output_tokens", "cost_usd", "priced", "duration_ms", "status",
)  # fmt: skip


def write_calls(
    client: Any, events: Iterable[UsageEvent], price: Callable[[UsageEvent], Decimal | None]
) -> int:
    """Insert ``events`` straight into ``usage_events`` (a clickhouse-connect client),
    priced with ``price``; the rollups fill as in production. For benchmarks and tests of
    what reads stored calls (the alerter), without Kafka and a worker in between."""
    rows = []
    for event in events:
        cost = price(event)
        rows.append([
            event.event_id, event.tenant_id, event.occurred_at, event.source.value,
            event.source_id, event.source_name or "", event.model, event.input_tokens,
            event.output_tokens, cost or 0, cost is not None, event.duration_ms,
            event.status.value,
        ])  # fmt: skip
    if rows:
        client.insert("usage_events", rows, column_names=list(WRITE_COLUMNS))
    return len(rows)

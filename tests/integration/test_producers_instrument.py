"""Instrumented Anthropic clients publish through the real publisher to the real broker."""

from __future__ import annotations

import asyncio

import anthropic
import pytest

from llm_usage.settings import Settings
from producers.contract import ServiceTier, Source, Status, UsageEvent
from producers.instrument import instrument, usage_context
from producers.publisher import SyncUsagePublisher, UsagePublisher
from tests.integration.test_producers_publisher import read_calls
from tests.unit.test_producers_instrument import (
    ASK,
    BATCH_ID,
    MESSAGE_BILLING,
    async_client,
    billing,
    check_batch_events,
    sync_client,
)


def by_request(events: list[UsageEvent]) -> dict[tuple[str | None, bool, Status], UsageEvent]:
    return {(e.request_id, bool(e.metadata["stream"]), e.status): e for e in events}


def test_sync_client_calls_arrive_on_the_calls_topic(settings: Settings) -> None:
    with SyncUsagePublisher(settings) as pub:
        client = instrument(sync_client(), pub, tenant_id="acme", source="chat")
        failing = instrument(sync_client(status=500), pub, tenant_id="acme", source="chat")
        with usage_context(source_id="conv-9", source_name="Trip planning"):
            client.messages.create(**ASK)
            with client.messages.stream(**ASK) as stream:
                stream.until_done()
            with pytest.raises(anthropic.InternalServerError):
                failing.messages.create(**ASK)
        pub.flush()
    got = by_request(asyncio.run(read_calls(settings, 3)))
    created = got[("req_msg_1", False, Status.OK)]
    streamed = got[("req_stream_1", True, Status.OK)]
    failed = got[("req_err_1", False, Status.ERROR)]
    assert (created.input_tokens, created.cache_creation_1h_input_tokens) == (2095, 2000)
    assert billing(created) == MESSAGE_BILLING  # the v2 fields survive the wire
    assert (streamed.input_tokens, streamed.output_tokens) == (472, 89)
    assert failed.metadata["http_status"] == 500
    assert {e.source_id for e in got.values()} == {"conv-9"}
    assert {e.source_name for e in got.values()} == {"Trip planning"}


def test_async_client_calls_arrive_on_the_calls_topic(settings: Settings) -> None:
    async def main() -> list[UsageEvent]:
        async with UsagePublisher(settings) as pub:
            client = instrument(
                async_client(), pub, tenant_id="acme", source=Source.AGENT, source_id="agent-3"
            )
            await client.messages.create(**ASK)
            async with client.messages.stream(**ASK) as stream:
                await stream.get_final_message()
        return await read_calls(settings, 2)

    got = by_request(asyncio.run(main()))
    assert got[("req_msg_1", False, Status.OK)].output_tokens == 503
    assert got[("req_stream_1", True, Status.OK)].cache_read_input_tokens == 3000
    assert {e.source for e in got.values()} == {Source.AGENT}


def test_batch_results_read_twice_arrive_with_the_same_event_ids(settings: Settings) -> None:
    """The worker dedupes by event_id per partition: both copies must share id and partition."""
    with SyncUsagePublisher(settings) as pub:
        client = instrument(sync_client(), pub, tenant_id="acme", source="memory")
        for _ in range(2):
            for _ in client.messages.batches.results(BATCH_ID):
                pass
        pub.flush()
    events = asyncio.run(read_calls(settings, 6))  # read_calls checks each event's partition
    unique = {e.event_id: e for e in events}
    assert len(events) == 6 and len(unique) == 3  # partitions interleave: order by custom_id
    order = {"memory__conv-42__1": 0, "memory__conv-42__0": 1, "nightly-digest-7": 2}
    check_batch_events(sorted(unique.values(), key=lambda e: order[str(e.metadata["custom_id"])]))
    assert {e.service_tier for e in events} == {ServiceTier.BATCH}

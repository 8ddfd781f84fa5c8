"""Library embedded by chat, agent and memory services to publish LLM usage events.

- ``producers.contract``: the event models and wire format (imported by the processor too);
- ``producers.publisher``: ``UsagePublisher`` (asyncio) and ``SyncUsagePublisher`` (threads);
- ``producers.instrument``: ``instrument(client, publisher, ...)``, ``usage_context`` and
  ``usage_attributes``;
- ``producers.topics``: ``ensure_topics(settings)``; ``producers.spool``: the outage spool.

Only the contract is imported here, so the stream processor does not pull in the publisher.
"""

from producers.contract import EntityRenamed, Source, Status, UsageEvent, uuid7

__all__ = ["EntityRenamed", "Source", "Status", "UsageEvent", "uuid7"]

"""Library embedded by chat, agent and memory services to publish LLM usage events."""

from producers.contract import EntityRenamed, Source, Status, UsageEvent, uuid7

__all__ = ["EntityRenamed", "Source", "Status", "UsageEvent", "uuid7"]

"""Run one worker process: ``llm-usage worker`` or ``python -m stream_processor``.

Several workers with the same ``LLM_USAGE_PROCESSOR_GROUP`` split the calls topic's
partitions between them; each restarts safely at its committed offsets.
"""

from __future__ import annotations

import asyncio
import logging

import faust

from llm_usage.settings import Settings, get_settings
from stream_processor.app import Processor
from stream_processor.cluster import fetch_metadata

log = logging.getLogger(__name__)


async def _prepare(settings: Settings) -> str:
    """Create missing topics (partition count from settings) and read the cluster id."""
    from producers.topics import ensure_topics

    await ensure_topics(settings)
    cluster_id, _ = await fetch_metadata(settings)
    return cluster_id


def run(settings: Settings | None = None) -> None:
    """Start the Faust worker in this process and block until it stops (SIGTERM/SIGINT)."""
    settings = settings or get_settings()
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    cluster_id = loop.run_until_complete(_prepare(settings))
    processor = Processor(settings, cluster_id)
    worker = faust.Worker(
        processor.app,
        loop=loop,
        loglevel=settings.processor_log_level,
        quiet=True,
    )
    log.info("worker for %s, cluster %s", settings.topic_calls, cluster_id)
    worker.execute_from_commandline()

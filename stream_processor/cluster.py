"""The Kafka cluster id, which goes into every insert token.

Offsets restart at 0 when a topic is recreated or a memory-only broker restarts; the cluster
id (which the local launcher sets afresh on every broker start) keeps tokens from an old
cluster life from matching new, legitimate batches. It comes from Kafka metadata (v2+),
so the same code works against Apache Kafka, Redpanda and Tansu.
"""

from __future__ import annotations

from aiokafka.client import AIOKafkaClient
from aiokafka.protocol.metadata import MetadataRequest

from llm_usage.kafka import kafka_client_options
from llm_usage.settings import Settings


async def fetch_metadata(settings: Settings) -> tuple[str, dict[str, int]]:
    """The cluster id and the partition count of every topic."""
    client = AIOKafkaClient(**kafka_client_options(settings))
    await client.bootstrap()
    try:
        node_id = client.get_random_node()
        response = await client.send(node_id, MetadataRequest([]))
    finally:
        await client.close()
    cluster_id = getattr(response, "cluster_id", None)
    if not cluster_id:
        raise RuntimeError("the Kafka broker did not report a cluster id (Metadata v2+)")
    # each topic entry is (error_code, name, [is_internal,] partitions)
    partitions = {str(entry[1]): len(entry[-1]) for entry in response.topics}
    return str(cluster_id), partitions

"""The local, Docker-free stack: a Tansu Kafka broker and a chdb-core ClickHouse server.

Production talks to Apache Kafka and ClickHouse server; nothing outside this package knows
which one it reaches.
"""

from llm_usage.localstack.stack import (
    LocalStack,
    ServiceStatus,
    stack_settings,
    throwaway_settings,
)

__all__ = ["LocalStack", "ServiceStatus", "stack_settings", "throwaway_settings"]

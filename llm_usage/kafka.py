"""Kafka connection options from the settings, so every client connects the same way.

Locally the broker is plaintext on loopback; in production it is Apache Kafka (Strimzi,
MSK, Confluent Cloud, Redpanda) behind TLS and SASL. Every aiokafka client the pipeline
creates (producer, consumer, admin) and the Faust app take their connection options from
here, never from ad-hoc keyword arguments::

    AIOKafkaProducer(**kafka_client_options(settings), acks="all")
    AIOKafkaAdminClient(**kafka_client_options(settings), client_id="llm-usage-admin")
    faust.App("llm-usage", **faust_broker_options(settings), ...)
"""

from __future__ import annotations

import ssl
from typing import Any

from llm_usage.settings import Settings

_SSL_PROTOCOLS = {"SSL", "SASL_SSL"}
_SASL_PROTOCOLS = {"SASL_PLAINTEXT", "SASL_SSL"}


class KafkaConfigError(ValueError):
    """The Kafka security settings are incomplete or contradict each other."""


def _check(settings: Settings) -> None:
    protocol = settings.kafka_security_protocol
    if protocol in _SASL_PROTOCOLS and not (
        settings.kafka_sasl_username and settings.kafka_sasl_password
    ):
        raise KafkaConfigError(
            f"LLM_USAGE_KAFKA_SECURITY_PROTOCOL={protocol} needs LLM_USAGE_KAFKA_SASL_USERNAME "
            "and LLM_USAGE_KAFKA_SASL_PASSWORD"
        )
    if bool(settings.kafka_ssl_certfile) != bool(settings.kafka_ssl_keyfile):
        raise KafkaConfigError(
            "mutual TLS needs both LLM_USAGE_KAFKA_SSL_CERTFILE and LLM_USAGE_KAFKA_SSL_KEYFILE"
        )
    uses_tls_files = settings.kafka_ssl_cafile or settings.kafka_ssl_certfile
    if uses_tls_files and protocol not in _SSL_PROTOCOLS:
        raise KafkaConfigError(
            f"TLS files are set but LLM_USAGE_KAFKA_SECURITY_PROTOCOL={protocol}; "
            "use SSL or SASL_SSL"
        )


def kafka_ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context for SSL / SASL_SSL (hostname checked, system CAs unless a CA file)."""
    _check(settings)
    if settings.kafka_security_protocol not in _SSL_PROTOCOLS:
        return None
    context = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH, cafile=settings.kafka_ssl_cafile or None
    )
    if settings.kafka_ssl_certfile:
        context.load_cert_chain(settings.kafka_ssl_certfile, settings.kafka_ssl_keyfile)
    return context


def kafka_client_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for ``AIOKafkaProducer`` / ``AIOKafkaConsumer`` / ``AIOKafkaAdminClient``.

    Always ``bootstrap_servers`` and ``security_protocol``; ``ssl_context`` for SSL and
    SASL_SSL; ``sasl_mechanism`` and the SASL user/password for SASL_*. Raises
    :class:`KafkaConfigError` when the settings are incomplete (a SASL protocol without
    credentials, a certificate without its key).
    """
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap,
        "security_protocol": settings.kafka_security_protocol,
    }
    context = kafka_ssl_context(settings)
    if context is not None:
        options["ssl_context"] = context
    if settings.kafka_security_protocol in _SASL_PROTOCOLS:
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism
        options["sasl_plain_username"] = settings.kafka_sasl_username
        options["sasl_plain_password"] = settings.kafka_sasl_password
    return options


def faust_broker_options(settings: Settings) -> dict[str, Any]:
    """``broker`` and ``broker_credentials`` for ``faust.App`` (same rules as above)."""
    import faust

    context = kafka_ssl_context(settings)
    servers = [s.strip() for s in settings.kafka_bootstrap.split(",") if s.strip()]
    options: dict[str, Any] = {"broker": [f"kafka://{server}" for server in servers]}
    if settings.kafka_security_protocol in _SASL_PROTOCOLS:
        options["broker_credentials"] = faust.SASLCredentials(
            username=settings.kafka_sasl_username,
            password=settings.kafka_sasl_password,
            ssl_context=context,  # None -> SASL_PLAINTEXT, a context -> SASL_SSL
            mechanism=settings.kafka_sasl_mechanism,
        )
    elif context is not None:
        options["broker_credentials"] = faust.SSLCredentials(context)
    return options

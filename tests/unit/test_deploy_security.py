"""Production security settings: Kafka SASL/TLS options and ClickHouse TLS/credentials."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from pathlib import Path

import certifi
import faust
import pytest

from llm_usage.clickhouse.client import CLUSTER_QUERY_SETTINGS, client_options
from llm_usage.kafka import (
    KafkaConfigError,
    faust_broker_options,
    kafka_client_options,
    kafka_ssl_context,
)
from llm_usage.settings import Settings


def test_plaintext_by_default_like_the_local_stack() -> None:
    options = kafka_client_options(Settings(kafka_bootstrap="a:9092,b:9092"))
    assert options == {"bootstrap_servers": "a:9092,b:9092", "security_protocol": "PLAINTEXT"}
    assert faust_broker_options(Settings(kafka_bootstrap="a:9092,b:9092")) == {
        "broker": ["kafka://a:9092", "kafka://b:9092"]
    }


def test_sasl_ssl_with_a_private_ca(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_USAGE_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("LLM_USAGE_KAFKA_SASL_USERNAME", "llm-usage")
    monkeypatch.setenv("LLM_USAGE_KAFKA_SASL_PASSWORD", "s3cret")
    monkeypatch.setenv("LLM_USAGE_KAFKA_SSL_CAFILE", certifi.where())
    settings = Settings()
    options = kafka_client_options(settings)
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (options["sasl_plain_username"], options["sasl_plain_password"]) == (
        "llm-usage", "s3cret"
    )  # fmt: skip
    context = options["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED
    assert context.cert_store_stats()["x509_ca"] > 0  # the CA file was loaded
    assert "s3cret" not in repr(settings), "passwords stay out of logs"
    credentials = faust_broker_options(settings)["broker_credentials"]
    assert isinstance(credentials, faust.SASLCredentials)
    assert credentials.protocol.value == "SASL_SSL"
    assert credentials.mechanism.value == "SCRAM-SHA-512"
    faust_options = faust_broker_options(settings)
    app = faust.App("deploy-test", **faust_options)
    assert app.conf.broker_credentials is faust_options["broker_credentials"]
    assert [str(url) for url in app.conf.broker] == ["kafka://127.0.0.1:9092"]


def test_the_options_are_accepted_by_aiokafka() -> None:
    import asyncio

    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient

    settings = Settings(
        kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_mechanism="SCRAM-SHA-256",
        kafka_sasl_username="u", kafka_sasl_password="p",
    )  # fmt: skip

    async def build() -> None:  # aiokafka objects want a running loop; nothing connects
        options = kafka_client_options(settings)
        producer = AIOKafkaProducer(**options, acks="all")
        consumer = AIOKafkaConsumer("t", **options, group_id="g")
        admin = AIOKafkaAdminClient(**options)
        for client in (producer.client, consumer._client, admin._client):
            assert client._security_protocol == "SASL_PLAINTEXT"
            assert client._sasl_mechanism == "SCRAM-SHA-256"

    asyncio.run(build())


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"kafka_security_protocol": "SASL_SSL"}, "SASL_USERNAME"),
        ({"kafka_security_protocol": "SSL", "kafka_ssl_certfile": "c.pem"}, "KEYFILE"),
        ({"kafka_ssl_cafile": "ca.pem"}, "use SSL or SASL_SSL"),
    ],
)
def test_incomplete_security_settings_are_refused(overrides: dict[str, str], message: str) -> None:
    with pytest.raises(KafkaConfigError, match=message):
        kafka_client_options(Settings(**overrides))  # type: ignore[arg-type]


def test_bad_protocol_or_mechanism_names_the_field() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="kafka_security_protocol"):
        Settings(kafka_security_protocol="TLS")
    with pytest.raises(ValidationError, match="kafka_sasl_mechanism"):
        Settings(kafka_sasl_mechanism="GSSAPI")


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_mutual_tls_loads_the_client_certificate(tmp_path: Path) -> None:
    cert, key = tmp_path / "client.pem", tmp_path / "client.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=llm-usage", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    settings = Settings(
        kafka_security_protocol="SSL", kafka_ssl_cafile=str(cert),
        kafka_ssl_certfile=str(cert), kafka_ssl_keyfile=str(key),
    )  # fmt: skip
    assert kafka_ssl_context(settings) is not None
    assert isinstance(faust_broker_options(settings)["broker_credentials"], faust.SSLCredentials)
    with pytest.raises(ssl.SSLError):
        kafka_ssl_context(settings.model_copy(update={"kafka_ssl_keyfile": str(cert)}))


def test_clickhouse_tls_credentials_and_cluster_settings() -> None:
    plain = client_options(Settings())
    assert plain["secure"] is False and "verify" not in plain and "settings" not in plain
    settings = Settings(
        clickhouse_url="https://ch.example.com:8443", clickhouse_user="llm_usage",
        clickhouse_password="pw", clickhouse_ca_cert="/etc/ssl/ca.pem",
        clickhouse_cluster="prod",
    )  # fmt: skip
    options = client_options(settings)
    assert (options["host"], options["port"], options["secure"]) == ("ch.example.com", 8443, True)
    assert options["verify"] is True and options["ca_cert"] == "/etc/ssl/ca.pem"
    assert (options["username"], options["password"]) == ("llm_usage", "pw")
    assert options["settings"] == CLUSTER_QUERY_SETTINGS
    unverified = client_options(settings.model_copy(update={"clickhouse_verify": False}))
    assert unverified["verify"] is False
    assert "pw" not in repr(settings)

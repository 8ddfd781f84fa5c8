"""Webhook deliveries: each alert POSTed as JSON to each webhook of its tenant, signed, with
retries and an idempotency key. At least once: a receiver drops repeats by the key.

Headers of every delivery (Stripe's scheme, so existing verifiers fit):

- ``X-LLM-Usage-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>``
- ``Idempotency-Key: <alert_id>:<version>`` (the same on every retry and re-delivery)
- ``X-LLM-Usage-Event: <kind>``
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from dataclasses import dataclass

import httpx

from stream_processor.alerts.store import Alert, Webhook

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-LLM-Usage-Signature"
MAX_BACKOFF_S = 300.0


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The signature header's value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify(secret: str, body: bytes, header: str, *, tolerance_s: float = 300.0) -> bool:
    """A receiver's check: the signature matches and is at most ``tolerance_s`` old."""
    try:
        parts = dict(item.split("=", 1) for item in header.split(","))
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs(time.time() - timestamp) > tolerance_s:
        return False
    expected = sign(secret, body, timestamp).split("v1=", 1)[1]
    return hmac.compare_digest(expected, parts.get("v1", ""))


def idempotency_key(alert: Alert) -> str:
    return f"{alert.alert_id}:{alert.version}"


@dataclass(frozen=True)
class Outcome:
    attempts: int
    status: int  # HTTP status of the last attempt; 0 when none answered
    delivered: bool


async def deliver(
    client: httpx.AsyncClient,
    alert: Alert,
    hook: Webhook,
    *,
    attempts: int,
    backoff_s: float,
) -> Outcome:
    """POST ``alert`` until a 2xx answer, at most ``attempts`` times, backing off between.

    4xx answers other than 408 and 429 are final (the receiver refuses this alert); 5xx,
    408, 429 and network errors are retried after ``backoff_s``, doubled each time.
    """
    body = json.dumps(alert.as_json(), separators=(",", ":")).encode()
    status = 0
    for attempt in range(1, attempts + 1):
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(hook.secret, body, int(time.time())),
            "Idempotency-Key": idempotency_key(alert),
            "X-LLM-Usage-Event": alert.kind,
        }
        try:
            response = await client.post(hook.url, content=body, headers=headers)
            status = response.status_code
            if 200 <= status < 300:
                return Outcome(attempt, status, True)
            if 400 <= status < 500 and status not in (408, 429):
                log.warning(
                    "webhook %s refused alert %s: HTTP %d", hook.webhook_id, alert.alert_id, status
                )
                return Outcome(attempt, status, False)
        except httpx.HTTPError as exc:
            status = 0
            log.info("webhook %s attempt %d failed: %s", hook.webhook_id, attempt, exc)
        if attempt < attempts:
            await asyncio.sleep(min(backoff_s * 2 ** (attempt - 1), MAX_BACKOFF_S))
    log.warning(
        "webhook %s: gave up on alert %s after %d attempts",
        hook.webhook_id,
        alert.alert_id,
        attempts,
    )
    return Outcome(attempts, status, False)

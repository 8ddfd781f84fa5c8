"""Request limits of the ingest service: body size (413) and a per-key event rate (429)."""

from __future__ import annotations

import math
import threading
import time
import zlib
from collections.abc import Callable

from fastapi import HTTPException, Request, status


class TooLarge(HTTPException):
    def __init__(self, detail: str) -> None:
        super().__init__(status.HTTP_413_REQUEST_ENTITY_TOO_LARGE, detail)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it exceeds ``limit`` bytes (a lying or
    absent Content-Length cannot make the service buffer more than that)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"request body of {int(declared):,} bytes exceeds the limit of {limit:,}")
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"request body exceeds the limit of {limit:,} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding == "gzip":  # what OTLP exporters and the Collector send by default
        return _gunzip(body, limit)
    if encoding not in ("", "identity"):
        raise HTTPException(
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
            f"Content-Encoding {encoding!r} is not supported: send gzip or none",
        )
    return body


def _gunzip(body: bytes, limit: int) -> bytes:
    """Decompress, refusing with 413 a body that inflates beyond ``limit`` (a zip bomb)."""
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"body is not valid gzip: {exc}") from exc
    if len(out) > limit or inflater.unconsumed_tail:
        raise TooLarge(f"decompressed request body exceeds the limit of {limit:,} bytes")
    return out


class RateLimiter:
    """A token bucket per key: ``rate`` events per second, bursts of ``burst_s`` seconds.

    Per ingest process: behind a load balancer with N processes a key gets up to N times the
    rate. A request larger than a whole bucket is admitted when the bucket is full, so no
    request size is refused forever (the request size limit bounds it).
    """

    def __init__(
        self, rate: float, burst_s: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.capacity = rate * burst_s
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, last refill)
        self._lock = threading.Lock()

    def admit(self, key: str, events: int) -> float:
        """0 when ``events`` may go now (and they are counted), else seconds to wait."""
        if self.rate <= 0:
            return 0.0
        now = self.clock()
        with self._lock:
            tokens, last = self._buckets.get(key, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - last) * self.rate)
            cost = min(events, self.capacity)
            if tokens >= cost:
                self._buckets[key] = (tokens - events, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return (cost - tokens) / self.rate

    def check(self, key: str, events: int) -> None:
        """Raise 429 with ``Retry-After`` (whole seconds, at least 1) above the rate."""
        wait = self.admit(key, events)
        if wait > 0:
            raise HTTPException(
                status.HTTP_429_TOO_MANY_REQUESTS,
                f"rate limit of {self.rate:,.0f} events/s for this key exceeded; "
                f"retry in {wait:.1f} s",
                headers={"Retry-After": str(max(1, math.ceil(wait)))},
            )

"""The on-disk spool: where events wait while Kafka is unreachable.

An append-only, segmented file queue. Each record carries its Kafka key and value plus a
CRC, so a torn write (the process killed mid-append) is detected and the rest of that
segment is skipped instead of publishing garbage. Replay reads whole *sealed* segments
and deletes a segment only once every record in it was acknowledged by Kafka; a failed
replay leaves the segment to be sent again later, which downstream dedupe by ``event_id``
makes harmless. One process owns a spool folder at a time (an advisory ``flock``).
"""

from __future__ import annotations

import fcntl
import logging
import os
import struct
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger(__name__)

KIND_CALL = 1
KIND_RENAME = 2

_MAGIC = 0xA5
_HEADER = struct.Struct(">BBHII")  # magic, kind, key length, value length, crc32
_SUFFIX = ".spool"
SEGMENT_BYTES = 16 * 1024 * 1024  # bounds how much a failed replay sends again


class SpoolLockedError(RuntimeError):
    """Another process already owns this spool folder."""


@dataclass(frozen=True, slots=True)
class Record:
    kind: int
    key: bytes
    value: bytes


def encode_record(kind: int, key: bytes, value: bytes) -> bytes:
    crc = zlib.crc32(value, zlib.crc32(key))
    return _HEADER.pack(_MAGIC, kind, len(key), len(value), crc) + key + value


def read_records(path: Path) -> Iterator[Record]:
    """Records of one segment, in order, stopping at the first torn or corrupt one."""
    with open(path, "rb") as fh:
        data = fh.read()
    pos, size = 0, len(data)
    while pos < size:
        if pos + _HEADER.size > size:
            log.warning("spool %s: torn record header at byte %d, skipping the rest", path, pos)
            return
        magic, kind, klen, vlen, crc = _HEADER.unpack_from(data, pos)
        start = pos + _HEADER.size
        end = start + klen + vlen
        if magic != _MAGIC or end > size:
            log.warning("spool %s: torn or corrupt record at byte %d, skipping the rest", path, pos)
            return
        key, value = data[start : start + klen], data[start + klen : end]
        if zlib.crc32(value, zlib.crc32(key)) != crc:
            log.warning("spool %s: checksum mismatch at byte %d, skipping the rest", path, pos)
            return
        yield Record(kind, key, value)
        pos = end


class Spool:
    """Segmented append-only spool in one folder (``<home>/spool/<name>``)."""

    def __init__(
        self,
        directory: Path,
        *,
        max_bytes: int = 1 << 30,
        fsync: bool = False,
        segment_bytes: int = SEGMENT_BYTES,
    ) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.fsync = fsync
        self.segment_bytes = segment_bytes
        self._lock: BinaryIO | None = None
        self._active: BinaryIO | None = None
        self._active_path: Path | None = None
        self._active_size = 0
        self._next_seq = 0
        self._sealed_bytes = 0
        self.dropped = 0

    # --- lifecycle ---------------------------------------------------------------------
    def open(self) -> None:
        """Take the folder's lock; segments left by an earlier run become replayable."""
        self.directory.mkdir(parents=True, exist_ok=True)
        lock = open(self.directory / ".lock", "ab")  # noqa: SIM115 (held until close)
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            lock.close()
            raise SpoolLockedError(
                f"spool {self.directory} is used by another process; give each publishing "
                "process its own LLM_USAGE_PRODUCER_SPOOL_NAME"
            ) from exc
        self._lock = lock
        segments = self.sealed_segments()
        self._sealed_bytes = sum(p.stat().st_size for p in segments)
        self._next_seq = (int(segments[-1].stem) + 1) if segments else 0
        for empty in (p for p in segments if p.stat().st_size == 0):
            empty.unlink()
        if self._sealed_bytes:
            log.info("spool %s holds %d bytes from an earlier run", self.directory, self.size)

    def close(self) -> None:
        self.seal()
        if self._lock is not None:
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    # --- writing -----------------------------------------------------------------------
    @property
    def size(self) -> int:
        """Bytes waiting on disk (sealed segments and the active one)."""
        return self._sealed_bytes + self._active_size

    def __bool__(self) -> bool:
        return self.size > 0

    def append(self, records: Iterable[tuple[int, bytes, bytes]]) -> int:
        """Append records with one write; returns how many were kept (the cap drops the rest)."""
        chunks: list[bytes] = []
        room = self.max_bytes - self.size
        kept = dropped = 0
        for kind, key, value in records:
            chunk = encode_record(kind, key, value)
            if len(chunk) > room:
                dropped += 1
                continue
            room -= len(chunk)
            chunks.append(chunk)
            kept += 1
        if dropped:
            self.dropped += dropped
            log.error(
                "spool %s is full (%d bytes): dropped %d events; raise "
                "LLM_USAGE_PRODUCER_SPOOL_MAX_BYTES or bring Kafka back",
                self.directory,
                self.max_bytes,
                dropped,
            )
        if chunks:
            self._write(b"".join(chunks))
        return kept

    def _write(self, data: bytes) -> None:
        if self._active is None:
            if self._lock is None:
                raise RuntimeError("spool is not open")
            self._active_path = self.directory / f"{self._next_seq:012d}{_SUFFIX}"
            self._next_seq += 1
            self._active = open(self._active_path, "ab", buffering=0)  # noqa: SIM115
            self._active_size = 0
        self._active.write(data)  # unbuffered: in the OS once this returns
        if self.fsync:
            os.fsync(self._active.fileno())
        self._active_size += len(data)
        if self._active_size >= self.segment_bytes:
            self.seal()

    def seal(self) -> None:
        """Close the active segment so replay may take it; the next append starts a new one."""
        if self._active is None:
            return
        if self.fsync:
            os.fsync(self._active.fileno())
        self._active.close()
        self._active = None
        self._sealed_bytes += self._active_size
        self._active_size = 0

    # --- replay ------------------------------------------------------------------------
    def sealed_segments(self) -> list[Path]:
        """Segments replay may read, oldest first (never the one being appended to)."""
        paths = sorted(self.directory.glob(f"*{_SUFFIX}"))
        return [p for p in paths if p != self._active_path or self._active is None]

    def remove(self, segment: Path) -> None:
        """Forget a segment whose every record Kafka acknowledged."""
        size = segment.stat().st_size
        segment.unlink()
        self._sealed_bytes = max(0, self._sealed_bytes - size)
        if self.fsync:
            dir_fd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

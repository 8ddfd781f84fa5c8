"""A price book that follows its files: a running worker picks up a changed book or overrides.

The worker calls :meth:`WatchedBook.refresh` every few seconds (a timer of the Faust app);
it compares the files' modification time and size with what it loaded and reloads when
either changed. A file that no longer parses is reported and the previous book is kept, so
a half-written file never stops pricing.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from stream_processor.pricing.book import DEFAULT_BOOK, PriceBook, PriceBookError

log = logging.getLogger(__name__)


def _stamp(path: Path | None) -> tuple[int, int] | None:
    if path is None:
        return None
    try:
        status = os.stat(path)
    except OSError:
        return (-1, -1)
    return status.st_mtime_ns, status.st_size


class WatchedBook:
    """The book of ``path`` with ``overrides`` on top, reloaded when either file changes."""

    def __init__(self, path: Path = DEFAULT_BOOK, overrides: Path | None = None) -> None:
        self.path = path
        self.overrides = overrides
        self._stamps = (_stamp(path), _stamp(overrides))
        self.book = PriceBook.load(path, overrides)
        self.reloads = 0
        self.errors = 0

    def refresh(self) -> bool:
        """Reload if a file changed since the last load; True when a new book is in use."""
        stamps = (_stamp(self.path), _stamp(self.overrides))
        if stamps == self._stamps:
            return False
        self._stamps = stamps
        try:
            book = PriceBook.load(self.path, self.overrides)
        except PriceBookError as exc:
            self.errors += 1
            log.error("price book not reloaded, still pricing with the previous one: %s", exc)
            return False
        self.book = book
        self.reloads += 1
        log.info("price book reloaded: %s (overrides %s)", self.path, self.overrides or "none")
        return True

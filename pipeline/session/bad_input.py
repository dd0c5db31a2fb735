"""Bad input from a device: logged (a flood sparsely) and reported, never fatal."""

from __future__ import annotations

import logging
from collections.abc import Callable

#: Log the first few of a flood of the same kind, then every Nth.
WARN_EVERY = 100


class BadInput:
    """Counts each kind of bad input, logs it sparsely and reports every one to observers."""

    def __init__(self, log: logging.Logger, report: Callable[[str, str], None]) -> None:
        self._log = log
        self._report = report
        self.counts: dict[str, int] = {}

    def warn(self, kind: str, message: str) -> None:
        """One more bad input of ``kind`` (``message`` says what and what was done about it)."""
        count = self.counts.get(kind, 0) + 1
        self.counts[kind] = count
        if count <= 3 or count % WARN_EVERY == 0:
            self._log.warning("%s (%s #%d)", message, kind, count)
        self._report(kind, message)

"""glibc's malloc, set for a process that runs the local speech models.

glibc serves a large block (128 KiB and up) with its own ``mmap`` and gives it back on ``free``,
but raises that threshold each time such a block is freed, up to 32 MiB. The models free blocks
of a few hundred KiB all the time (a voice's audio, a recognizer's features), so after the first
ones every block comes from malloc's heaps instead, which fragment under the varied sizes and
never shrink: resident memory crept up run after run. Fixing the threshold at 128 KiB
(``mallopt(M_MMAP_THRESHOLD)``, which also stops the automatic raise) keeps large blocks out
of the heaps, and memory flat under load (measured in docs/benchmarks.md).

An operator's own setting wins: with ``MALLOC_MMAP_THRESHOLD_`` or a ``glibc.malloc`` tunable in
the environment nothing is changed. Other C libraries (musl, macOS) are left alone.
"""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Mapping
from typing import Any

log = logging.getLogger(__name__)

#: glibc's ``M_MMAP_THRESHOLD`` (malloc.h) and the threshold set: glibc's own starting value.
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 128 * 1024

_done = False


def _glibc() -> Any | None:
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # only glibc has it
        return libc
    except (OSError, AttributeError):
        return None


def operator_has_set(environ: Mapping[str, str]) -> bool:
    """Whether the environment already tells glibc's malloc how to behave."""
    return "MALLOC_MMAP_THRESHOLD_" in environ or "glibc.malloc." in environ.get("GLIBC_TUNABLES", "")


def fix_mmap_threshold(libc: Any | None = None, environ: Mapping[str, str] | None = None) -> bool:
    """Fix glibc's mmap threshold at ``MMAP_THRESHOLD`` (once per process); True if set now."""
    global _done
    if _done or operator_has_set(os.environ if environ is None else environ):
        return False
    libc = libc if libc is not None else _glibc()
    if libc is None:
        return False
    _done = bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    if _done:
        log.debug("glibc malloc: blocks of %d KiB and more are mapped on their own", MMAP_THRESHOLD // 1024)
    return _done

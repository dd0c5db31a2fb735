"""``/metrics`` across the worker processes of ``serve --workers N``.

The workers share the HTTP port, so a scrape reaches whichever worker accepts it. Each worker
therefore publishes its own exposition into a folder the supervisor gives them all
(``worker-<index>.prom``, rewritten every ``PUBLISH_SECONDS`` and replaced atomically), and the
worker that answers a scrape merges its fresh figures with its siblings' files, every sample
labelled ``worker="<index>"``: sum over ``worker`` in queries for the server's totals. A sibling's
figures are at most ``PUBLISH_SECONDS`` old; the supervisor deletes a dead worker's file.

The merging is plain text processing of the Prometheus text format (``merge_expositions``), so it
works whatever produces each worker's text.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path

import trio
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .metrics import Metrics

log = logging.getLogger(__name__)

#: The merged exposition is always the Prometheus text format 0.0.4.
TEXT_CONTENT_TYPE = CONTENT_TYPE_LATEST

#: Seconds between two publications of a worker's metrics.
PUBLISH_SECONDS = 2.0

_TYPE = re.compile(r"^# (?:HELP|TYPE) (\S+)")


def add_label(sample: str, name: str, value: str) -> str:
    """``sample`` (one exposition line) with ``name="value"`` as its first label."""
    label = f'{name}="{value}"'
    metric, brace, rest = sample.partition("{")
    if brace:
        return f"{metric}{{{label},{rest}" if not rest.startswith("}") else f"{metric}{{{label}{rest}"
    metric, space, rest = sample.partition(" ")
    return f"{metric}{{{label}}}{space}{rest}"


def merge_expositions(texts: Mapping[str, str], label: str = "worker") -> str:
    """One exposition from several processes' (``texts[worker] = exposition``), samples labelled.

    Each family keeps its ``# HELP``/``# TYPE`` lines once (the first seen) and all its samples
    together, as the format requires.
    """
    families: dict[str, tuple[list[str], list[str]]] = {}
    for worker, text in texts.items():
        family: str | None = None
        for line in text.splitlines():
            if not line.strip():
                continue
            if line.startswith("#"):
                match = _TYPE.match(line)
                if match is None:
                    continue
                family = match.group(1)
                headers, _ = families.setdefault(family, ([], []))
                if line not in headers:
                    headers.append(line)
                continue
            key = family if family is not None else line.split("{")[0].split(" ")[0]
            families.setdefault(key, ([], []))[1].append(add_label(line, label, worker))
    lines = [line for headers, samples in families.values() for line in (*headers, *samples)]
    return "\n".join(lines) + "\n"


class WorkerMetrics:
    """One worker's side: publish its exposition, and merge the siblings' into a scrape."""

    def __init__(self, folder: Path, index: int, render: Callable[[], str]) -> None:
        self.folder = folder
        self.index = index
        self.render = render

    @classmethod
    def of(cls, metrics: Metrics, folder: Path, index: int) -> WorkerMetrics:
        """Publish and merge ``metrics`` (in the text format 0.0.4, which the merging reads)."""
        return cls(folder, index, lambda: metrics.render()[0].decode())

    @property
    def path(self) -> Path:
        return self.folder / f"worker-{self.index}.prom"

    def publish(self) -> None:
        """Write this worker's figures (atomically: a reader never sees half a file)."""
        partial = self.folder / f".worker-{self.index}.{os.getpid()}.tmp"
        partial.write_text(self.render(), encoding="utf-8")
        partial.replace(self.path)

    def scrape(self) -> str:
        """Every worker's figures: this one's fresh, the others' as last published."""
        texts = {str(self.index): self.render()}
        for path in sorted(self.folder.glob("worker-*.prom")):
            index = path.stem.removeprefix("worker-")
            if index != str(self.index):
                try:
                    texts[index] = path.read_text(encoding="utf-8")
                except FileNotFoundError:  # that worker just died; the supervisor removed it
                    continue
        return merge_expositions(texts)

    async def run(self, period: float = PUBLISH_SECONDS) -> None:
        """Publish every ``period`` seconds until cancelled."""
        while True:
            try:
                await trio.to_thread.run_sync(self.publish)
            except OSError as e:
                log.warning("cannot publish this worker's metrics in %s: %s", self.folder, e)
            await trio.sleep(period)


def forget_worker(folder: Path, index: int) -> None:
    """Remove a dead worker's published figures (the supervisor calls this)."""
    (folder / f"worker-{index}.prom").unlink(missing_ok=True)

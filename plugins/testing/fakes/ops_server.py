"""Start the operations HTTP server on 127.0.0.1 for a test, with a settable wall clock."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio
from xiaozhi_trio.pipeline.config import parse_config
from xiaozhi_trio.pipeline.ops.http import OpsServices, build_ops_services, serve_http


class WallClock:
    """Unix time that only moves when a test says so."""

    def __init__(self, now: float = 1_786_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_services(data_dir: Path, tables: dict[str, Any] | None = None, *, clock: WallClock | None = None) -> OpsServices:
    tables = dict(tables or {})
    server = {"data_dir": str(data_dir), **tables.pop("server", {})}
    return build_ops_services(parse_config({"server": server, **tables}), clock=clock or WallClock())


@asynccontextmanager
async def running_ops(
    data_dir: Path, tables: dict[str, Any] | None = None, *, clock: WallClock | None = None
) -> AsyncIterator[tuple[OpsServices, str]]:
    """(services, base URL) of a server on a free port; stopped and closed on exit."""
    services = make_services(data_dir, tables, clock=clock)
    try:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(serve_http, services, "127.0.0.1", 0)
            yield services, f"http://127.0.0.1:{port}"
            nursery.cancel_scope.cancel()
    finally:
        services.close()

"""Run the real server-side session against the real device client, in memory.

The WebSocket protocol runs for real (trio-websocket on both ends) over a ``memory_stream_pair``,
so tests can use the autojump clock; ``serve_for_test`` runs the real listening server on
loopback for tests that need sockets.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio
import trio.testing
from trio_websocket import ConnectionRejected, wrap_client_stream, wrap_server_stream

from xiaozhi_trio.pipeline.app import App
from xiaozhi_trio.pipeline.client import DeviceClient
from xiaozhi_trio.pipeline.config import Config, SessionConfig, parse_config
from xiaozhi_trio.pipeline.events import SessionEvent
from xiaozhi_trio.pipeline.hookspecs import hookimpl
from xiaozhi_trio.pipeline.registry import Plugins
from xiaozhi_trio.pipeline.server import handle_request
from xiaozhi_trio.plugins import sqlite_store

from .fakes.backends import FakeBackends


class StallingStream(trio.abc.Stream):
    """A server-side stream whose writes block forever once ``stall()`` is called, as they do
    when a device stops reading and the TCP buffers fill up."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.stalled = False

    def stall(self) -> None:
        self.stalled = True

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self.stalled:
            await trio.sleep_forever()
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


class InlineWorkers:
    """Runs "CPU work" on the event loop. Under the autojump clock, a wait for a real thread
    looks like idleness and the clock would leap ahead; inline calls keep virtual time exact."""

    threads = 1

    async def run(self, fn: Any, *args: Any, urgency: Any = None) -> Any:
        await trio.lowlevel.checkpoint()
        return fn(*args)


class EventLog:
    """A session-event observer plugin that keeps everything it sees."""

    def __init__(self) -> None:
        self.events: list[SessionEvent] = []

    @hookimpl
    def xiaozhi_session_event(self, event: SessionEvent) -> None:
        self.events.append(event)

    def of(self, kind: type) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]


def fake_config(data_dir: Path, **session: Any) -> Config:
    """A config that selects the fake backends."""
    base = parse_config({**{name: {"backend": "fake"} for name in ("vad", "asr", "agent", "tts")}, "turn": {"backend": "off"}})
    return dataclasses.replace(
        base,
        server=dataclasses.replace(base.server, data_dir=str(data_dir)),
        session=dataclasses.replace(SessionConfig(), **session),
    )


def make_app(
    data_dir: Path,
    fakes: FakeBackends | None = None,
    *,
    config: Config | None = None,
    plugins: tuple[object, ...] = (),
    **session: Any,
) -> tuple[App, FakeBackends, EventLog]:
    """An app on the fake backends (and any extra ``plugins``), with inline CPU workers."""
    fakes = fakes or FakeBackends()
    events = EventLog()
    plugin_manager = Plugins(entry_points=False, extra=[sqlite_store, fakes, events, *plugins])
    config = config or fake_config(data_dir, **session)
    app = App.build(config, plugin_manager)
    app.workers = InlineWorkers()  # type: ignore[assignment]
    return app, fakes, events


@asynccontextmanager
async def open_device(
    app: App,
    *,
    protocol_version: int = 1,
    device_id: str = "02:00:00:00:00:01",
    frame_ms: int = 60,
    path: str = "/xiaozhi/v1/",
    headers: list[tuple[bytes, bytes]] | None = None,
    hello: bool = True,
    features: dict[str, Any] | None = None,
    stream_pair: Any = trio.testing.memory_stream_pair,
) -> AsyncIterator[DeviceClient]:
    """A device connected to a session of ``app`` over an in-memory stream."""
    client_stream, server_stream = stream_pair()
    if headers is None:
        headers = [
            (b"Protocol-Version", str(protocol_version).encode()),
            (b"Device-Id", device_id.encode()),
            (b"Client-Id", b"00000000-0000-4000-8000-000000000001"),
        ]

    async with trio.open_nursery() as nursery:

        served = trio.Event()

        async def serve_one() -> None:
            try:
                request = await wrap_server_stream(nursery, server_stream, max_message_size=app.config.server.max_message_bytes)
                await handle_request(app, request)
            finally:
                served.set()

        nursery.start_soon(serve_one)
        ws = await wrap_client_stream(nursery, client_stream, "localhost", path, extra_headers=headers)  # type: ignore[arg-type]
        client = DeviceClient(ws, protocol_version=protocol_version, frame_ms=frame_ms, device_id=device_id)
        if hello:
            await client.hello(features=features if features is not None else {})
        try:
            yield client
        finally:
            await ws.aclose()
            # The session must wind down by itself once the device is gone.
            with trio.move_on_after(30):
                await served.wait()
            nursery.cancel_scope.cancel()
        assert served.is_set(), "the session's tasks did not end after the device went away"


async def rejection_status(app: App, **kwargs: Any) -> int | None:
    """The HTTP status a handshake of ``open_device(app, **kwargs)`` is rejected with; None if accepted."""
    status = None
    try:
        async with open_device(app, **kwargs):
            pass
    except* ConnectionRejected as group:
        status = group.exceptions[0].status_code  # type: ignore[attr-defined]
    return status

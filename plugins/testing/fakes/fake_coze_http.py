"""The HTTP/1.1 side of the fake Coze server: ``h11`` over a trio socket, keep-alive, JSON replies
and SSE responses that survive the client hanging up."""

from __future__ import annotations

import http
import json
from collections.abc import Awaitable, Callable
from typing import Any

import h11
import trio


class Abort(Exception):
    """Raised by a handler to drop the connection without finishing the response."""


class Exchange:
    """One request and its response on a connection."""

    def __init__(self, conn: h11.Connection, stream: trio.SocketStream, request: h11.Request, body: bytes) -> None:
        self.conn = conn
        self.stream = stream
        self.method = request.method.decode()
        self.target = request.target.decode()
        self.headers = {k.decode().lower(): v.decode() for k, v in request.headers}
        self.body = body
        #: The ``x-tt-logid`` header of the response.
        self.logid = ""
        #: False once the client has gone: further writes are silently dropped.
        self.connected = True

    async def json(self, status: int, body: Any) -> None:
        """A complete JSON response."""
        data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        headers = [("content-type", "application/json; charset=utf-8"), ("content-length", str(len(data))),
                   ("x-tt-logid", self.logid)]
        await self._send(h11.Response(status_code=status, headers=headers, reason=http.HTTPStatus(status).phrase.encode()))
        await self._send(h11.Data(data=data))
        await self._send(h11.EndOfMessage())

    async def open_sse(self) -> None:
        """Start a chunked ``text/event-stream`` response."""
        headers = [("content-type", "text/event-stream; charset=utf-8"), ("cache-control", "no-cache"),
                   ("x-tt-logid", self.logid)]
        await self._send(h11.Response(status_code=200, headers=headers, reason=b"OK"))

    async def event(self, name: str, payload: Any) -> None:
        """One event in the byte format of Coze's streams: no space after the colons, compact JSON."""
        data = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
        await self.raw(f"event:{name}\ndata:{data}\n\n".encode())

    async def raw(self, data: bytes) -> None:
        if self.connected:
            try:
                await self._send(h11.Data(data=data))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self.connected = False

    async def end(self) -> None:
        """Finish the response (the last chunk), if the client is still there."""
        if self.connected:
            try:
                await self._send(h11.EndOfMessage())
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self.connected = False
            self.connected = False

    async def _send(self, event: h11.Event) -> None:
        await self.stream.send_all(self.conn.send(event))


async def _read(conn: h11.Connection, stream: trio.SocketStream) -> tuple[h11.Request, bytes] | None:
    request, body = None, b""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(65536))
        elif isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            assert request is not None
            return request, body
        elif isinstance(event, h11.ConnectionClosed):
            return None


async def serve_http(stream: trio.SocketStream, handle: Callable[[Exchange], Awaitable[None]]) -> None:
    """Serve requests on one connection (keep-alive) until the client closes it or a handler
    aborts or leaves its response unfinished."""
    conn = h11.Connection(h11.SERVER)
    try:
        while True:
            request = await _read(conn, stream)
            if request is None:
                return
            await handle(Exchange(conn, stream, *request))
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()
    except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError, Abort):
        return
    finally:
        await stream.aclose()

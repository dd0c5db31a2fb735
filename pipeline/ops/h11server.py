"""A small HTTP/1.1 server on trio and h11, hardened for a port that faces the network.

h11 does the parsing (sans-IO); this module adds the I/O and the limits a public port needs:
keep-alive with an idle timeout, a deadline for the whole request once it starts (slowloris), caps on
head and body size (431, 413), a cap on open connections (503), and a clean 4xx for anything h11
cannot parse. Request handlers are ``async (Request) -> Response`` and see only complete requests.
"""

from __future__ import annotations

import http
import json
import logging
import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import h11
import trio

from .. import __version__

log = logging.getLogger(__name__)

_RECEIVE_BYTES = 16 * 1024
_FILE_CHUNK = 64 * 1024
_SERVER = f"xiaozhi-trio/{__version__}".encode()
_KNOWN_STATUSES = {s.value for s in http.HTTPStatus}
_LINGER_SECONDS = 1.0
_LINGER_BYTES = 256 * 1024


@dataclass(frozen=True)
class HttpLimits:
    #: Largest request body; bigger gets 413 without the body being read.
    max_body_bytes: int = 64 * 1024
    #: Largest request line plus headers; bigger gets 431.
    max_header_bytes: int = 16 * 1024
    #: Seconds a request may take to arrive in full once its first byte came (slow clients get 408).
    request_timeout: float = 10.0
    #: Seconds an idle keep-alive connection stays open.
    keepalive_timeout: float = 30.0
    #: Seconds one write to the client may block (a stalled download is dropped).
    send_timeout: float = 30.0
    #: Connections open at once; more are answered 503 and closed.
    max_connections: int = 256


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    #: The path as sent (still percent-encoded); routers split it and decode each segment.
    raw_path: str
    query: Mapping[str, str]
    #: Lower-case header names; repeated headers joined with ", ".
    headers: Mapping[str, str]
    body: bytes
    client: tuple[str, int] | None = None
    #: The server's own address on this connection (used when a request has no Host header).
    local: tuple[str, int] | None = None

    def header(self, name: str, default: str = "") -> str:
        return self.headers.get(name.lower(), default)


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()
    #: Streamed from disk instead of ``body`` (firmware images); ``file_size`` bytes.
    file: Path | None = None
    file_size: int = 0


def json_response(status: int, data: Any, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    return Response(status, json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode(), "application/json", headers)


def error_response(status: int, message: str, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    """A JSON error body: ``{"error": message}``."""
    return json_response(status, {"error": message}, headers)


Handler = Callable[[Request], Awaitable[Response]]
#: Told about requests the server answered itself (malformed, too big, too slow): status code.
RejectHook = Callable[[int], None]


@dataclass
class _ConnectionCounter:
    open: int = 0


class _Connection:
    """One client connection: h11 state, the stream, and the limits."""

    def __init__(self, stream: trio.abc.Stream, limits: HttpLimits, client: tuple[str, int] | None, local: tuple[str, int] | None) -> None:
        self.stream = stream
        self.limits = limits
        self.client = client
        self.local = local
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_header_bytes)
        #: The current request's method once its head is parsed (a HEAD answer carries no body).
        self.method = "GET"

    async def _send(self, event: h11.Event) -> None:
        data = self.conn.send(event)
        if data:
            with trio.fail_after(self.limits.send_timeout):
                await self.stream.send_all(data)

    async def _receive(self) -> None:
        self.conn.receive_data(await self.stream.receive_some(_RECEIVE_BYTES))

    async def _next_event(self) -> h11.Event | type[h11.PAUSED]:
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            await self._receive()

    async def wait_for_request(self) -> bool:
        """Wait (up to the keep-alive timeout) until a request starts; False if the client left."""
        if self.conn.trailing_data[0]:
            return True
        with trio.move_on_after(self.limits.keepalive_timeout):
            data = await self.stream.receive_some(_RECEIVE_BYTES)
            self.conn.receive_data(data)
            return bool(data)
        return False

    async def read_request(self) -> Request | Response | None:
        """The next complete request; a Response to send if it must be refused; None if the client left."""
        with trio.move_on_after(self.limits.request_timeout):
            event = await self._next_event()
            if isinstance(event, h11.ConnectionClosed):
                return None
            assert isinstance(event, h11.Request)
            self.method = event.method.decode("ascii", "replace").upper()
            if event.http_version not in (b"1.0", b"1.1"):
                return error_response(505, f"HTTP/{event.http_version.decode('latin-1')} is not supported; use HTTP/1.1")
            # h11 bounds only heads still incomplete; one that arrived whole in a read is checked here.
            head_size = len(event.target) + sum(len(k) + len(v) + 4 for k, v in event.headers)
            if head_size > self.limits.max_header_bytes:
                return error_response(431, f"request head over {self.limits.max_header_bytes} bytes")
            length = _content_length(event.headers)
            if length is not None and length > self.limits.max_body_bytes:
                return error_response(413, f"request body over {self.limits.max_body_bytes} bytes")
            if self.conn.they_are_waiting_for_100_continue:
                await self._send(h11.InformationalResponse(status_code=100, headers=[]))
            body = bytearray()
            while True:
                part = await self._next_event()
                if isinstance(part, h11.Data):
                    body += part.data
                    if len(body) > self.limits.max_body_bytes:
                        return error_response(413, f"request body over {self.limits.max_body_bytes} bytes")
                elif isinstance(part, h11.EndOfMessage):
                    break
                else:  # ConnectionClosed mid-body
                    return None
            return _request(event, bytes(body), self.client, self.local)
        return error_response(408, f"request not received within {self.limits.request_timeout:g} s")

    async def respond(self, response: Response, method: str) -> None:
        if self.conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        size = response.file_size if response.file is not None else len(response.body)
        headers = [(b"server", _SERVER), *((k.encode(), v.encode()) for k, v in response.headers)]
        if response.status != 204:  # a 204 carries neither a body nor its framing headers
            headers[:0] = [(b"content-type", response.content_type.encode()), (b"content-length", str(size).encode())]
        if response.status >= 400 and self.conn.their_state is not h11.DONE:
            # The request was not (fully) read: the connection cannot carry another one.
            headers.append((b"connection", b"close"))
        reason = http.HTTPStatus(response.status).phrase.encode() if response.status in _KNOWN_STATUSES else b""
        await self._send(h11.Response(status_code=response.status, headers=headers, reason=reason))
        if method != "HEAD":
            if response.file is not None:
                async with await trio.open_file(response.file, "rb") as f:
                    remaining = size
                    while remaining > 0:
                        chunk = await f.read(min(_FILE_CHUNK, remaining))
                        if not chunk:
                            raise OSError(f"{response.file} shrank while being sent")
                        remaining -= len(chunk)
                        await self._send(h11.Data(data=chunk))
            elif response.body:
                await self._send(h11.Data(data=response.body))
        await self._send(h11.EndOfMessage())

    def can_continue(self) -> bool:
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
            self.method = "GET"
            return True
        return False


def _content_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name == b"content-length":
            return int(value)  # h11 already checked that it is a number
    return None


def _request(event: h11.Request, body: bytes, client: tuple[str, int] | None, local: tuple[str, int] | None) -> Request:
    headers: dict[str, str] = {}
    for name, value in event.headers:
        key = name.decode("latin-1")
        text = value.decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    target = urlsplit(event.target.decode("latin-1"))
    query = dict(parse_qsl(target.query, keep_blank_values=True))
    return Request(event.method.decode("ascii", "replace").upper(), target.path, query, headers, body, client, local)


async def _linger(stream: trio.abc.Stream) -> None:
    """After refusing a request, let the client read the answer before the socket closes.

    Closing with unread input makes the kernel send a reset, which can destroy the error response
    before the client reads it; so send FIN first and drain (bounded in time and bytes).
    """
    if isinstance(stream, trio.abc.HalfCloseableStream):
        await stream.send_eof()
    with trio.move_on_after(_LINGER_SECONDS):
        drained = 0
        while drained < _LINGER_BYTES and (chunk := await stream.receive_some(_RECEIVE_BYTES)):
            drained += len(chunk)


def _address(stream: trio.abc.Stream, peer: bool) -> tuple[str, int] | None:
    sock = getattr(stream, "socket", None)
    if sock is None:
        return None
    try:
        address = sock.getpeername() if peer else sock.getsockname()
    except OSError:
        return None
    return (str(address[0]), int(address[1])) if isinstance(address, tuple) else None


async def serve_connection(
    stream: trio.abc.Stream, handler: Handler, limits: HttpLimits, *, on_reject: RejectHook | None = None
) -> None:
    """Serve requests on one connection until the client leaves, a limit is hit or a response says close."""
    connection = _Connection(stream, limits, _address(stream, True), _address(stream, False))
    try:
        while await connection.wait_for_request():
            try:
                request = await connection.read_request()
            except h11.RemoteProtocolError as e:
                request = error_response(e.error_status_hint, f"malformed request: {e}")
            if request is None:
                break
            if isinstance(request, Response):
                if on_reject is not None:
                    on_reject(request.status)
                log.info("http %s: %d %s", connection.client and connection.client[0], request.status, request.body.decode())
                await connection.respond(request, connection.method)
                await _linger(stream)
                break
            try:
                response = await handler(request)
            except Exception:  # the one boundary around route code: a bug answers 500, the server lives on
                log.exception("http %s %s failed", request.method, request.raw_path)
                response = error_response(500, "internal server error")
            await connection.respond(response, request.method)
            if not connection.can_continue():
                break
    except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError) as e:
        log.debug("http connection from %s dropped: %r", connection.client, e)
    except h11.ProtocolError as e:
        log.info("http connection from %s ended on a protocol error: %s", connection.client, e)
    finally:
        with trio.move_on_after(1) as cleanup:
            cleanup.shield = True
            await stream.aclose()


_BUSY = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: 37\r\nconnection: close\r\n\r\n{\"error\":\"too many open connections\"}"


async def serve(
    handler: Handler,
    host: str,
    port: int,
    limits: HttpLimits,
    *,
    on_reject: RejectHook | None = None,
    sock: socket.socket | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on ``host:port`` (``""``: all interfaces; port 0: any free port) and serve forever.

    ``sock``: accept on this already listening socket (shared by several worker processes) instead.
    ``task_status.started(port)`` reports the bound port.
    """
    if sock is not None:
        listeners = [trio.SocketListener(trio.socket.from_stdlib_socket(sock))]
    else:
        listeners = await trio.open_tcp_listeners(port, host=host or None)
    counter = _ConnectionCounter()

    async def on_connection(stream: trio.SocketStream) -> None:
        if counter.open >= limits.max_connections:
            if on_reject is not None:
                on_reject(503)
            with trio.move_on_after(_LINGER_SECONDS):
                try:
                    await stream.send_all(_BUSY)
                    await _linger(stream)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
            await trio.aclose_forcefully(stream)
            return
        counter.open += 1
        try:
            await serve_connection(stream, handler, limits, on_reject=on_reject)
        finally:
            counter.open -= 1

    bound = listeners[0].socket.getsockname()[1]
    log.info("http: listening on %s port %d", host or "all interfaces", bound)
    task_status.started(bound)
    await trio.serve_listeners(on_connection, listeners)

"""The WebSocket server devices connect to (``ws://HOST:8000/xiaozhi/v1/``).

``handle_request`` is the boundary between one connection and the rest of the server: whatever
goes wrong inside a session is logged there and ends that session only.
"""

from __future__ import annotations

import logging
import socket
from functools import partial

import trio
from trio_websocket import ConnectionClosed, WebSocketRequest, WebSocketServer

from .app import App
from .ops.logcontext import bind_session
from .protocol.handshake import HandshakeError, parse_handshake
from .session.session import DeviceSession
from .store.sqlite import DatabaseError

log = logging.getLogger("xiaozhi_trio.server")

#: trio-websocket's own per-connection timeouts for the opening and closing handshakes.
HANDSHAKE_TIMEOUT = 10.0

async def handle_request(app: App, request: WebSocketRequest) -> None:
    """Accept or reject one WebSocket handshake, then run its device session to the end."""
    try:
        handshake = parse_handshake(request.path, request.headers, app.config.server.path)
    except HandshakeError as e:
        log.warning("rejected connection from %s: %s", request.remote, e)
        await request.reject(e.status, body=str(e).encode())
        return
    authorize = app.authorize
    try:
        reason = authorize and await authorize(handshake.device_id, handshake.client_id, handshake.authorization)
    except DatabaseError as e:
        # The device registry is unreachable: the device retries later; nothing else is affected.
        log.error("cannot check device %s: %s", handshake.device_id, e)
        await request.reject(503, body=b"device registry unavailable")
        return
    if reason:
        log.warning("rejected device %s from %s: %s", handshake.device_id, request.remote, reason)
        await request.reject(401, body=reason.encode())
        return
    if app.sessions.draining.is_set():
        await request.reject(503, body=b"server shutting down")
        return
    if app.sessions.count >= app.config.server.max_sessions:
        log.warning("rejected device %s: %d sessions is the configured maximum", handshake.device_id, app.sessions.count)
        await request.reject(503, body=b"server full")
        return
    if _too_many_talking(app, handshake.device_id):
        await request.reject(503, body=b"server busy: too many devices are talking; try again in a minute")
        return
    ws = await request.accept()
    session = DeviceSession(app.session_services(), ws, handshake)
    scope = trio.CancelScope()
    if app.sessions.replace(handshake.device_id, scope):
        log.info("device %s reconnected; its old session is closed", handshake.device_id)
    if app.sessions.draining.is_set():
        scope.cancel()  # the shutdown began while this handshake completed
    app.sessions.count += 1
    reason = "replaced by a newer connection of the same device"
    try:
        with scope, bind_session(handshake.device_id, session.session_id):
            reason = await session.run()
    except Exception:  # the session boundary: a bug in one session must not touch the others
        reason = "internal error"
        log.exception("session %s of device %s failed", session.session_id, handshake.device_id)
    finally:
        app.sessions.count -= 1
        app.sessions.remove(handshake.device_id, scope)
        code = 1000
        if scope.cancelled_caught and app.sessions.draining.is_set():
            code, reason = 1001, "server shutting down"  # 1001: going away
        with trio.CancelScope(shield=True), trio.move_on_after(1):
            try:
                await ws.aclose(code, reason[:120])
            except ConnectionClosed:
                pass


def _too_many_talking(app: App, device_id: str) -> bool:
    """Whether a new device must wait: ``max_talking_sessions`` devices are in a conversation
    (a device reconnecting to replace its own session is let in)."""
    limit = app.config.server.max_talking_sessions
    if not limit or device_id in app.sessions.by_device:
        return False
    talking = app.talking.count(trio.current_time())
    if talking < limit:
        return False
    app.talking.refused += 1
    log.warning("refused device %s: %d devices are talking, the configured most (max_talking_sessions)", device_id, talking)
    return True


async def serve_devices(
    app: App,
    host: str | None = None,
    port: int | None = None,
    *,
    sock: socket.socket | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve devices until cancelled, or until ``app.sessions.draining`` is set: then stop
    listening and return once every session has ended. ``task_status.started(port)`` with the
    bound port.

    ``sock``: accept on this already listening socket (shared by several worker processes) instead
    of binding ``host:port``.
    """
    server_config = app.config.server
    if sock is not None:
        listeners = [trio.SocketListener(trio.socket.from_stdlib_socket(sock))]
    else:
        listeners = await trio.open_tcp_listeners(
            port if port is not None else server_config.port, host=host if host is not None else server_config.host
        )
    # Sessions live in their own nursery so that closing the listener leaves them running.
    async with trio.open_nursery() as sessions:
        server = WebSocketServer(
            partial(handle_request, app),
            listeners,
            handler_nursery=sessions,
            max_message_size=server_config.max_message_bytes,
            connect_timeout=HANDSHAKE_TIMEOUT,
            disconnect_timeout=HANDSHAKE_TIMEOUT,
        )
        async with trio.open_nursery() as listening:
            await listening.start(server.run)
            bound = server.port
            log.info("devices connect to ws://%s:%d%s", host or server_config.host, bound, server_config.path)
            task_status.started(bound)
            await app.sessions.draining.wait()
            listening.cancel_scope.cancel()
        log.info("no longer accepting devices; %d session(s) closing", app.sessions.count)

"""Running the server until it is told to stop, then stopping gracefully.

On the first SIGINT (Ctrl-C) or SIGTERM (systemd, Docker, a ``--workers`` supervisor):

1. stop accepting: the WebSocket and HTTP listeners close, handshakes still in progress get 503;
2. let replies in flight finish: a session is closed as soon as it is not in the middle of a reply
   (idle sessions at once), each with a close frame (1001 "server shutting down");
3. after ``[server] shutdown_grace`` seconds, close whatever is still talking;
4. close the backends and the stores, and return exit status 0.

A second signal cuts the wait short: everything is cancelled and the process exits at once with
status 128 + the signal number.

``serve_until_stopped`` is the whole life of one server process; ``app.sessions.draining.set()``
starts the same shutdown without a signal.
"""

from __future__ import annotations

import logging
import signal
import socket
from collections.abc import Callable, Iterable, Sequence
from functools import partial

import trio

from .app import App
from .events import SessionClosed, SessionEvent, SpeechEndDetected, TranscriptReady, TurnEnded, TurnStarted
from .hookspecs import hookimpl
from .ops.http import OpsServices, serve_http
from .server import serve_devices

log = logging.getLogger(__name__)

#: Seconds the final clean-up (backends, stores) may take once the wait was cut short.
_FORCED_CLEANUP_SECONDS = 2.0


class ReplyTracker:
    """Which devices are in the middle of a reply, from session events.

    A plugin of ``xiaozhi_session_event``: a device is busy from the end of its speech (the
    transcript is being made) or the start of a turn until that turn ends.
    """

    def __init__(self) -> None:
        self._hearing: dict[str, str] = {}  # session id -> device id, speech ended, no transcript yet
        self._replying: dict[str, str] = {}  # session id -> device id, a turn is running
        self._changed = trio.Event()

    @hookimpl
    def xiaozhi_session_event(self, event: SessionEvent) -> None:
        """Follow one session event (called by the plugin manager)."""
        match event:
            case SpeechEndDetected():
                self._hearing[event.session_id] = event.device_id
            case TranscriptReady():
                self._hearing.pop(event.session_id, None)
            case TurnStarted():
                self._hearing.pop(event.session_id, None)
                self._replying[event.session_id] = event.device_id
            case TurnEnded():
                self._replying.pop(event.session_id, None)
            case SessionClosed():
                self._hearing.pop(event.session_id, None)
                self._replying.pop(event.session_id, None)
            case _:
                return
        self._changed.set()
        self._changed = trio.Event()

    def busy(self, device_id: str) -> bool:
        """Is a session of ``device_id`` hearing or answering a question now?"""
        return device_id in self._hearing.values() or device_id in self._replying.values()

    async def wait_changed(self) -> None:
        """Return at the next event that changed who is busy."""
        await self._changed.wait()


async def drain_sessions(app: App, tracker: ReplyTracker, grace: float) -> int:
    """Stop accepting sessions and close each one once it is not mid-reply; after ``grace``
    seconds close the rest. Returns how many replies were cut short.

    The sessions end in their own tasks (``server.handle_request`` sends the close frame).
    """
    app.sessions.draining.set()
    with trio.move_on_after(grace):
        while True:
            busy = 0
            for device_id, scope in list(app.sessions.by_device.items()):
                if tracker.busy(device_id):
                    busy += 1
                else:
                    scope.cancel()
            if not busy:
                return 0
            log.info("shutdown: waiting for %d repl%s in flight", busy, "y" if busy == 1 else "ies")
            await tracker.wait_changed()
    remaining = list(app.sessions.by_device.values())
    log.warning("shutdown: %d repl%s still running after %g s; closing them", len(remaining),
                "y" if len(remaining) == 1 else "ies", grace)
    for scope in remaining:
        scope.cancel()
    return len(remaining)


async def serve(
    app: App, ops: OpsServices, host: str | None, port: int | None, tracker: ReplyTracker,
    *, sockets: Sequence[socket.socket] | None = None,
    task_status: trio.TaskStatus[tuple[int, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve devices and the HTTP side until ``app.sessions.draining`` is set, then drain and return.

    ``sockets``: the (WebSocket, HTTP) listening sockets a ``--workers`` supervisor shares, instead
    of binding ``host``/``port``. ``task_status.started((websocket_port, http_port))`` once both listen.
    """
    device_socket, http_socket = sockets if sockets is not None else (None, None)
    async with trio.open_nursery() as nursery:
        websocket_port = await nursery.start(partial(serve_devices, app, host, port, sock=device_socket))
        http_host = ops.settings.ota.host or (host if host is not None else app.config.server.host)
        http_scope = trio.CancelScope()

        async def http(*, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
            with http_scope:
                await serve_http(ops, http_host, ops.settings.ota.port, sock=http_socket, task_status=task_status)

        http_port = await nursery.start(http)
        task_status.started((websocket_port, http_port))
        await app.sessions.draining.wait()
        http_scope.cancel()
        await drain_sessions(app, tracker, max(0.0, app.config.server.shutdown_grace))
    # serve_devices has returned: its listener is closed and every session has ended.


async def serve_until_stopped(
    app: App,
    ops: OpsServices,
    host: str | None = None,
    port: int | None = None,
    *,
    signals: Iterable[int] = (signal.SIGINT, signal.SIGTERM),
    on_ready: Callable[[int, int], None] | None = None,
    sockets: Sequence[socket.socket] | None = None,
) -> int:
    """Run one server process until a signal, shut down gracefully, close the stores.

    ``on_ready(websocket_port, http_port)`` is called once both listen; ``sockets`` as in ``serve``.
    Returns the exit status:
    0 after a graceful stop, 128 + signal number if a second signal cut it short. Must run in the
    main thread (signal handling).
    """
    tracker = ReplyTracker()
    app.plugins.register(tracker, name="xiaozhi_trio.shutdown")
    status = 0
    with trio.open_signal_receiver(*signals) as received:
        try:
            async with trio.open_nursery() as nursery:

                async def watch_signals() -> None:
                    nonlocal status
                    async for signum in received:
                        name = signal.Signals(signum).name
                        if not app.sessions.draining.is_set():
                            log.warning("%s: shutting down; replies in flight get %g s (send it again to exit now)",
                                        name, app.config.server.shutdown_grace)
                            app.sessions.draining.set()
                        else:
                            log.warning("%s again: exiting now", name)
                            status = 128 + signum
                            nursery.cancel_scope.cancel()

                async def run_servers(*, task_status: trio.TaskStatus[tuple[int, int]] = trio.TASK_STATUS_IGNORED) -> None:
                    await serve(app, ops, host, port, tracker, sockets=sockets, task_status=task_status)
                    nursery.cancel_scope.cancel()  # drained: stop watching for signals

                nursery.start_soon(watch_signals)
                ports = await nursery.start(run_servers)
                if on_ready is not None:
                    on_ready(*ports)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(_FORCED_CLEANUP_SECONDS if status else float("inf")):
                await app.aclose()
            ops.close()
    log.info("stopped")
    return status

"""``xiaozhi-trio serve``: run the device server (one process, or several sharing the ports)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import tempfile
from functools import partial
from pathlib import Path

import trio

from ..app import App
from ..config import Config, load_config
from ..ops.http import OpsServices, build_ops_services
from ..ops.logcontext import configure_logging
from ..ops.worker_metrics import WorkerMetrics, forget_worker
from ..registry import Plugins
from ..shutdown import serve_until_stopped
from ..store.sqlite import BUSY_TIMEOUT_MS
from ..supervisor import Supervisor, bind_listener, default_worker_count
from . import add_config_argument, config_path, setup_logging

log = logging.getLogger(__name__)

#: Backends that run speech on this machine (each worker process would load its own models).
LOCAL_SPEECH_BACKENDS = {"sherpa-onnx"}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("serve", help="run the server devices connect to")
    add_config_argument(parser)
    parser.add_argument("--host", help="listen address (default: [server] host)")
    parser.add_argument("--port", type=int, help="WebSocket port (default: [server] port, 8000)")
    parser.add_argument(
        "--workers", type=int, default=None, metavar="N",
        help="server processes sharing the ports, each with its own event loop "
        "(default: one per core when speech runs on other machines, else 1)",
    )
    parser.set_defaults(func=run)


def speech_is_local(config: Config) -> bool:
    """Does this config run speech recognition or synthesis in this process?"""
    return any(config.backend(kind).backend in LOCAL_SPEECH_BACKENDS for kind in ("asr", "tts"))


def run(args: argparse.Namespace) -> int:
    config = load_config(config_path(args))
    plugins = Plugins()
    # Checks [ota], [auth], [devices], [metrics]; opens the device store (a bad database URL stops here).
    ops = build_ops_services(config, plugins=plugins)
    configure_logging(logging.getLogger().level, ops.settings.metrics.log_format)
    workers = args.workers if args.workers is not None else default_worker_count(speech_is_local(config))
    if workers < 1:
        print("xiaozhi-trio: --workers must be at least 1", file=sys.stderr)
        return 2
    if workers > 1:
        return _supervise(args, config, ops, workers)
    app = App.build(config, plugins)  # loads every model and checks agent credentials before listening
    ops.attach(app)

    def ready(websocket_port: int, http_port: int) -> None:
        host = args.host or app.config.server.host or "0.0.0.0"
        print(f"xiaozhi-trio: listening: devices ws://{host}:{websocket_port}{app.config.server.path}"
              f" , OTA http://{host}:{http_port}/xiaozhi/ota/ (Ctrl-C stops; -v logs more)", file=sys.stderr, flush=True)

    # SIGINT/SIGTERM stop it gracefully (see pipeline/shutdown.py); 0 unless a second signal came.
    return trio.run(partial(serve_until_stopped, app, ops, args.host, args.port, on_ready=ready))


def _supervise(args: argparse.Namespace, config: Config, ops: OpsServices, workers: int) -> int:
    """Bind the ports here and run ``workers`` server processes on them until SIGTERM/Ctrl-C."""
    host = args.host if args.host is not None else config.server.host
    sockets = [
        bind_listener(host, args.port if args.port is not None else config.server.port),
        bind_listener(ops.settings.ota.host or host, ops.settings.ota.port),
    ]
    ops.close()  # the supervisor serves nothing itself
    database = getattr(ops.registry, "database", None)
    if database is not None and database.dialect == "sqlite":
        log.info("%d workers share the SQLite database %s (WAL, %d ms busy timeout); several machines need "
                 "[store] url = \"postgresql://...\"", workers, database.where, BUSY_TIMEOUT_MS)
    ws_port, http_port = sockets[0].getsockname()[1], sockets[1].getsockname()[1]
    shown = host or "0.0.0.0"
    print(f"xiaozhi-trio: listening with {workers} worker processes on ports {ws_port} (devices) and {http_port} "
          f"(HTTP): devices ws://{shown}:{ws_port}{config.server.path} , OTA http://{shown}:{http_port}/xiaozhi/ota/ "
          "(Ctrl-C stops; -v logs more)", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="xiaozhi-trio-metrics-") as metrics_dir:
        arguments = (str(config_path(args) or ""), args.verbose, args.host, args.port, metrics_dir)
        return Supervisor(workers, serve_worker, sockets, arguments,
                          on_death=partial(forget_worker, Path(metrics_dir))).run()


def serve_worker(index: int, sockets: list[socket.socket], config_file: str, verbose: int,
                 host: str | None, port: int | None, metrics_dir: str) -> None:
    """One worker process of ``serve --workers N``: the whole server on the inherited sockets."""
    # Ctrl-C reaches the whole process group; the supervisor turns it into SIGTERM for each worker.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    setup_logging(verbose)
    config = load_config(Path(config_file) if config_file else None)
    plugins = Plugins()
    ops = build_ops_services(config, plugins=plugins)
    configure_logging(logging.getLogger().level, ops.settings.metrics.log_format)
    ops.worker_metrics = WorkerMetrics.of(ops.metrics, Path(metrics_dir), index)
    app = App.build(config, plugins)
    ops.attach(app)
    log.info("worker %d (pid %d) serving", index, os.getpid())
    sys.exit(trio.run(_serve_worker, app, ops, host, port, sockets))


async def _serve_worker(app: App, ops: OpsServices, host: str | None, port: int | None,
                        sockets: list[socket.socket]) -> int:
    assert ops.worker_metrics is not None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ops.worker_metrics.run)
        nursery.start_soon(stop_when_orphaned, app)
        # SIGTERM (from the supervisor) drains this worker gracefully, as it does a lone server.
        status = await serve_until_stopped(app, ops, host, port, sockets=sockets, signals=(signal.SIGTERM,))
        nursery.cancel_scope.cancel()
    return status


async def stop_when_orphaned(app: App, period: float = 1.0) -> None:
    """Shut the worker down when its supervisor is gone (killed before it could stop its workers)."""
    parent = os.getppid()
    while os.getppid() == parent:
        await trio.sleep(period)
    log.error("the supervisor (pid %d) is gone; this worker stops", parent)
    app.sessions.draining.set()

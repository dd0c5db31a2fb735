"""``xiaozhi-trio serve``: run the device server."""

from __future__ import annotations

import argparse
import logging

import trio

from ..app import App
from ..config import load_config
from ..ops.http import OpsServices, build_ops_services, serve_http
from ..ops.logcontext import configure_logging
from ..server import serve_devices
from . import add_config_argument, config_path

log = logging.getLogger(__name__)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("serve", help="run the server devices connect to")
    add_config_argument(parser)
    parser.add_argument("--host", help="listen address (default: [server] host)")
    parser.add_argument("--port", type=int, help="WebSocket port (default: [server] port, 8000)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = load_config(config_path(args))
    ops = build_ops_services(config)  # checks [ota], [auth], [devices], [metrics]; opens the device registry
    configure_logging(logging.getLogger().level, ops.ops.metrics.log_format)
    app = App.build(config)  # loads every model and checks agent credentials before listening
    ops.attach(app)
    trio.run(_serve, app, ops, args.host, args.port)
    return 0


async def _serve(app: App, ops: OpsServices, host: str | None, port: int | None) -> None:
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_devices, app, host, port)
            http_host = ops.ops.ota.host or (host if host is not None else app.config.server.host)
            await nursery.start(serve_http, ops, http_host, ops.ops.ota.port)
    finally:
        with trio.CancelScope(shield=True):
            await app.aclose()
        ops.close()

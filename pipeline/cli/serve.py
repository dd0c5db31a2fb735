"""``xiaozhi-trio serve``: run the device server."""

from __future__ import annotations

import argparse
import logging
import sys
from functools import partial

import trio

from ..app import App
from ..config import load_config
from ..ops.http import build_ops_services
from ..ops.logcontext import configure_logging
from ..registry import Plugins
from ..shutdown import serve_until_stopped
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
    plugins = Plugins()
    ops = build_ops_services(config, plugins=plugins)  # checks [ota], [auth], [devices], [metrics]; opens the device store
    configure_logging(logging.getLogger().level, ops.settings.metrics.log_format)
    app = App.build(config, plugins)  # loads every model and checks agent credentials before listening
    ops.attach(app)

    def ready(websocket_port: int, http_port: int) -> None:
        host = args.host or app.config.server.host or "0.0.0.0"
        print(f"xiaozhi-trio: listening: devices ws://{host}:{websocket_port}{app.config.server.path}"
              f" , OTA http://{host}:{http_port}/xiaozhi/ota/ (Ctrl-C stops; -v logs more)", file=sys.stderr, flush=True)

    # SIGINT/SIGTERM stop it gracefully (see pipeline/shutdown.py); 0 unless a second signal came.
    return trio.run(partial(serve_until_stopped, app, ops, args.host, args.port, on_ready=ready))

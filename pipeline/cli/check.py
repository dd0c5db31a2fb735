"""``xiaozhi-trio check``: validate the config and build every backend, saying exactly what is
wrong."""

from __future__ import annotations

import argparse
import sys

import trio

from ..app import App
from ..backends import KINDS, ConfigError
from ..config import load_config
from ..ops.services import OpsConfig
from ..registry import Plugins
from ..store.context import StoreContext
from ..store.sqlite import DatabaseError
from . import add_config_argument, config_path


#: What the server does in place of an optional backend it cannot use.
FALLBACKS = {"turn": "turns end after the VAD's silence window, [vad] min_silence_ms"}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("check", help="validate the config and load every backend")
    add_config_argument(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    path = config_path(args)
    config = load_config(path)
    OpsConfig.from_config(config)  # [ota], [auth], [devices], [metrics] are checked by their owners
    print(f"config: {path or 'built-in defaults'}: ok")
    plugins = Plugins()
    try:
        devices = plugins.open_store("devices", config.store, StoreContext(config.server.data_path))
        trio.run(devices.ping)
    except DatabaseError as e:
        print(f"store: {e}", file=sys.stderr)
        return 1
    database = getattr(devices, "database", None)
    print(f"store: {config.store.backend}{f' {database.where}' if database is not None else ''}: ok")
    devices.close()
    try:
        app = App.build(config, plugins)
    except ConfigError as e:
        print(f"backends: {e}", file=sys.stderr)
        return 1
    broken = False
    for kind in KINDS:
        name = config.backend(kind).backend
        backend = getattr(app, kind)
        if backend is not None:
            print(f"{kind}: {name}: loaded ({type(backend).__name__})")
        elif kind in app.unavailable:
            problem = app.unavailable[kind]
            broken = broken or problem.broken
            label = "ERROR" if problem.broken else "not available"
            print(f"{kind}: {name}: {label}: {problem}", file=sys.stderr if problem.broken else sys.stdout)
            print(f"{kind}: the server will run without it ({FALLBACKS.get(kind, 'disabled')})")
        else:
            print(f"{kind}: off ({FALLBACKS.get(kind, 'disabled')})")
    if broken:
        print("a backend's files are damaged: fix or reinstall them (see above)", file=sys.stderr)
        return 1
    print("all backends loaded")
    return 0

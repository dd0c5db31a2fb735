"""``xiaozhi-trio check``: validate the config and build every backend, saying exactly what is
wrong."""

from __future__ import annotations

import argparse
import sys

from ..app import App
from ..backends import KINDS, ConfigError
from ..config import load_config
from ..ops.services import OpsConfig
from . import add_config_argument, config_path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("check", help="validate the config and load every backend")
    add_config_argument(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    path = config_path(args)
    config = load_config(path)
    OpsConfig.from_config(config)  # [ota], [auth], [devices], [metrics] are checked by their owners
    print(f"config: {path or 'built-in defaults'}: ok")
    try:
        app = App.build(config)
    except ConfigError as e:
        print(f"backends: {e}", file=sys.stderr)
        return 1
    for kind in KINDS:
        print(f"{kind}: {config.backend(kind).backend}: loaded ({type(getattr(app, kind)).__name__})")
    print("all backends loaded")
    return 0

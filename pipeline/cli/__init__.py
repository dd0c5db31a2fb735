"""The ``xiaozhi-trio`` command line: one module per command (group).

Each module in ``COMMANDS`` has ``add_parser(subparsers)``, which adds its sub-command(s) and sets
``func(args) -> int`` on them. Plugins add theirs through the ``xiaozhi_cli_commands`` hook (the
speech plugin's ``models``, ``transcribe`` and ``say``).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from pathlib import Path

from .. import __version__
from ..backends import ConfigError
from ..registry import Plugins
from ..store.sqlite import DatabaseError

#: Command modules, in the order ``--help`` lists them.
COMMANDS = [
    "serve",
    "check",
    "plugins",
    "talk",
    "speech",
    "devices",
    "tools",
]


def build_parser(plugins: Plugins | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xiaozhi-trio", description="A voice server for Xiaozhi devices.")
    parser.add_argument("--version", action="version", version=f"xiaozhi-trio {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log more: -v info, -vv debug (default: warnings and errors only)")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").add_parser(subparsers)
    (plugins or Plugins()).add_cli_commands(subparsers)
    return parser


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    """The ``--config`` option shared by every command that reads the config."""
    parser.add_argument(
        "-c", "--config", type=Path, default=None,
        help="TOML config file (default: ./config.toml if it exists, else built-in defaults)",
    )


def config_path(args: argparse.Namespace) -> Path | None:
    """The config file to read: ``--config``, else ``./config.toml`` if present, else None."""
    if args.config is not None:
        return Path(args.config)
    default = Path("config.toml")
    return default if default.exists() else None


def log_level(verbosity: int) -> int:
    """The log level for ``-v`` given ``verbosity`` times: WARNING, ``-v`` INFO, ``-vv`` DEBUG."""
    if verbosity <= 0:
        return logging.WARNING
    return logging.INFO if verbosity == 1 else logging.DEBUG


def setup_logging(verbosity: int) -> None:
    level = log_level(verbosity)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    logging.getLogger().setLevel(level)  # also when something configured the root before us


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    try:
        return int(args.func(args) or 0)
    except ConfigError as e:
        print(f"xiaozhi-trio: configuration error: {e}", file=sys.stderr)
        return 2
    except DatabaseError as e:
        print(f"xiaozhi-trio: database error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

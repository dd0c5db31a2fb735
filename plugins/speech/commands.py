"""``xiaozhi-trio models list | install NAME | verify [NAME] | remove NAME``: the speech models.

The speech plugin adds this command through the ``xiaozhi_cli_commands`` hook, as any plugin adds
its own commands. The folder and mirrors come from the core's ``[models]`` table (``config.models``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from xiaozhi_trio.pipeline.backends import ConfigError
from xiaozhi_trio.pipeline.cli import add_config_argument, config_path
from xiaozhi_trio.pipeline.config import Config, ModelsConfig, load_config
from xiaozhi_trio.pipeline.hookspecs import hookimpl

from .models import catalog
from .models.installer import (
    InstallError,
    ProgressBar,
    install_model,
    is_installed,
    remove_model,
    verify_model,
)


@hookimpl
def xiaozhi_cli_commands(subparsers: argparse._SubParsersAction) -> None:
    add_parser(subparsers)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``models`` and its actions to the ``xiaozhi-trio`` parser."""
    parser = subparsers.add_parser(
        "models", help="list, install, verify and remove speech models"
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser(
        "list", help="the models known by name, and which are installed"
    )
    listing.set_defaults(func=run_list)
    install = actions.add_parser("install", help="download, check and unpack a model")
    install.add_argument("name")
    install.add_argument(
        "--force", action="store_true", help="download again even if installed"
    )
    install.set_defaults(func=run_install)
    verify = actions.add_parser(
        "verify", help="check that installed models load (all, or NAME)"
    )
    verify.add_argument("name", nargs="?")
    verify.set_defaults(func=run_verify)
    remove = actions.add_parser("remove", help="delete an installed model")
    remove.add_argument("name")
    remove.set_defaults(func=run_remove)
    for action in (listing, install, verify, remove):
        add_config_argument(action)


def _settings(args: argparse.Namespace) -> tuple[Config, Path, ModelsConfig]:
    config = load_config(config_path(args))
    return config, config.models.path(config.server.data_path), config.models


def run_list(args: argparse.Namespace) -> int:
    _, models_dir, _ = _settings(args)
    print(f"models folder: {models_dir}")
    print(f"{'NAME':34} {'ROLE':4} {'LANGUAGES':16} {'SIZE':>7}  STATUS")
    for entry in catalog.CATALOG:
        if entry.shipped:
            status = f"shipped in {entry.shipped_in}" + (
                " (prepared)" if is_installed(entry, models_dir) else ""
            )
        else:
            status = "installed" if is_installed(entry, models_dir) else "not installed"
        print(
            f"{entry.name:34} {entry.role:4} {entry.language:16} {entry.approx_mb:>4} MB  {status}"
        )
        print(f"{'':34} {entry.description}")
    return 0


def run_install(args: argparse.Namespace) -> int:
    _, models_dir, settings = _settings(args)
    try:
        files = install_model(
            args.name,
            models_dir,
            mirrors=settings.mirrors,
            progress=ProgressBar(),
            force=args.force,
            index_url=catalog.index_url(settings.package_index),
        )
    except InstallError as e:
        print(f"xiaozhi-trio: {e}", file=sys.stderr)
        return 1
    print(f"{files.name}: installed in {files.directory} and checked")
    return 0


def run_verify(args: argparse.Namespace) -> int:
    _, models_dir, _ = _settings(args)
    if args.name:
        entries = [catalog.get_entry(args.name)]
    else:
        entries = [e for e in catalog.CATALOG if e.shipped or is_installed(e, models_dir)]
    failed = 0
    for entry in entries:
        try:
            verify_model(entry.name, models_dir)
        except ConfigError as e:  # ModelMissing and ModelInvalid
            print(f"{entry.name}: FAILED: {e}")
            failed += 1
        else:
            print(f"{entry.name}: ok")
    return 1 if failed else 0


def run_remove(args: argparse.Namespace) -> int:
    _, models_dir, _ = _settings(args)
    entry = catalog.get_entry(args.name)
    if remove_model(args.name, models_dir):
        note = (
            " (it is prepared again from its package when next used)"
            if entry.shipped
            else ""
        )
        print(f"{args.name}: removed{note}")
    else:
        print(f"{args.name}: was not installed")
    return 0

"""``xiaozhi-trio plugins``: what is installed, and which backends each plugin provides."""

from __future__ import annotations

import argparse

from ..registry import BackendEntry, Plugins


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("plugins", help="list plugins, their backends and versions")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    plugins = Plugins()
    by_plugin: dict[str, list[BackendEntry]] = {}
    for entry in plugins.backends.entries():
        by_plugin.setdefault(entry.plugin, []).append(entry)
    for info in plugins.info():
        version = f" {info.version}" if info.version else ""
        print(f"{info.name} ({info.distribution}{version})")
        for entry in by_plugin.get(info.name, []):
            print(f"    {entry.kind + ':' + entry.name:<24} {entry.description}")
        if info.hooks:
            print(f"    hooks: {', '.join(info.hooks)}")
    return 0

"""``xiaozhi-trio tools``: the tools agents can call, and the names to enter in Coze.

    tools                  devices whose tools are known (last listing), and the plugin tools
    tools DEVICE_ID        that device's tools (as it listed them when it last connected) and the
                           plugin tools: for each, the name to enter in a Coze local plugin, the
                           shorter names also accepted, the description and the parameters
    tools DEVICE_ID --json the same as JSON

A device's tools are recorded by the server each time the device connects and lists them over
MCP; this command reads that record from the database (the device need not be online).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import trio

from ..backends import ToolSpec
from ..config import load_config
from ..ops.services import OpsServices, build_ops_services
from ..protocol.tool_lookup import accepted_names
from ..protocol.tools import function_name
from ..registry import Plugins
from . import add_config_argument, config_path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("tools", help="the tools agents can call, and the names to enter in Coze")
    add_config_argument(parser)
    parser.add_argument("device_id", nargs="?", metavar="DEVICE_ID", help="a device that has connected before")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    services = build_ops_services(load_config(config_path(args)))
    try:
        return trio.run(_run, services, args)
    finally:
        services.close()


async def _run(services: OpsServices, args: argparse.Namespace) -> int:
    plugin_tools = [spec for spec, _handler in Plugins().tools.tools.values()]
    if args.device_id is None:
        return await _overview(services, plugin_tools, as_json=args.json)
    known = await services.tool_lists.get(args.device_id)
    if known is None:
        print(
            f"no tool listing for {args.device_id}: it is recorded when the device connects and lists "
            "its tools (an MCP-capable firmware does so on every connection)",
            file=sys.stderr,
        )
        return 1
    # A device tool hides a plugin tool of the same name, as in a session.
    device_names = {spec.name for spec in known.tools}
    plugin_tools = [spec for spec in plugin_tools if spec.name not in device_names]
    everything = [spec.name for spec in (*known.tools, *plugin_tools)]
    if args.json:
        print(json.dumps({
            "device_id": known.device_id,
            "listed_at": known.listed_at,
            "device_tools": [_tool_record(spec, everything) for spec in known.tools],
            "plugin_tools": [_tool_record(spec, everything) for spec in plugin_tools],
        }, ensure_ascii=False, indent=1))
        return 0
    print(f"{known.device_id}: {len(known.tools)} device tools, listed {_when(known.listed_at)}")
    print("In a Coze local plugin (端插件), name each tool as shown and give it these parameters.\n")
    _print_tools(known.tools, everything)
    if plugin_tools:
        print("server tools (from plugins):\n")
        _print_tools(plugin_tools, everything)
    return 0


async def _overview(services: OpsServices, plugin_tools: list[ToolSpec], *, as_json: bool) -> int:
    devices = await services.tool_lists.all()
    if as_json:
        print(json.dumps({
            "devices": [{"device_id": d.device_id, "listed_at": d.listed_at, "tools": [s.name for s in d.tools]}
                        for d in devices],
            "plugin_tools": [_tool_record(spec, [s.name for s in plugin_tools]) for spec in plugin_tools],
        }, ensure_ascii=False, indent=1))
        return 0
    if devices:
        print(f"{'DEVICE':<19} {'LISTED':<16} TOOLS")
        for d in devices:
            print(f"{d.device_id:<19} {_when(d.listed_at):<16} {len(d.tools)}")
        print("\n`xiaozhi-trio tools DEVICE_ID` shows a device's tools and the names to enter in Coze.")
    else:
        print("no device has listed its tools yet (they are recorded when a device connects)")
    if plugin_tools:
        print("\nserver tools (from plugins):\n")
        _print_tools(plugin_tools, [spec.name for spec in plugin_tools])
    return 0


def _tool_record(spec: ToolSpec, everything: Sequence[str]) -> dict[str, Any]:
    return {
        "name": spec.name,
        "coze_name": function_name(spec.name),
        "also_accepted": [spec.name, *accepted_names(spec.name, everything)],
        "description": spec.description,
        "parameters": dict(spec.input_schema),
    }


def _print_tools(specs: Sequence[ToolSpec], everything: Sequence[str]) -> None:
    for spec in specs:
        record = _tool_record(spec, everything)
        print(spec.name)
        print(f"  enter in Coze:  {record['coze_name']}")
        print(f"  also accepted:  {', '.join(record['also_accepted'])}")
        if spec.description:
            print(f"  description:    {_shorten(spec.description, 200)}")
        parameters = _parameters(spec.input_schema)
        print(f"  parameters:     {'; '.join(parameters) if parameters else 'none'}")
        print()


def _parameters(schema: Mapping[str, Any]) -> list[str]:
    """One line per parameter of a JSON schema: ``volume (integer, 0 to 100, required)``."""
    properties = schema.get("properties")
    if not isinstance(properties, Mapping):
        return []
    required = schema.get("required") if isinstance(schema.get("required"), list) else []
    lines = []
    for name, prop in properties.items():
        prop = prop if isinstance(prop, Mapping) else {}
        details = [str(prop.get("type", "any"))]
        low, high = prop.get("minimum"), prop.get("maximum")
        if low is not None or high is not None:
            details.append(f"{'' if low is None else low} to {'' if high is None else high}".strip())
        if isinstance(prop.get("enum"), list):
            details.append("one of " + "/".join(map(str, prop["enum"])))
        if name in required:
            details.append("required")
        lines.append(f"{name} ({', '.join(details)})")
    return lines


def _shorten(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _when(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(timestamp))

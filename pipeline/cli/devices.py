"""``xiaozhi-trio devices``: the device registry from the command line.

    devices list                   every device: state, board, firmware, last seen
    devices bind CODE              admit the device showing this 6-digit activation code
    devices bind DEVICE_ID         admit a device directly (e.g. a browser client that shows no code)
    devices revoke DEVICE_ID       unbind it and invalidate its tokens, at once
    devices show DEVICE_ID         details and binding history
    devices key SERIAL HEX         provision a serial number's HMAC key (activation version 2)
    devices token DEVICE_ID        print a token for a bound device (for test clients)

It works on the same database file as a running server; changes take effect immediately.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict

import trio

from ..config import load_config
from ..ops.services import OpsServices, build_ops_services
from ..store.devices import Device
from . import add_config_argument, config_path

_CODE = re.compile(r"^\d{6}$")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("devices", help="list, bind and revoke devices")
    add_config_argument(parser)
    commands = parser.add_subparsers(dest="devices_command", required=True, metavar="ACTION")

    listing = commands.add_parser("list", help="every device with its state")
    listing.add_argument("--json", action="store_true", help="one JSON object per device")
    listing.set_defaults(func=lambda args: _run(args, _list))

    bind = commands.add_parser("bind", help="admit a device by its activation code (or its device id)")
    bind.add_argument("target", metavar="CODE|DEVICE_ID")
    bind.add_argument("--client-id", help="with a device id: the Client-Id to bind (default: the one on record)")
    bind.set_defaults(func=lambda args: _run(args, _bind))

    revoke = commands.add_parser("revoke", help="unbind a device and invalidate its tokens")
    revoke.add_argument("device_id", metavar="DEVICE_ID")
    revoke.set_defaults(func=lambda args: _run(args, _revoke))

    show = commands.add_parser("show", help="one device's details and binding history")
    show.add_argument("device_id", metavar="DEVICE_ID")
    show.set_defaults(func=lambda args: _run(args, _show))

    key = commands.add_parser("key", help="provision the HMAC key of a serial number (activation version 2)")
    key.add_argument("serial", metavar="SERIAL")
    key.add_argument("hex_key", metavar="HEX", help="the eFuse HMAC key 0, as 64 hex digits")
    key.set_defaults(func=lambda args: _run(args, _key))

    token = commands.add_parser("token", help="print a token for a bound device")
    token.add_argument("device_id", metavar="DEVICE_ID")
    token.set_defaults(func=lambda args: _run(args, _token))


def _run(args: argparse.Namespace, action: Callable[[OpsServices, argparse.Namespace], Awaitable[int]]) -> int:
    services = build_ops_services(load_config(config_path(args)))
    try:
        return trio.run(action, services, args)
    finally:
        services.close()


def _when(timestamp: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(timestamp)) if timestamp else "-"


async def _list(services: OpsServices, args: argparse.Namespace) -> int:
    devices = await services.registry.list()
    if args.json:
        for device in devices:
            record = asdict(device)
            record.pop("activation_challenge")
            print(json.dumps({**record, "state": device.state}))
        return 0
    if not devices:
        print("no devices yet (they appear after their first OTA check-in)")
        return 0
    print(f"{'DEVICE':<19} {'STATE':<22} {'BOARD':<24} {'FIRMWARE':<10} {'LAST SEEN':<16} CODE")
    now = services.clock()
    for d in devices:
        code = d.activation_code if d.activation_code and d.activation_expires and d.activation_expires > now else ""
        print(f"{d.device_id:<19} {d.state:<22} {d.board or '-':<24} {d.firmware_version or '-':<10} {_when(d.last_seen):<16} {code}")
    if not services.settings.auth.enabled:
        print("note: [auth] enabled = false, so any device may connect whatever its state")
    return 0


async def _bind(services: OpsServices, args: argparse.Namespace) -> int:
    target = args.target.strip()
    if _CODE.match(target):
        device = await services.registry.bind_code(target)
        if device is None:
            print(f"no device is waiting with code {target} (codes expire after "
                  f"{services.settings.devices.code_ttl_minutes} minutes; the device shows a new one)", file=sys.stderr)
            return 1
    else:
        existing = await services.registry.get(target)
        if existing is None and args.client_id is None:
            print(f"unknown device {target}; give --client-id to bind a device that never checked in", file=sys.stderr)
            return 1
        device = await services.registry.bind_device(target, args.client_id)
    if device.bound and device.activation_code is None:
        print(f"bound {device.device_id} ({device.board or 'unknown board'}); it is admitted at its next activation poll")
    else:
        print(f"approved {device.device_id}: it is bound once it proves its serial number {device.serial_number}")
    return 0


async def _revoke(services: OpsServices, args: argparse.Namespace) -> int:
    device = await services.registry.revoke(args.device_id)
    if device is None:
        print(f"unknown device {args.device_id}", file=sys.stderr)
        return 1
    print(f"revoked {device.device_id}: its tokens are invalid now; it needs a new activation code to return")
    if not services.settings.auth.enabled:
        print("warning: [auth] enabled = false, so the server does not check tokens and the device can still connect",
              file=sys.stderr)
    return 0


async def _show(services: OpsServices, args: argparse.Namespace) -> int:
    device = await services.registry.get(args.device_id)
    if device is None:
        print(f"unknown device {args.device_id}", file=sys.stderr)
        return 1
    _print_device(device)
    for event in await services.registry.history(device.device_id):
        detail = f" ({event.detail})" if event.detail else ""
        print(f"  {_when(event.at)}  {event.action:<8} client {event.client_id}{detail}")
    return 0


def _print_device(d: Device) -> None:
    rows = [("device", d.device_id), ("state", d.state), ("client id", d.client_id), ("board", d.board),
            ("board type", d.board_type), ("firmware", d.firmware_version), ("serial number", d.serial_number or "-"),
            ("language", d.language), ("address", d.address), ("first seen", _when(d.first_seen)),
            ("last seen", _when(d.last_seen)), ("bound since", _when(d.bound_at)),
            ("activation code", d.activation_code or "-")]
    for label, value in rows:
        print(f"{label + ':':<17}{value or '-'}")


async def _key(services: OpsServices, args: argparse.Namespace) -> int:
    try:
        key = bytes.fromhex(args.hex_key)
    except ValueError:
        print("the key must be hex digits", file=sys.stderr)
        return 1
    if len(key) != 32:
        print(f"the key must be 32 bytes (64 hex digits), not {len(key)}", file=sys.stderr)
        return 1
    await services.registry.set_key(args.serial, key)
    print(f"HMAC key stored for serial number {args.serial}")
    return 0


async def _token(services: OpsServices, args: argparse.Namespace) -> int:
    device = await services.registry.get(args.device_id)
    if device is None or not device.bound:
        print(f"{args.device_id} is not a bound device (bind it first)", file=sys.stderr)
        return 1
    print(services.auth.issue(device))
    return 0

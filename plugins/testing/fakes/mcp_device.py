"""A simulated device MCP server, behaving like the firmware's ``main/mcp_server.cc``.

Sans-IO: ``handle(payload)`` takes one JSON-RPC payload the server sent and returns the payloads
the device would send back (none, or one). Faithful in the ways servers get wrong:

* a request whose ``id`` is not a number (a string, a bool, missing) gets no reply at all, and so
  does anything without ``"jsonrpc": "2.0"`` or a string ``method``; ``notifications/*`` are ignored;
* float ids are truncated to int, as cJSON's ``valueint`` does;
* ``tools/list`` pages at 8000 bytes of compact JSON with ``nextCursor`` = the next tool's name, hides
  user-only tools unless ``withUserTools`` is true, and lists the common tools first;
* errors are ``{"error": {"message": ...}}`` without a ``code``;
* arguments are checked by type (integers within their range), a missing argument without a default
  is an error, and results are ``{"content": [{"type": "text", "text": ...}], "isError": false}``.

Fault injection: ``silent_tools`` (calls never answered), ``silent`` (nothing answered at all).
``connect(device)`` wires a ``McpClient`` to it in memory.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from xiaozhi_trio.pipeline.protocol.mcp import McpClient

MAX_PAYLOAD_SIZE = 8000
BOARD_NAME = "bread-compact-wifi"
FIRMWARE_VERSION = "2.0.3"


def _compact(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class ToolFailure(Exception):
    """Raised by a simulated tool; the device replies with its message as an error."""


_TYPES = {"boolean": bool, "integer": int, "string": str}


@dataclass
class Prop:
    """A tool property, as the firmware's ``Property``: typed, optional default, integer range."""

    name: str
    type: str
    default: Any = None
    minimum: int | None = None
    maximum: int | None = None

    @property
    def has_default(self) -> bool:
        return self.default is not None

    def schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": self.type}
        if self.has_default:
            schema["default"] = self.default
        if self.minimum is not None:
            schema["minimum"] = self.minimum
        if self.maximum is not None:
            schema["maximum"] = self.maximum
        return schema

    def parse(self, value: object) -> tuple[bool, Any]:
        """(found, value) as the firmware's type-matched argument reading."""
        if self.type == "boolean" and isinstance(value, bool):
            return True, value
        if self.type == "integer" and isinstance(value, int | float) and not isinstance(value, bool):
            number = int(value)
            if self.minimum is not None and number < self.minimum:
                raise ToolFailure(f"Value is below minimum allowed: {self.minimum}")
            if self.maximum is not None and number > self.maximum:
                raise ToolFailure(f"Value exceeds maximum allowed: {self.maximum}")
            return True, number
        if self.type == "string" and isinstance(value, str):
            return True, value
        return False, self.default


ToolCallback = Callable[[dict[str, Any]], "bool | int | str | dict[str, Any]"]


@dataclass
class SimTool:
    name: str
    description: str
    properties: list[Prop]
    callback: ToolCallback
    user_only: bool = False

    def to_json(self) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "object", "properties": {p.name: p.schema() for p in self.properties}}
        required = [p.name for p in self.properties if not p.has_default]
        if required:
            schema["required"] = required
        entry: dict[str, Any] = {"name": self.name, "description": self.description, "inputSchema": schema}
        if self.user_only:
            entry["annotations"] = {"audience": ["user"]}
        return entry


@dataclass
class SimulatedDevice:
    """The device's state and its MCP server."""

    volume: int = 70
    brightness: int = 80
    theme: str = "light"
    battery_level: int = 87
    has_camera: bool = False
    silent: bool = False
    silent_tools: set[str] = field(default_factory=set)
    #: Every payload the device received, in order.
    received: list[dict[str, Any]] = field(default_factory=list)
    #: ``capabilities.vision`` from ``initialize``.
    vision: dict[str, str] = field(default_factory=dict)
    tools: list[SimTool] = field(default_factory=list)
    #: Every tool call the device carried out: (name, parsed arguments).
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        board_tools, self.tools = self.tools, []
        self._add_common_tools()
        self.tools += board_tools
        self._add_user_only_tools()

    # ---- the tools of AddCommonTools / AddUserOnlyTools ---------------------------------------

    def _add_common_tools(self) -> None:
        def status(_: dict[str, Any]) -> dict[str, Any]:
            return {
                "audio_speaker": {"volume": self.volume},
                "screen": {"brightness": self.brightness, "theme": self.theme},
                "battery": {"level": self.battery_level, "charging": False},
                "network": {"type": "wifi", "ssid": "home", "signal": "strong"},
            }

        def set_volume(args: dict[str, Any]) -> bool:
            self.volume = args["volume"]
            return True

        def set_brightness(args: dict[str, Any]) -> bool:
            self.brightness = args["brightness"]
            return True

        def set_theme(args: dict[str, Any]) -> bool:
            if args["theme"] not in ("light", "dark"):
                return False
            self.theme = args["theme"]
            return True

        def take_photo(args: dict[str, Any]) -> str:
            raise ToolFailure("Failed to capture photo")

        self.add_tool(
            "self.get_device_status",
            "Provides the real-time information of the device, including the current status of the audio speaker, screen, battery, network, etc.",
            [],
            status,
        )
        self.add_tool(
            "self.audio_speaker.set_volume",
            "Set the volume of the audio speaker. If the current volume is unknown, you must call `self.get_device_status` tool first and then call this tool.",
            [Prop("volume", "integer", minimum=0, maximum=100)],
            set_volume,
        )
        self.add_tool(
            "self.screen.set_brightness",
            "Set the brightness of the screen.",
            [Prop("brightness", "integer", minimum=0, maximum=100)],
            set_brightness,
        )
        self.add_tool(
            "self.screen.set_theme",
            "Set the theme of the screen. The theme can be `light` or `dark`.",
            [Prop("theme", "string")],
            set_theme,
        )
        if self.has_camera:
            self.add_tool(
                "self.camera.take_photo", "Take a photo and explain it.", [Prop("question", "string")], take_photo
            )

    def _add_user_only_tools(self) -> None:
        self.add_tool(
            "self.get_system_info", "Get the system information", [], lambda _: {"chip": "esp32s3"}, user_only=True
        )
        self.add_tool("self.reboot", "Reboot the system", [], lambda _: True, user_only=True)
        self.add_tool(
            "self.upgrade_firmware",
            "Upgrade firmware from a specific URL.",
            [Prop("url", "string")],
            lambda _: True,
            user_only=True,
        )

    def add_tool(
        self, name: str, description: str, properties: list[Prop], callback: ToolCallback, *, user_only: bool = False
    ) -> None:
        """Add a tool (a board's own tools come after the common ones); duplicates are ignored."""
        if any(t.name == name for t in self.tools):
            return
        self.tools.append(SimTool(name, description, properties, callback, user_only))

    # ---- the MCP server --------------------------------------------------------------------------

    def handle(self, payload: object) -> list[dict[str, Any]]:
        """One payload in; the replies out (empty when the firmware would not reply)."""
        if not isinstance(payload, dict):
            return []
        self.received.append(payload)
        if self.silent or payload.get("jsonrpc") != "2.0":
            return []
        method = payload.get("method")
        if not isinstance(method, str) or method.startswith("notifications"):
            return []
        params = payload.get("params")
        if params is not None and not isinstance(params, dict):
            return []
        request_id = payload.get("id")
        if not isinstance(request_id, int | float) or isinstance(request_id, bool):
            return []  # the firmware logs "Invalid id" and never answers
        request_id = int(request_id)
        if method == "initialize":
            capabilities = (params or {}).get("capabilities")
            if isinstance(capabilities, dict) and isinstance(capabilities.get("vision"), dict):
                vision = capabilities["vision"]
                if isinstance(vision.get("url"), str):
                    self.vision = {
                        "url": vision["url"],
                        "token": vision.get("token") if isinstance(vision.get("token"), str) else "",
                    }
            return [
                self._result(
                    request_id,
                    {
                        "protocolVersion": "2024-11-05",
                        "capabilities": {"tools": {}},
                        "serverInfo": {"name": BOARD_NAME, "version": FIRMWARE_VERSION},
                    },
                )
            ]
        if method == "tools/list":
            cursor = (params or {}).get("cursor")
            with_user = (params or {}).get("withUserTools")
            return [self._list(request_id, cursor if isinstance(cursor, str) else "", with_user is True)]
        if method == "tools/call":
            return self._call(request_id, params)
        return [self._error(request_id, f"Method not implemented: {method}")]

    def _list(self, request_id: int, cursor: str, with_user: bool) -> dict[str, Any]:
        body = '{"tools":['
        found = cursor == ""
        next_cursor = ""
        for tool in self.tools:
            if not found:
                if tool.name != cursor:
                    continue
                found = True
            if tool.user_only and not with_user:
                continue
            piece = _compact(tool.to_json()) + ","
            if len(body.encode()) + len(piece.encode()) + 30 > MAX_PAYLOAD_SIZE:
                next_cursor = tool.name
                break
            body += piece
        body = body.removesuffix(",")
        if body.endswith("[") and self.tools:
            return self._error(request_id, f"Failed to add tool {next_cursor} because of payload size limit")
        body += "]}" if not next_cursor else f'],"nextCursor":{_compact(next_cursor)}}}'
        return self._result(request_id, json.loads(body))

    def _call(self, request_id: int, params: object) -> list[dict[str, Any]]:
        if not isinstance(params, dict):
            return [self._error(request_id, "Missing params")]
        name = params.get("name")
        if not isinstance(name, str):
            return [self._error(request_id, "Missing name")]
        arguments = params.get("arguments")
        if arguments is not None and not isinstance(arguments, dict):
            return [self._error(request_id, "Invalid arguments")]
        tool = next((t for t in self.tools if t.name == name), None)
        if tool is None:
            return [self._error(request_id, f"Unknown tool: {name}")]
        values: dict[str, Any] = {}
        try:
            for prop in tool.properties:
                found, value = prop.parse((arguments or {}).get(prop.name))
                if not found and not prop.has_default:
                    return [self._error(request_id, f"Missing valid argument: {prop.name}")]
                values[prop.name] = value
        except ToolFailure as e:
            return [self._error(request_id, str(e))]
        if self.silent or name in self.silent_tools:
            return []
        self.calls.append((name, values))
        try:
            value = tool.callback(values)
        except ToolFailure as e:
            return [self._error(request_id, str(e))]
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, int):
            text = str(value)
        elif isinstance(value, str):
            text = value
        else:
            text = _compact(value)
        return [self._result(request_id, {"content": [{"type": "text", "text": text}], "isError": False})]

    @staticmethod
    def _result(request_id: int, result: Mapping[str, Any]) -> dict[str, Any]:
        return {"jsonrpc": "2.0", "id": request_id, "result": dict(result)}

    @staticmethod
    def _error(request_id: int, message: str) -> dict[str, Any]:
        return {"jsonrpc": "2.0", "id": request_id, "error": {"message": message}}


def connect(device: SimulatedDevice, *, call_timeout: float = 10.0, relist_after: float = 60.0) -> McpClient:
    """A ``McpClient`` whose frames reach ``device`` in memory and whose replies come straight back."""
    client: McpClient

    async def send_json(frame: dict[str, Any]) -> None:
        assert frame.get("type") == "mcp", frame
        json.dumps(frame)  # what goes on the wire must be JSON
        for reply in device.handle(json.loads(json.dumps(frame["payload"]))):
            client.feed(json.loads(json.dumps(reply)))

    client = McpClient(send_json, call_timeout=call_timeout, relist_after=relist_after)
    return client

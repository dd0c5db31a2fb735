"""The tools one session offers its agent: the device's MCP tools plus server-side plugin tools,
and the mapping between tool names and the function names LLM APIs accept.

OpenAI-compatible APIs and Coze want function names matching ``^[a-zA-Z0-9_-]{1,64}$``; device tool
names have dots (``self.audio_speaker.set_volume``). ``function_name`` maps one to the other,
reversibly and readably:

* letters, digits and a lone ``_`` stay as they are;
* ``.`` becomes ``__``  (``self.audio_speaker.set_volume`` → ``self__audio_speaker__set_volume``);
* an ``_`` next to another ``_`` or a ``.``, a ``-`` and any other character become ``-xx`` per UTF-8
  byte (lower-case hex), so a run of underscores always reads back unambiguously: one is ``_``, ``2k``
  are ``k`` dots;
* a name whose mapping would pass 64 characters keeps its first 52 and ends with ``-h`` and 10 hex
  digits of its SHA-256 (``h`` is no hex digit, so such a name never decodes by accident); only
  a lookup among the session's tools maps it back (``tool_lookup.resolve_tool``, which also takes
  the looser names bot owners write).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Mapping
from typing import Any

import trio

from ..backends import ToolResult, ToolSpec
from ..registry import ToolRegistry
from .mcp import McpClient, McpError

log = logging.getLogger(__name__)

FUNCTION_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
MAX_FUNCTION_NAME = 64
_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
_TOKEN = re.compile(r"[a-zA-Z0-9]+|_+|-[0-9a-f]{2}|.", re.DOTALL)


def _escape(char: str) -> str:
    return "".join(f"-{byte:02x}" for byte in char.encode("utf-8"))


def encode_tool_name(tool_name: str) -> str:
    """The reversible mapping without the length limit (see the module docstring)."""
    out = []
    for i, char in enumerate(tool_name):
        if char in _PLAIN:
            out.append(char)
        elif char == ".":
            out.append("__")
        elif char == "_":
            before = tool_name[i - 1] if i > 0 else ""
            after = tool_name[i + 1] if i + 1 < len(tool_name) else ""
            out.append(_escape(char) if before in ("_", ".") or after in ("_", ".") else "_")
        else:
            out.append(_escape(char))
    return "".join(out)


def function_name(tool_name: str) -> str:
    """The function name for ``tool_name``: always matches ``FUNCTION_NAME``; distinct names map
    to distinct function names."""
    if not tool_name:
        raise ValueError("a tool name cannot be empty")
    encoded = encode_tool_name(tool_name)
    if len(encoded) <= MAX_FUNCTION_NAME:
        return encoded
    digest = hashlib.sha256(tool_name.encode("utf-8")).hexdigest()[:10]
    return f"{encoded[:52]}-h{digest}"


def tool_name(function: str) -> str:
    """Decode a function name made by ``function_name`` (not a shortened one); ``ValueError`` if
    ``function`` is not such a name."""
    if not FUNCTION_NAME.match(function):
        raise ValueError(f"{function!r} is not a valid function name")
    out: list[str] = []
    pending = bytearray()  # escaped UTF-8 bytes of one character
    for token in _TOKEN.findall(function):
        if token.startswith("-") and len(token) == 3:
            pending.append(int(token[1:], 16))
            continue
        if pending:
            out.append(_decode_bytes(pending, function))
            pending.clear()
        if token.startswith("_"):
            if len(token) == 1:
                out.append("_")
            elif len(token) % 2 == 0:
                out.append("." * (len(token) // 2))
            else:
                raise ValueError(f"{function!r}: a run of {len(token)} underscores has no meaning")
        elif token == "-":
            raise ValueError(f"{function!r} is not a tool function name (a shortened one, or a bad escape)")
        else:
            out.append(token)
    if pending:
        out.append(_decode_bytes(pending, function))
    name = "".join(out)
    if encode_tool_name(name) != function:
        raise ValueError(f"{function!r} is not in canonical form")
    return name


def _decode_bytes(data: bytearray, function: str) -> str:
    try:
        return bytes(data).decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{function!r} escapes bytes that are not UTF-8") from None


def openai_tool_schema(spec: ToolSpec) -> dict[str, Any]:
    """The ``tools[]`` entry for OpenAI-style function calling."""
    parameters = dict(spec.input_schema) if spec.input_schema else {}
    # The APIs want an object schema with properties, even for a tool without arguments.
    parameters.setdefault("type", "object")
    if parameters.get("type") == "object":
        parameters.setdefault("properties", {})
    return {
        "type": "function",
        "function": {"name": function_name(spec.name), "description": spec.description, "parameters": parameters},
    }


class SessionTools:
    """The ``ToolBox`` of one session: device tools (over MCP) first, then plugin tools.

    A device tool hides a plugin tool of the same name. If the device fails to list its tools
    (it never answers, say), the turn goes on with the plugin tools alone; the client decides when
    to ask the device again (``McpClient.relist_after``).
    """

    def __init__(
        self, mcp: McpClient | None, server_tools: ToolRegistry, *, list_wait: float = 1.5, relist_after: float = 60.0
    ) -> None:
        self.mcp = mcp
        self.server_tools = server_tools
        #: How long a turn waits for the device's tool list (a firmware answers in milliseconds;
        #: a slow one must not hold up the answer, so the turn goes on without its tools)...
        self.list_wait = list_wait
        #: ...and how long later turns then skip asking (the session's own listing may still land).
        self.relist_after = relist_after
        self._gave_up_at: float | None = None
        self._device_tools: dict[str, ToolSpec] = {}

    async def _list_device_tools(self) -> None:
        if self.mcp is None:
            return
        if (cached := self.mcp.cached_tools) is not None:
            self._device_tools = {spec.name: spec for spec in cached}
            return
        if self._gave_up_at is not None and trio.current_time() - self._gave_up_at < self.relist_after:
            return
        with trio.move_on_after(self.list_wait) as waited:
            try:
                specs = await self.mcp.list_tools()
            except McpError as e:
                log.warning("device tools unavailable (%s): %s", e.kind, e)
                return
        if waited.cancelled_caught:
            self._gave_up_at = trio.current_time()
            log.info("the device has not listed its tools within %g s; this turn goes on without them", self.list_wait)
            return
        self._device_tools = {spec.name: spec for spec in specs}

    async def list_tools(self) -> list[ToolSpec]:
        """Every tool the agent may call this turn."""
        await self._list_device_tools()
        tools = list(self._device_tools.values())
        for name, (spec, _handler) in self.server_tools.tools.items():
            if name in self._device_tools:
                log.warning("plugin tool %s is hidden by the device tool of the same name", name)
                continue
            tools.append(spec)
        return tools

    async def call(self, name: str, arguments: Mapping[str, Any]) -> ToolResult:
        """Run tool ``name``; failures come back as ``ToolResult(is_error=True)``, never raised."""
        if name not in self._device_tools and name in self.server_tools.tools:
            _spec, handler = self.server_tools.tools[name]
            try:
                return await handler(arguments)
            except Exception as e:  # a plugin's tool must not end the turn: the agent hears the error
                log.exception("plugin tool %s failed", name)
                return ToolResult(f"the tool failed: {e}", is_error=True)
        if self.mcp is None:
            return ToolResult(f"unknown tool {name!r}", is_error=True)
        return await self.mcp.call_tool(name, arguments)

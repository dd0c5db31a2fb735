"""The server's MCP client to the device: the device is an MCP server reached over the session's
WebSocket, as JSON-RPC 2.0 messages inside ``{"type": "mcp", "payload": ...}`` frames.

What the firmware (``main/mcp_server.cc``) requires, and this client therefore does:

* request ids are numbers: a request with a string id gets no reply at all;
* ``tools/list`` is paged: a reply of about 8 KB at most carries ``nextCursor``, the *name* of the
  next tool, to send back as ``cursor``; tools for the user only are listed only with
  ``withUserTools`` (never asked for here: an agent must not reboot the device);
* errors come back as ``{"error": {"message": ...}}`` without a ``code``;
* a tool call may simply never be answered (a busy or disconnected device): every request has a
  deadline, so a silent device costs a turn a few seconds, never the whole turn.

No tasks of its own: a request sends its message and waits on a ``trio.Event`` for the reply that
the session hands to ``feed()``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import trio

import xiaozhi_trio.pipeline

from ..backends import ToolResult, ToolSpec

log = logging.getLogger(__name__)

PROTOCOL_VERSION = "2024-11-05"
CLIENT_NAME = "xiaozhi-trio"
#: A listing that needs more pages than this is treated as a device bug (a cursor loop).
MAX_LIST_PAGES = 64
#: JSON-RPC ids stay within the firmware's ``int`` (it reads ``valueint``).
_MAX_ID = 2**31 - 1

SendJson = Callable[[dict[str, Any]], Awaitable[None]]
#: Told the device's tools after each complete listing (to keep them for ``xiaozhi-trio tools``).
OnListed = Callable[[list["ToolSpec"]], Awaitable[None]]


class McpError(Exception):
    """A request to the device failed: an error reply, no reply in time, or the session closed."""

    def __init__(self, message: str, *, kind: str = "error") -> None:
        super().__init__(message)
        #: ``"error"`` (the device answered with an error), ``"timeout"``, ``"closed"``, ``"protocol"``.
        self.kind = kind


@dataclass(eq=False)
class _Waiter:
    method: str
    event: trio.Event = field(default_factory=trio.Event)
    reply: Mapping[str, Any] | None = None


class McpClient:
    """JSON-RPC requests to the device's MCP server, replies matched by numeric id."""

    def __init__(
        self,
        send_json: SendJson,
        *,
        call_timeout: float = 10.0,
        relist_after: float = 60.0,
        on_listed: OnListed | None = None,
    ) -> None:
        """``send_json(frame)`` sends one JSON text frame to the device; ``call_timeout`` is the
        number of seconds any request waits for its reply; after a ``tools/list`` that got no
        answer, ``list_tools`` fails at once for ``relist_after`` seconds instead of waiting again;
        ``on_listed`` is awaited with the tools after the listing."""
        self._send_json = send_json
        self._on_listed = on_listed
        self.call_timeout = call_timeout
        self.relist_after = relist_after
        self._listing_timed_out_at: float | None = None
        self._next_id = 1
        self._waiters: dict[int, _Waiter] = {}
        self._closed = False
        self._tools: list[ToolSpec] | None = None
        self._listing = trio.Lock()
        #: The device's ``serverInfo`` from ``initialize`` (board name, firmware version).
        self.server_info: dict[str, Any] = {}

    # ---- replies from the device ---------------------------------------------------------------

    def feed(self, payload: object) -> None:
        """Hand over the ``payload`` of an ``mcp`` message from the device.

        Replies wake the request waiting for their id. Notifications, replies nobody waits for any
        more (their request timed out) and malformed payloads are logged and dropped.
        """
        if not isinstance(payload, Mapping):
            log.warning("MCP: dropping a payload that is not an object: %.200r", payload)
            return
        if "method" in payload:
            # A notification (or a request, which the server does not serve) from the device.
            log.debug("MCP: device sent %s; ignored", payload.get("method"))
            return
        request_id = payload.get("id")
        if not isinstance(request_id, int) or isinstance(request_id, bool):
            log.warning("MCP: dropping a reply without a numeric id: %.200r", payload)
            return
        if "result" not in payload and "error" not in payload:
            log.warning("MCP: dropping reply %d with neither result nor error", request_id)
            return
        waiter = self._waiters.get(request_id)
        if waiter is None:
            log.info("MCP: reply %d arrived after its request gave up; dropped", request_id)
            return
        if waiter.reply is None:
            waiter.reply = payload
            waiter.event.set()

    # ---- requests ------------------------------------------------------------------------------

    def _take_id(self) -> int:
        request_id = self._next_id
        self._next_id = 1 if request_id >= _MAX_ID else request_id + 1
        return request_id

    async def _request(self, method: str, params: Mapping[str, Any], timeout: float | None = None) -> Mapping[str, Any]:
        """Send one request; return its ``result`` or raise ``McpError``."""
        if self._closed:
            raise McpError("the device is not connected", kind="closed")
        request_id = self._take_id()
        waiter = _Waiter(method)
        self._waiters[request_id] = waiter
        deadline = self.call_timeout if timeout is None else timeout
        try:
            message = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": dict(params)}
            await self._send_json({"type": "mcp", "payload": message})
            with trio.move_on_after(deadline):
                await waiter.event.wait()
        finally:
            del self._waiters[request_id]
        reply = waiter.reply
        if reply is None:
            if self._closed:
                raise McpError("the device is not connected", kind="closed")
            raise McpError(f"the device did not answer {method} within {deadline:g} s", kind="timeout")
        if "error" in reply:
            raise McpError(_error_text(reply["error"]), kind="error")
        result = reply.get("result")
        if not isinstance(result, Mapping):
            raise McpError(f"the device's {method} result is not an object: {result!r:.200}", kind="protocol")
        return result

    async def initialize(self, vision_url: str | None = None, vision_token: str | None = None) -> dict[str, Any]:
        """Open the MCP session; return the device's ``serverInfo``.

        With ``vision_url`` the device's camera tool uploads photos there (with ``vision_token``).
        """
        capabilities: dict[str, Any] = {}
        if vision_url:
            vision = {"url": vision_url}
            if vision_token:
                vision["token"] = vision_token
            capabilities["vision"] = vision
        # The installed package's version, as its metadata says (read when asked, so it is never stale).
        client_info = {"name": CLIENT_NAME, "version": xiaozhi_trio.pipeline.__version__}
        params = {"protocolVersion": PROTOCOL_VERSION, "capabilities": capabilities, "clientInfo": client_info}
        result = await self._request("initialize", params)
        info = result.get("serverInfo")
        self.server_info = dict(info) if isinstance(info, Mapping) else {}
        # Standard MCP; the firmware ignores notifications, other servers expect it.
        await self._send_json({"type": "mcp", "payload": {"jsonrpc": "2.0", "method": "notifications/initialized"}})
        return self.server_info

    @property
    def cached_tools(self) -> list[ToolSpec] | None:
        """The tools from the first complete listing, or None if there has been none yet."""
        return None if self._tools is None else list(self._tools)

    async def list_tools(self) -> list[ToolSpec]:
        """The device's tools for agents, following ``nextCursor`` through every page.

        The first complete listing is cached for the session (the firmware's tools are fixed at
        boot). Raises ``McpError`` if a page fails; nothing is cached then. A device that did not
        answer is not asked again for ``relist_after`` seconds, so a mute device does not slow
        every turn by a whole timeout.
        """
        async with self._listing:  # concurrent callers share one listing
            if self._tools is not None:
                return list(self._tools)
            failed_at = self._listing_timed_out_at
            if failed_at is not None and trio.current_time() - failed_at < self.relist_after:
                raise McpError("the device did not answer tools/list a moment ago", kind="timeout")
            try:
                tools = await self._list_all_pages()
            except McpError as e:
                if e.kind == "timeout":
                    self._listing_timed_out_at = trio.current_time()
                raise
        if self._on_listed is not None:
            await self._on_listed(list(tools))
        return tools

    async def _list_all_pages(self) -> list[ToolSpec]:
        tools: dict[str, ToolSpec] = {}
        cursor = ""
        seen_cursors = {cursor}
        for _page in range(MAX_LIST_PAGES):
            result = await self._request("tools/list", {"cursor": cursor, "withUserTools": False})
            entries = result.get("tools")
            if not isinstance(entries, list):
                raise McpError(f"tools/list result has no tools list: {result!r:.200}", kind="protocol")
            for entry in entries:
                spec = _tool_spec(entry)
                if spec is not None and spec.name not in tools:
                    tools[spec.name] = spec
            next_cursor = result.get("nextCursor")
            if not next_cursor:
                break
            if not isinstance(next_cursor, str) or next_cursor in seen_cursors:
                raise McpError(f"tools/list paging loops at cursor {next_cursor!r}", kind="protocol")
            seen_cursors.add(next_cursor)
            cursor = next_cursor
        else:
            raise McpError(f"tools/list needs more than {MAX_LIST_PAGES} pages", kind="protocol")
        self._tools = list(tools.values())
        log.info("MCP: device has %d tools: %s", len(self._tools), ", ".join(tools))
        return list(self._tools)

    async def call_tool(self, name: str, arguments: Mapping[str, Any], *, timeout: float | None = None) -> ToolResult:
        """Call a device tool. Never raises for the device's sake: an error reply, a silent device
        or a closed session come back as ``ToolResult(is_error=True)`` for the agent to report."""
        try:
            result = await self._request("tools/call", {"name": name, "arguments": dict(arguments)}, timeout)
        except McpError as e:
            log.warning("MCP: tool %s failed (%s): %s", name, e.kind, e)
            if e.kind == "timeout":
                return ToolResult("the device did not answer", is_error=True)
            return ToolResult(str(e), is_error=True)
        return ToolResult(_content_text(result.get("content")), is_error=result.get("isError") is True)

    def close(self) -> None:
        """The session is over: every waiting request fails at once, later ones immediately."""
        self._closed = True
        for waiter in self._waiters.values():
            waiter.event.set()


def _error_text(error: object) -> str:
    if isinstance(error, Mapping):
        message = error.get("message")
        if isinstance(message, str) and message:
            code = error.get("code")
            return f"{message} (code {code})" if isinstance(code, int) else message
    return f"the device returned an error: {error!r:.200}"


def _tool_spec(entry: object) -> ToolSpec | None:
    if not isinstance(entry, Mapping) or not isinstance(entry.get("name"), str) or not entry["name"]:
        log.warning("MCP: skipping a malformed tool entry: %.200r", entry)
        return None
    annotations = entry.get("annotations")
    if isinstance(annotations, Mapping) and annotations.get("audience") == ["user"]:
        return None  # for the device's owner, not for agents
    description = entry.get("description")
    schema = entry.get("inputSchema")
    if not isinstance(schema, Mapping):
        schema = {"type": "object", "properties": {}}
    return ToolSpec(entry["name"], description if isinstance(description, str) else "", dict(schema))


def _content_text(content: object) -> str:
    """The tool result's content items as one text for the agent."""
    if not isinstance(content, list):
        return ""
    parts = []
    for item in content:
        if not isinstance(item, Mapping):
            continue
        if item.get("type") == "text" and isinstance(item.get("text"), str):
            parts.append(item["text"])
        elif item.get("type") == "image":
            parts.append("(the tool returned an image, which cannot be passed on as text)")
    return "\n".join(parts)

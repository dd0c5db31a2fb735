"""The tools of one session: the device's own over MCP (when its hello offers MCP) and the
server's plugin tools."""

from __future__ import annotations

from typing import Any

from ..backends import ToolSpec
from ..messages import DeviceHello
from ..protocol.mcp import McpClient, McpError, OnListed
from ..protocol.tools import SessionTools
from ..store.sqlite import DatabaseError
from .context import SessionContext


def open_tools(ctx: SessionContext, hello: DeviceHello) -> tuple[McpClient | None, SessionTools]:
    """The MCP client to the device (None if it has no MCP server) and the session's tool box."""
    mcp = None
    if hello.supports_mcp:

        async def send_mcp(frame: dict[str, Any]) -> None:
            await ctx.outbox.send_json({**frame, "session_id": ctx.session_id})

        mcp = McpClient(send_mcp, on_listed=_listing_keeper(ctx))
    return mcp, SessionTools(mcp, ctx.services.server_tools)


def _listing_keeper(ctx: SessionContext) -> OnListed | None:
    """Records the device's tool listing for ``xiaozhi-trio tools`` (when there is a store)."""
    tool_lists = ctx.services.tool_lists
    if tool_lists is None:
        return None

    async def keep(specs: list[ToolSpec]) -> None:
        try:
            await tool_lists.save(ctx.device_id, specs)
        except DatabaseError as e:  # the listing itself stands; only the record is lost
            ctx.log.warning("cannot record the device's tools: %s", e)

    return keep


async def initialize_mcp(ctx: SessionContext, mcp: McpClient) -> None:
    """Open the MCP session and list the device's tools (a failure leaves the plugin tools)."""
    try:
        await mcp.initialize()
        await mcp.list_tools()
    except McpError as e:
        ctx.log.warning("MCP setup with the device failed: %s", e)

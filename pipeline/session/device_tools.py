"""The tools of one session: the device's own over MCP (when its hello offers MCP) and the
server's plugin tools."""

from __future__ import annotations

from typing import Any

from ..messages import DeviceHello
from ..protocol.mcp import McpClient, McpError
from ..protocol.tools import SessionTools
from .context import SessionContext


def open_tools(ctx: SessionContext, hello: DeviceHello) -> tuple[McpClient | None, SessionTools]:
    """The MCP client to the device (None if it has no MCP server) and the session's tool box."""
    mcp = None
    if hello.supports_mcp:

        async def send_mcp(frame: dict[str, Any]) -> None:
            await ctx.outbox.send_json({**frame, "session_id": ctx.session_id})

        mcp = McpClient(send_mcp)
    return mcp, SessionTools(mcp, ctx.services.server_tools)


async def initialize_mcp(ctx: SessionContext, mcp: McpClient) -> None:
    """Open the MCP session and list the device's tools (a failure leaves the plugin tools)."""
    try:
        await mcp.initialize()
        await mcp.list_tools()
    except McpError as e:
        ctx.log.warning("MCP setup with the device failed: %s", e)

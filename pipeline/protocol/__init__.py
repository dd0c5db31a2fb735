"""The device protocol: handshake, JSON messages, MCP client."""

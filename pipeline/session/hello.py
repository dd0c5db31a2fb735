"""The opening of a session: the device's hello, the framing it settles, the server's hello."""

from __future__ import annotations

from typing import Any

from ..audio.framing import SUPPORTED_VERSIONS
from ..config import AudioConfig
from ..messages import DeviceHello
from ..protocol import device_messages as dm
from ..protocol.device_messages import ProtocolError
from ..protocol.handshake import Handshake
from .bad_input import BadInput
from .reader import WebSocket


async def receive_hello(ws: WebSocket, bad_input: BadInput) -> DeviceHello:
    """Wait for the device's hello; anything before it is reported and skipped."""
    while True:
        message = await ws.get_message()
        if isinstance(message, bytes):
            bad_input.warn("audio_before_hello", "binary message before hello ignored")
            continue
        try:
            return dm.parse_hello(message)
        except ProtocolError as e:
            bad_input.warn("bad_hello", f"waiting for hello: {e}")


def settled_framing(handshake: Handshake, hello: DeviceHello) -> int:
    """The binary framing version: the handshake's, unless the client sent no
    ``Protocol-Version`` (a browser) and names a supported one in its hello."""
    if not handshake.version_given and hello.version in SUPPORTED_VERSIONS:
        return hello.version
    return handshake.protocol_version


def server_hello(session_id: str, audio: AudioConfig) -> dict[str, Any]:
    """The server's hello, announcing the downlink audio."""
    return dm.server_hello(session_id, audio.downlink_sample_rate, audio.downlink_frame_ms)

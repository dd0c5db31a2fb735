"""Reading the device: unframe each message and route it where it goes.

- audio packets and the ``listen`` controls go down the uplink, in order, so a push-to-talk
  ``listen stop`` is handled after the audio before it; audio is dropped (with a warning) when
  the uplink is full rather than blocking the reader, which must always see ``abort``;
- ``abort`` and typed text skip the queue, straight to the controller's inbox;
- ``mcp`` replies go to the MCP client; a second hello is answered again.

A ``listen detect`` is the wake word when its text is one of the configured wake words (or
empty); any other text is a message the user typed.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Awaitable, Callable, Iterable
from typing import Protocol

import trio
from trio_websocket import ConnectionClosed

from ..audio.framing import FramingError, JsonFrame, unpack
from ..messages import Abort, DeviceHello, McpMessage, OpusPacket, TypedText, UplinkControl, WakeWordDetected
from ..protocol import device_messages as dm
from ..protocol.device_messages import ProtocolError
from ..protocol.mcp import McpClient
from .bad_input import BadInput

#: Uplink packets queued before new ones are dropped (~15 s at 60 ms): audio is real time, and a
#: reader that blocked on a busy recognizer could not see ``abort``.
UPLINK_BUFFER = 256


class WebSocket(Protocol):
    """What a session needs of a trio-websocket connection."""

    async def get_message(self) -> str | bytes: ...

    async def send_message(self, message: str | bytes) -> None: ...


def wake_word_key(text: str) -> str:
    """``text`` as wake words are compared: case-folded, without spaces or punctuation."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return "".join(char for char in folded if char.isalnum())


class WakeWords:
    """The configured wake words; tells a wake word from a typed message."""

    def __init__(self, words: Iterable[str]) -> None:
        self._keys = {wake_word_key(word) for word in words}

    def classify(self, detect: WakeWordDetected) -> WakeWordDetected | TypedText:
        """A ``listen detect`` with no text or a wake word stays one; other text was typed."""
        key = wake_word_key(detect.text)
        if not key or key in self._keys:
            return detect
        return TypedText(detect.text.strip())


class DeviceReader:
    """Reads one device's messages until the connection closes."""

    def __init__(
        self,
        ws: WebSocket,
        *,
        protocol_version: Callable[[], int],
        uplink: trio.MemorySendChannel[OpusPacket | UplinkControl],
        inbox: trio.MemorySendChannel[Abort | TypedText],
        wake_words: WakeWords,
        bad_input: BadInput,
        repeat_hello: Callable[[], Awaitable[None]],
        mcp: McpClient | None,
    ) -> None:
        self._ws = ws
        self._protocol_version = protocol_version
        self._uplink = uplink
        self._inbox = inbox
        self._wake_words = wake_words
        self._bad_input = bad_input
        self._repeat_hello = repeat_hello
        self._mcp = mcp

    async def run(self) -> None:
        """Route every message; return when the device disconnects."""
        while True:
            try:
                message = await self._ws.get_message()
            except ConnectionClosed:
                return
            if isinstance(message, bytes):
                await self.on_binary(message)
            else:
                await self.on_text(message)

    async def on_binary(self, message: bytes) -> None:
        try:
            frame = unpack(self._protocol_version(), message)
        except FramingError as e:
            self._bad_input.warn("bad_frame", f"binary message ignored: {e}")
            return
        if isinstance(frame, JsonFrame):
            await self.on_text(frame.text)
            return
        try:
            self._uplink.send_nowait(frame)
        except trio.WouldBlock:
            self._bad_input.warn("uplink_overflow", "uplink queue full; audio packet dropped")

    async def on_text(self, text: str) -> None:
        try:
            control = dm.parse_control(text)
        except ProtocolError as e:
            self._bad_input.warn("bad_message", f"text message ignored: {e}: {text[:200]!r}")
            return
        match control:
            case DeviceHello():
                self._bad_input.warn("second_hello", "second hello on one connection; repeating the server hello")
                await self._repeat_hello()
            case Abort():
                await self._inbox.send(control)
            case WakeWordDetected():
                routed = self._wake_words.classify(control)
                await (self._inbox.send(routed) if isinstance(routed, TypedText) else self._uplink.send(routed))
            case McpMessage(payload=payload):
                if self._mcp is None:
                    self._bad_input.warn("mcp_unexpected", "mcp message but no MCP client for this device; ignored")
                else:
                    self._mcp.feed(payload)
            case _:
                await self._uplink.send(control)

"""The one way out to the device: serialized, framed, time-bounded writes.

Every stage that talks to the device goes through one ``Outbox``, so frames never interleave and
order is the order of the calls. A write is shielded from cancellation (a half-written WebSocket
frame would corrupt the connection), so it is bounded by ``send_timeout`` instead: a device that
stops reading gets ``DeviceNotReading`` and its session ends.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import trio

from ..audio.framing import pack
from ..messages import OpusPacket
from ..protocol import device_messages

SendMessage = Callable[[str | bytes], Awaitable[None]]


class DeviceNotReading(Exception):
    """A write to the device did not complete within the send timeout."""


class Outbox:
    def __init__(self, send_message: SendMessage, *, protocol_version: int, send_timeout: float) -> None:
        self._send_message = send_message
        #: The binary framing version (settled by the handshake, or by the hello).
        self.protocol_version = protocol_version
        self._timeout = send_timeout
        self._lock = trio.Lock()
        #: trio time of the last completed write (for keepalives).
        self.last_sent_at = trio.current_time()
        self._broken: DeviceNotReading | None = None

    async def _write(self, message: str | bytes) -> None:
        if self._broken is not None:
            # A write cut off half-way leaves the stream unusable: fail fast from then on.
            raise self._broken
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + self._timeout
            async with self._lock:
                await self._send_message(message)
        if scope.cancelled_caught:
            self._broken = DeviceNotReading(f"the device read nothing for {self._timeout:g} s")
            raise self._broken
        self.last_sent_at = trio.current_time()

    async def send_json(self, message: dict[str, Any]) -> None:
        await self._write(device_messages.encode(message))

    async def send_audio(self, packet: OpusPacket) -> None:
        await self._write(pack(self.protocol_version, packet))

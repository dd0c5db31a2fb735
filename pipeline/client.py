"""A device from software: speaks the firmware's side of the protocol to any Xiaozhi server.

Used by ``xiaozhi-trio talk`` (to check a deployment without hardware), by the tests and by the
benchmarks. It sends what the firmware sends (headers, hello, listen, Opus in the negotiated
framing) and reads a reply the way the firmware plays it: audio only between ``tts start`` and
``tts stop``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import trio
from trio_websocket import WebSocketConnection, open_websocket_url

from .audio.framing import JsonFrame, pack, unpack
from .audio.opus import OpusDecoder, OpusEncoder
from .messages import OpusPacket, PcmChunk, Samples

UPLINK_RATE = 16000

#: Answers the server's MCP requests as the device's MCP server would: payload in, replies out.
McpHandler = Callable[[dict[str, Any]], list[dict[str, Any]]]


@dataclass
class Reply:
    """What the device received for one turn, with trio times of the milestones."""

    stt: str | None = None
    sentences: list[str] = field(default_factory=list)
    emotions: list[str] = field(default_factory=list)
    packets: list[bytes] = field(default_factory=list)
    #: Audio that arrived outside tts start/stop (the firmware drops it; a correct server sends none).
    stray_packets: int = 0
    messages: list[dict[str, Any]] = field(default_factory=list)
    stt_at: float | None = None
    tts_start_at: float | None = None
    first_audio_at: float | None = None
    tts_stop_at: float | None = None
    packet_times: list[float] = field(default_factory=list)

    def audio(self, sample_rate: int) -> PcmChunk:
        """The reply's audio, decoded as the device would."""
        decoder = OpusDecoder(sample_rate)
        parts = [decoder.decode(p) for p in self.packets]
        samples = np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
        return PcmChunk(samples.astype(np.float32, copy=False), sample_rate)


class DeviceClient:
    """One device connection. Create with ``connect()`` or around an open WebSocket."""

    def __init__(self, ws: WebSocketConnection, *, protocol_version: int = 1, frame_ms: int = 60, device_id: str = "") -> None:
        self.ws = ws
        self.protocol_version = protocol_version
        self.frame_ms = frame_ms
        self.device_id = device_id
        self.session_id = ""
        self.server_hello: dict[str, Any] = {}
        self.mcp_handler: McpHandler | None = None
        self._speaking = False

    @property
    def downlink_rate(self) -> int:
        return int(self.server_hello.get("audio_params", {}).get("sample_rate", 24000))

    # ---- sending -------------------------------------------------------------------------------

    async def send_json(self, message: dict[str, Any]) -> None:
        if self.session_id and "session_id" not in message:
            message = {"session_id": self.session_id, **message}
        await self.ws.send_message(json.dumps(message, ensure_ascii=False))

    async def hello(self, *, features: dict[str, Any] | None = None, timeout: float = 10.0) -> dict[str, Any]:
        """Send the firmware's hello and wait for the server's (``TimeoutError`` after ``timeout``).

        The hello claims MCP only when ``mcp_handler`` is set to answer the server's requests."""
        await self.ws.send_message(
            json.dumps(
                {
                    "type": "hello",
                    "version": self.protocol_version,
                    "features": features if features is not None else ({"mcp": True} if self.mcp_handler else {}),
                    "transport": "websocket",
                    "audio_params": {"format": "opus", "sample_rate": UPLINK_RATE, "channels": 1, "frame_duration": self.frame_ms},
                }
            )
        )
        with trio.fail_after(timeout):
            while True:
                message = await self.ws.get_message()
                if isinstance(message, str):
                    data = json.loads(message)
                    if data.get("type") == "hello":
                        self.server_hello = data
                        self.session_id = data.get("session_id", "")
                        return data

    async def listen_start(self, mode: str = "auto") -> None:
        await self.send_json({"type": "listen", "state": "start", "mode": mode})

    async def listen_stop(self) -> None:
        await self.send_json({"type": "listen", "state": "stop"})

    async def wake_word(self, text: str) -> None:
        await self.send_json({"type": "listen", "state": "detect", "text": text})

    async def send_text(self, text: str) -> None:
        """A typed message, as browser and desktop clients send it (``listen detect`` with text
        that is not a wake word)."""
        await self.send_json({"type": "listen", "state": "detect", "text": text})

    async def abort(self, reason: str = "") -> None:
        await self.send_json({"type": "abort", **({"reason": reason} if reason else {})})

    def encode(self, samples: Samples) -> list[bytes]:
        """16 kHz PCM → uplink Opus packets of ``frame_ms`` (the tail padded with silence)."""
        encoder = OpusEncoder(UPLINK_RATE, self.frame_ms, 24000)
        return encoder.encode(samples) + encoder.flush()

    async def send_packets(self, packets: list[bytes], *, realtime: bool = True) -> None:
        """Send Opus packets in the negotiated framing, one per frame time if ``realtime``."""
        start = trio.current_time()
        for index, packet in enumerate(packets):
            if realtime:
                await trio.sleep_until(start + index * self.frame_ms / 1000)
            await self.ws.send_message(pack(self.protocol_version, OpusPacket(packet, timestamp_ms=index * self.frame_ms)))

    async def speak(self, samples: Samples, *, trailing_silence: float = 1.0, realtime: bool = True) -> float:
        """Say ``samples`` (16 kHz) then stay quiet for ``trailing_silence`` s, as a microphone
        would. Returns the trio time of the last voiced packet."""
        voiced = self.encode(samples)
        await self.send_packets(voiced, realtime=realtime)
        spoken_at = trio.current_time()
        silence = self.encode(np.zeros(int(trailing_silence * UPLINK_RATE), dtype=np.float32))
        await self.send_packets(silence, realtime=realtime)
        return spoken_at

    async def ask(self, samples: Samples, *, mode: str = "auto", trailing_silence: float = 1.0, timeout: float = 60.0) -> tuple[Reply, float]:
        """Say ``samples`` in ``mode`` and read the reply while still streaming the microphone's
        silence, as the firmware does. Returns the reply and the trio time speech ended."""
        reply = Reply()
        spoken_at = 0.0
        async with trio.open_nursery() as nursery:

            async def talk() -> None:
                nonlocal spoken_at
                if mode == "manual":
                    await self.send_packets(self.encode(samples))
                    spoken_at = trio.current_time()
                    await self.listen_stop()
                else:
                    spoken_at = await self.speak(samples, trailing_silence=trailing_silence)

            await self.listen_start(mode)
            nursery.start_soon(talk)
            with trio.fail_after(timeout):
                await self.receive_reply(reply)
            nursery.cancel_scope.cancel()
        return reply, spoken_at

    # ---- receiving -----------------------------------------------------------------------------

    async def receive(self) -> dict[str, Any] | OpusPacket:
        """The next message: a JSON object or a downlink Opus packet. MCP requests are answered
        by ``mcp_handler`` (if set) and also returned."""
        message = await self.ws.get_message()
        if isinstance(message, bytes):
            frame = unpack(self.protocol_version, message)
            if isinstance(frame, JsonFrame):
                message = frame.text
            else:
                return frame
        data = json.loads(message)
        if data.get("type") == "mcp" and self.mcp_handler is not None:
            for answer in self.mcp_handler(data.get("payload")):
                await self.send_json({"type": "mcp", "payload": answer})
        return data

    async def receive_reply(self, reply: Reply | None = None) -> Reply:
        """Read until ``tts stop``, collecting the reply the way the firmware plays it."""
        reply = reply or Reply()
        while True:
            item = await self.receive()
            now = trio.current_time()
            if isinstance(item, OpusPacket):
                if not self._speaking:
                    reply.stray_packets += 1
                    continue
                reply.packets.append(item.data)
                reply.packet_times.append(now)
                if reply.first_audio_at is None:
                    reply.first_audio_at = now
                continue
            reply.messages.append(item)
            match item.get("type"), item.get("state"):
                case "stt", _:
                    reply.stt, reply.stt_at = item.get("text"), now
                case "llm", _:
                    reply.emotions.append(item.get("emotion", ""))
                case "tts", "start":
                    self._speaking = True
                    reply.tts_start_at = now
                case "tts", "sentence_start":
                    reply.sentences.append(item.get("text", ""))
                case "tts", "stop":
                    self._speaking = False
                    reply.tts_stop_at = now
                    return reply


@asynccontextmanager
async def connect(
    url: str,
    *,
    device_id: str = "02:00:00:00:00:01",
    client_id: str = "00000000-0000-4000-8000-000000000001",
    protocol_version: int = 1,
    token: str | None = None,
    frame_ms: int = 60,
) -> AsyncIterator[DeviceClient]:
    """Open a device connection with the firmware's handshake headers."""
    headers = [
        (b"Protocol-Version", str(protocol_version).encode()),
        (b"Device-Id", device_id.encode()),
        (b"Client-Id", client_id.encode()),
    ]
    if token:
        headers.append((b"Authorization", (token if " " in token else f"Bearer {token}").encode()))
    async with open_websocket_url(url, extra_headers=headers) as ws:
        yield DeviceClient(ws, protocol_version=protocol_version, frame_ms=frame_ms, device_id=device_id)

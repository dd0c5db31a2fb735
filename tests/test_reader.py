"""Reading and routing the device's messages (without a socket)."""

from __future__ import annotations

import json
import logging

import trio
from trio_websocket import ConnectionClosed

from xiaozhi_trio.pipeline.audio.framing import pack
from xiaozhi_trio.pipeline.messages import Abort, ListenStart, OpusPacket, TypedText, WakeWordDetected
from xiaozhi_trio.pipeline.session.bad_input import BadInput
from xiaozhi_trio.pipeline.session.reader import DeviceReader, WakeWords


class ScriptedSocket:
    """Hands out the given messages, then reports the connection closed."""

    def __init__(self, messages: list[str | bytes]) -> None:
        self.messages = list(messages)

    async def get_message(self) -> str | bytes:
        await trio.lowlevel.checkpoint()
        if not self.messages:
            raise ConnectionClosed(None)
        return self.messages.pop(0)

    async def send_message(self, message: str | bytes) -> None:
        raise AssertionError("the reader never writes")


def _reader(messages, uplink_size: int, reports: list[tuple[str, str]]):
    uplink_send, uplink_receive = trio.open_memory_channel(uplink_size)
    inbox_send, inbox_receive = trio.open_memory_channel(10)

    async def no_hello() -> None:
        raise AssertionError("no hello expected")

    reader = DeviceReader(
        ScriptedSocket(messages),
        protocol_version=lambda: 2,
        uplink=uplink_send,
        inbox=inbox_send,
        wake_words=WakeWords(["你好小智"]),
        bad_input=BadInput(logging.getLogger("test"), lambda kind, message: reports.append((kind, message))),
        repeat_hello=no_hello,
        mcp=None,
    )
    return reader, uplink_receive, inbox_receive


async def test_a_full_uplink_drops_new_audio_and_still_sees_abort():
    packets = [OpusPacket(bytes([i + 1]) * 3, timestamp_ms=i * 60) for i in range(7)]
    messages = [pack(2, p) for p in packets] + [json.dumps({"type": "abort"})]
    reports: list[tuple[str, str]] = []
    reader, uplink, inbox = _reader(messages, uplink_size=4, reports=reports)
    with trio.fail_after(1):
        await reader.run()  # never blocks on the full uplink
    queued = [uplink.receive_nowait() for _ in range(4)]
    assert queued == packets[:4]  # the oldest are kept, in order
    assert [kind for kind, _ in reports] == ["uplink_overflow"] * 3
    assert inbox.receive_nowait() == Abort()


async def test_detect_is_routed_by_its_text():
    messages = [
        json.dumps({"type": "listen", "state": "start", "mode": "auto"}),
        json.dumps({"type": "listen", "state": "detect", "text": "你好小智"}),
        json.dumps({"type": "listen", "state": "detect", "text": "  turn on the light "}),
    ]
    reader, uplink, inbox = _reader(messages, uplink_size=10, reports=[])
    await reader.run()
    assert [uplink.receive_nowait(), uplink.receive_nowait()] == [ListenStart("auto"), WakeWordDetected("你好小智")]
    assert inbox.receive_nowait() == TypedText("turn on the light")


async def test_bad_frames_and_messages_are_reported_and_skipped():
    reports: list[tuple[str, str]] = []
    reader, uplink, _ = _reader([b"", "{oops", pack(2, OpusPacket(b"\x05"))], uplink_size=10, reports=reports)
    await reader.run()
    assert [kind for kind, _ in reports] == ["bad_frame", "bad_message"]
    assert uplink.receive_nowait() == OpusPacket(b"\x05")

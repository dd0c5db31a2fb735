"""The outbox: serialized, framed, shielded and time-bounded writes to the device."""

from __future__ import annotations

import json

import pytest
import trio

from xiaozhi_trio.pipeline.audio.framing import pack
from xiaozhi_trio.pipeline.messages import OpusPacket
from xiaozhi_trio.pipeline.protocol.outbox import DeviceNotReading, Outbox


class Wire:
    """A connection whose writes take ``write_seconds`` each and can stall forever."""

    def __init__(self, write_seconds: float = 0.0) -> None:
        self.write_seconds = write_seconds
        self.stalled = False
        self.sent: list[str | bytes] = []
        self.writing = 0
        self.most_at_once = 0

    async def send_message(self, message: str | bytes) -> None:
        self.writing += 1
        self.most_at_once = max(self.most_at_once, self.writing)
        try:
            if self.stalled:
                await trio.sleep_forever()
            await trio.sleep(self.write_seconds)
            self.sent.append(message)
        finally:
            self.writing -= 1


@pytest.mark.parametrize("version", [1, 2, 3])
async def test_writes_are_framed_and_in_call_order(autojump_clock, version):
    wire = Wire()
    outbox = Outbox(wire.send_message, protocol_version=version, send_timeout=5)
    packet = OpusPacket(b"\x01\x02\x03", timestamp_ms=60)
    await outbox.send_json({"type": "tts", "state": "start"})
    await outbox.send_audio(packet)
    assert json.loads(wire.sent[0]) == {"type": "tts", "state": "start"}
    assert wire.sent[1] == pack(version, packet)


async def test_concurrent_writers_never_interleave(autojump_clock):
    wire = Wire(write_seconds=0.01)
    outbox = Outbox(wire.send_message, protocol_version=1, send_timeout=5)
    async with trio.open_nursery() as nursery:
        for i in range(10):
            nursery.start_soon(outbox.send_json, {"n": i})
    assert wire.most_at_once == 1
    assert sorted(json.loads(m)["n"] for m in wire.sent) == list(range(10))


async def test_a_cancelled_writer_still_completes_its_frame(autojump_clock):
    wire = Wire(write_seconds=1.0)
    outbox = Outbox(wire.send_message, protocol_version=1, send_timeout=5)
    with trio.move_on_after(0.1):
        await outbox.send_json({"type": "stt"})
    assert [json.loads(m) for m in wire.sent] == [{"type": "stt"}]  # shielded: the whole frame went out


async def test_a_device_that_stops_reading_fails_the_write_then_fails_fast(autojump_clock):
    wire = Wire()
    outbox = Outbox(wire.send_message, protocol_version=1, send_timeout=5)
    await outbox.send_json({"n": 1})
    assert outbox.last_sent_at == 0
    wire.stalled = True
    with pytest.raises(DeviceNotReading, match="read nothing for 5 s"):
        await outbox.send_json({"n": 2})
    assert trio.current_time() == pytest.approx(5)
    wire.stalled = False
    with pytest.raises(DeviceNotReading):
        await outbox.send_audio(OpusPacket(b"\x01"))
    assert trio.current_time() == pytest.approx(5)  # no second wait: the stream is unusable
    assert len(wire.sent) == 1


async def test_last_sent_at_follows_completed_writes(autojump_clock):
    wire = Wire(write_seconds=0.5)
    outbox = Outbox(wire.send_message, protocol_version=1, send_timeout=5)
    await trio.sleep(3)
    await outbox.send_json({})
    assert outbox.last_sent_at == pytest.approx(3.5)

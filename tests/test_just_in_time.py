"""Just-in-time synthesis: a long reply is synthesized only as far ahead of playback as the lead.

The reply's real stages (TTS, encoder, paced sender) run on a tone synthesizer and a socket that
takes every write; what the device has queued is the pacer's model of it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest
import trio
import trio.testing
from xiaozhi_trio.pipeline.audio.opus import OpusEncoder
from xiaozhi_trio.pipeline.messages import EncodedOutput, PcmChunk, Sentence, SpeechOutput
from xiaozhi_trio.pipeline.protocol.outbox import Outbox
from xiaozhi_trio.pipeline.stages.encoder import encode_speech
from xiaozhi_trio.pipeline.stages.pacing import Pacer, Runway
from xiaozhi_trio.pipeline.stages.sender import Sent, send_reply
from xiaozhi_trio.pipeline.stages.tts import synthesize

from xiaozhi_trio.plugins.testing.fakes.backends import FakeTts
from xiaozhi_trio.plugins.testing.harness import InlineWorkers

#: 20 sentences of 60 characters: 1.2 s of the fake voice each, 24 s in all.
STORY = [f"Sentence {i:02d} of the story goes on and on about the dragon." for i in range(20)]


@dataclass
class WatchedTts(FakeTts):
    """Notes how much of the reply was ready ahead of playback whenever a sentence starts."""

    runway: Runway | None = None
    ahead_at_start: list[float] = field(default_factory=list)

    async def synthesize(self, text: str, send: trio.MemorySendChannel[PcmChunk]) -> None:
        assert self.runway is not None
        self.ahead_at_start.append(self.runway.ahead(trio.current_time()))
        await super().synthesize(text, send)


async def tell_the_story(lead: float) -> tuple[WatchedTts, list[Sent]]:
    pacer = Pacer(0.06, 0.18)
    runway = Runway(pacer)
    tts = WatchedTts(chunk_delay=0.01)
    tts.runway = runway
    sent: list[Sent] = []

    async def socket(message: str | bytes) -> None:
        pass

    outbox = Outbox(socket, protocol_version=1, send_timeout=10)
    sentence_send, sentence_receive = trio.open_memory_channel[Sentence](math.inf)
    speech_send, speech_receive = trio.open_memory_channel[SpeechOutput](0)
    packet_send, packet_receive = trio.open_memory_channel[EncodedOutput](256)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: synthesize(
            sentence_receive, speech_send, tts, 24000, runway, lead=lead, on_sentence=lambda s: None, on_error=pytest.fail,
        ))
        nursery.start_soon(encode_speech, speech_receive, packet_send, OpusEncoder(24000, 60, 24000), InlineWorkers(), runway)
        nursery.start_soon(send_reply, packet_receive, outbox, pacer, "s", sent.append)
        with sentence_send:
            for text in STORY:
                sentence_send.send_nowait(Sentence(text))
    return tts, sent


async def test_a_long_reply_is_never_synthesized_more_than_the_lead_ahead(autojump_clock: trio.testing.MockClock) -> None:
    tts, sent = await tell_the_story(lead=3.0)
    assert tts.spoken == STORY
    assert max(tts.ahead_at_start) <= 3.0
    # ...and yet never ran dry: every sentence after the first started with audio still queued.
    assert min(tts.ahead_at_start[1:]) > 0.5
    assert sent.count(Sent.AUDIO_PACKET) * 0.06 == pytest.approx(24.0, abs=0.06 * len(STORY))


async def test_without_the_lead_the_whole_story_is_made_at_once(autojump_clock: trio.testing.MockClock) -> None:
    """The check above can fail: with no lead, synthesis runs as far ahead as the queues allow."""
    tts, _ = await tell_the_story(lead=math.inf)
    assert max(tts.ahead_at_start) > 10.0

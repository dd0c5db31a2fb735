"""What every TTS backend must do, as one suite shared by all of them.

A test module subclasses :class:`TtsContract` and provides a ``tts`` fixture (one loaded backend;
module- or session-scoped, since models are slow to load) and ``speakable`` (a short sentence in a
language the voice speaks). Every test here then runs against that backend.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import trio
from xiaozhi_trio.pipeline.backends import SpeechSynthesizer
from xiaozhi_trio.pipeline.messages import PcmChunk


async def speak(tts: SpeechSynthesizer, text: str) -> list[PcmChunk]:
    """All chunks ``tts`` makes for ``text``, checking it leaves the channel open."""
    send, receive = trio.open_memory_channel[PcmChunk](math.inf)
    await tts.synthesize(text, send)
    send.send_nowait(
        PcmChunk.silence(0.01, 16000)
    )  # raises if synthesize closed the channel
    with send:
        pass
    chunks = [chunk async for chunk in receive]
    return chunks[:-1]


class TtsContract:
    """Subclass with fixtures ``tts`` and ``speakable``."""

    @pytest.fixture
    def speakable(self) -> str:
        return "Hello, how are you today?"

    async def test_sample_rate_is_a_positive_whole_number(
        self, tts: SpeechSynthesizer
    ) -> None:
        assert isinstance(tts.sample_rate, int) and 8000 <= tts.sample_rate <= 48000

    async def test_speech_comes_out_as_float_chunks_at_the_sample_rate(
        self, tts: SpeechSynthesizer, speakable: str
    ) -> None:
        chunks = await speak(tts, speakable)
        assert chunks, "no audio for a plain sentence"
        for chunk in chunks:
            assert isinstance(chunk, PcmChunk) and chunk.sample_rate == tts.sample_rate
            assert chunk.samples.dtype == np.float32 and chunk.samples.ndim == 1
            assert (
                np.all(np.isfinite(chunk.samples))
                and np.max(np.abs(chunk.samples)) <= 1.5
            )
        audio = PcmChunk.join(chunks, tts.sample_rate)
        assert 0.4 < audio.duration < 8.0
        assert float(np.sqrt(np.mean(audio.samples**2))) > 0.01, (
            "the audio is (nearly) silent"
        )

    @pytest.mark.parametrize("text", ["", "   ", "\n", "...", "!?", "—"])
    async def test_nothing_to_say_gives_no_audio_and_no_error(
        self, tts: SpeechSynthesizer, text: str
    ) -> None:
        assert await speak(tts, text) == []

    async def test_a_cancelled_synthesis_leaves_the_backend_ready(
        self, tts: SpeechSynthesizer, speakable: str
    ) -> None:
        # No buffer: after the first piece the backend waits to hand on the next, so it is still
        # working (not finished) when the barge-in comes, however fast the machine is.
        send, receive = trio.open_memory_channel[PcmChunk](0)
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(tts.synthesize, " ".join([speakable] * 4), send)
                await receive.receive()  # barge-in as soon as the first audio arrives
                scope.cancel()
        assert scope.cancelled_caught
        assert await speak(tts, speakable)

    async def test_sessions_can_speak_at_the_same_time(
        self, tts: SpeechSynthesizer, speakable: str
    ) -> None:
        results: dict[int, list[PcmChunk]] = {}

        async def one(i: int) -> None:
            results[i] = await speak(tts, speakable)

        async with trio.open_nursery() as nursery:
            for i in range(3):
                nursery.start_soon(one, i)
        assert all(results[i] for i in range(3))

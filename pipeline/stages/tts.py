"""Stage: sentences → audio at the downlink rate, framed by sentence marks."""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from ..audio.resample import StreamResampler
from ..backends import BackendError, SpeechSynthesizer
from ..messages import Emotion, PcmChunk, Sentence, SentenceEnd, SentenceStart, SpeechOutput
from ..workers import work_urgency
from .pacing import Runway

log = logging.getLogger(__name__)


async def synthesize(
    receive: trio.MemoryReceiveChannel[Sentence | Emotion],
    send: trio.MemorySendChannel[SpeechOutput],
    tts: SpeechSynthesizer,
    output_rate: int,
    runway: Runway,
    *,
    lead: float,
    on_sentence: Callable[[Sentence], None],
    on_error: Callable[[BackendError], None],
) -> None:
    """Speak each sentence as its audio is produced (chunk by chunk, resampled on the fly).

    Just in time: a sentence is only started once less than ``lead`` seconds of the reply are
    ready ahead of the device's playback, so a long story holds neither a worker nor memory for
    audio nobody hears yet (and a barge-in throws little work away). Its synthesis is due when
    ``runway`` says: the first at once, later ones when the device would otherwise run dry.
    A sentence that fails to synthesize is still shown on the device (its marks go out without
    audio); the reply goes on with the next sentence.
    """
    with receive, send:
        async for item in receive:
            if isinstance(item, Emotion):
                await send.send(item)
                continue
            await _wait_for_room(runway, lead)
            on_sentence(item)
            await send.send(SentenceStart(item.text))
            try:
                with work_urgency(runway.urgency(trio.current_time())):
                    await _speak(item.text, tts, output_rate, send)
            except* BackendError as group:
                on_error(group.exceptions[0])  # type: ignore[arg-type]
            await send.send(SentenceEnd(item.text))


async def _wait_for_room(runway: Runway, lead: float) -> None:
    """Sleep until less than ``lead`` seconds of audio are ready ahead of playback."""
    while (ahead := runway.ahead(trio.current_time())) > lead:
        await trio.sleep(max(ahead - lead, 0.01))  # (a float remainder must not spin)


async def _speak(text: str, tts: SpeechSynthesizer, output_rate: int, send: trio.MemorySendChannel[SpeechOutput]) -> None:
    chunks_send, chunks_receive = trio.open_memory_channel[PcmChunk](8)
    resampler = StreamResampler(tts.sample_rate, output_rate)

    async def run_tts() -> None:
        with chunks_send:
            await tts.synthesize(text, chunks_send)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_tts)
        with chunks_receive:
            async for chunk in chunks_receive:
                if chunk.sample_rate != tts.sample_rate:
                    raise BackendError(f"TTS produced {chunk.sample_rate} Hz audio but declared {tts.sample_rate} Hz", kind="tts")
                samples = resampler.process(chunk.samples)
                if len(samples):
                    await send.send(PcmChunk(samples, output_rate))
    tail = resampler.flush()
    if len(tail):
        await send.send(PcmChunk(tail, output_rate))

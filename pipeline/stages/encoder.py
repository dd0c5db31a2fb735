"""Stage: downlink PCM → Opus packets of exactly one frame each; marks pass through in order."""

from __future__ import annotations

from collections.abc import Callable

import trio

from ..audio.opus import OpusEncoder
from ..messages import EncodedOutput, OpusPacket, PcmChunk, SentenceEnd, SpeechOutput
from ..workers import CpuWorkers
from .pacing import Runway


async def encode_speech(
    receive: trio.MemoryReceiveChannel[SpeechOutput],
    send: trio.MemorySendChannel[EncodedOutput],
    encoder: OpusEncoder,
    workers: CpuWorkers,
    runway: Runway,
    tap: Callable[[PcmChunk], None] | None = None,
) -> None:
    """Encode in worker threads (a sentence of audio is a few ms of CPU). At each sentence end
    the last partial frame is padded with silence, so a sentence's audio ends before its mark.

    The encoder belongs to this turn alone: after a cancel its abandoned thread may still touch it.
    Each encode is due when ``runway`` says (the first at once); ``tap`` sees every chunk of
    audio on its way in (for recordings).
    """
    with receive, send:
        async for item in receive:
            match item:
                case PcmChunk(samples=samples):
                    if tap is not None:
                        tap(item)
                    urgency = runway.urgency(trio.current_time())
                    packets = await workers.run(encoder.encode, samples, urgency=urgency)
                case SentenceEnd():
                    packets = encoder.flush()
                case _:
                    packets = []
            runway.made(len(packets))
            for data in packets:
                await send.send(OpusPacket(data))
            if not isinstance(item, PcmChunk):
                await send.send(item)

"""Stage: the turn's encoded reply → the device, paced, with the ``tts`` and ``llm`` messages."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import trio

from ..messages import EncodedOutput, Emotion, OpusPacket, SentenceEnd, SentenceStart
from ..protocol import device_messages as dm
from ..session.outbox import Outbox
from .pacing import Pacer


@dataclass
class ReplyProgress:
    """What one turn has sent so far (read by the session after the turn ends)."""

    tts_started: bool = False
    sentences: int = 0
    packets: int = 0
    first_audio_at: float | None = None


async def send_reply(
    receive: trio.MemoryReceiveChannel[EncodedOutput],
    outbox: Outbox,
    pacer: Pacer,
    session_id: str,
    progress: ReplyProgress,
    on_first_audio: Callable[[], None],
) -> None:
    """Send ``tts start`` before the first item, then sentence marks, emotions and paced audio.

    ``tts stop`` is the session's job: it must follow the last packet even when the turn is
    cancelled half-way.
    """
    with receive:
        async for item in receive:
            if not progress.tts_started and not isinstance(item, Emotion):
                await outbox.send_json(dm.tts(session_id, "start"))
                progress.tts_started = True
            match item:
                case OpusPacket():
                    await trio.sleep(pacer.delay(trio.current_time()))
                    await outbox.send_audio(item)
                    pacer.sent(trio.current_time())
                    progress.packets += 1
                    if progress.first_audio_at is None:
                        progress.first_audio_at = trio.current_time()
                        on_first_audio()
                case SentenceStart(text=text):
                    progress.sentences += 1
                    await outbox.send_json(dm.tts(session_id, "sentence_start", text))
                case SentenceEnd(text=text):
                    await outbox.send_json(dm.tts(session_id, "sentence_end", text))
                case Emotion(name=name, emoji=emoji):
                    await outbox.send_json(dm.llm_emotion(session_id, name, emoji))

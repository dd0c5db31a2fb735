"""Stage: the turn's encoded reply → the device, paced, with the ``tts`` and ``llm`` messages."""

from __future__ import annotations

import enum
from collections.abc import Callable

import trio

from ..messages import EncodedOutput, Emotion, OpusPacket, SentenceEnd, SentenceStart
from ..protocol import device_messages as dm
from ..protocol.outbox import Outbox
from .pacing import Pacer


class Sent(enum.Enum):
    """What ``send_reply`` reports after each write that counts for the turn's summary."""

    TTS_START = "tts start"
    SENTENCE_START = "sentence start"
    AUDIO_PACKET = "audio packet"


async def send_reply(
    receive: trio.MemoryReceiveChannel[EncodedOutput],
    outbox: Outbox,
    pacer: Pacer,
    session_id: str,
    on_sent: Callable[[Sent], None],
) -> None:
    """Send ``tts start`` before the first item, then sentence marks, emotions and paced audio.

    ``tts stop`` is the session's job: it must follow the last packet even when the turn is
    cancelled half-way.
    """
    tts_started = False
    with receive:
        async for item in receive:
            if not tts_started and not isinstance(item, Emotion):
                await outbox.send_json(dm.tts(session_id, "start"))
                tts_started = True
                on_sent(Sent.TTS_START)
            match item:
                case OpusPacket():
                    await trio.sleep(pacer.delay(trio.current_time()))
                    await outbox.send_audio(item)
                    pacer.sent(trio.current_time())
                    on_sent(Sent.AUDIO_PACKET)
                case SentenceStart(text=text):
                    await outbox.send_json(dm.tts(session_id, "sentence_start", text))
                    on_sent(Sent.SENTENCE_START)
                case SentenceEnd(text=text):
                    await outbox.send_json(dm.tts(session_id, "sentence_end", text))
                case Emotion(name=name, emoji=emoji):
                    await outbox.send_json(dm.llm_emotion(session_id, name, emoji))

"""Stage: utterances → transcripts. Controls and utterance-start notices pass through in order."""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from ..backends import BackendError, RecognitionStream, SpeechRecognizer
from ..messages import (
    PcmChunk,
    RecognitionFailed,
    SpeechAudio,
    SpeechEnded,
    Transcript,
    UplinkControl,
    UtteranceStarted,
)
from ..scheduling import LISTENING, SPEECH_END, Urgency
from ..workers import work_urgency
from .listen import UtteranceOutput

log = logging.getLogger(__name__)

RecognizerOutput = UtteranceStarted | Transcript | RecognitionFailed | UplinkControl


async def recognize(
    receive: trio.MemoryReceiveChannel[UtteranceOutput],
    send: trio.MemorySendChannel[RecognizerOutput],
    recognizer: SpeechRecognizer,
    on_speech_end: Callable[[SpeechEnded], None],
) -> None:
    """Feed each utterance to a recognition stream; hand on the final text when it ends.

    Streaming recognizers decode while the user speaks, so the text is ready as speech ends;
    offline ones decode the whole utterance in ``finish``. Partial text is not passed on: nothing
    acts on it yet. The final decode is due at once (the user is waiting); decoding while the user
    speaks only has to keep up with the audio.
    """
    stream: RecognitionStream | None = None
    with receive, send:
        async for item in receive:
            try:
                match item:
                    case UtteranceStarted(audio=audio):
                        await send.send(item)  # the controller may barge in on it
                        stream = recognizer.open_stream()
                        await _accept(stream, audio)
                    case SpeechAudio(audio=audio):
                        if stream is not None:
                            await _accept(stream, audio)
                    case SpeechEnded(audio=audio):
                        ended_at = trio.current_time()
                        on_speech_end(item)
                        current, stream = stream or recognizer.open_stream(), None
                        with work_urgency(Urgency(ended_at, SPEECH_END)):
                            text = (await current.finish(audio)).strip()
                        await send.send(Transcript(text, ended_at, audio))
                    case _:
                        await send.send(item)
            except BackendError as e:
                stream = None
                log.warning("speech recognition failed (%s): %s", e.kind, e)
                await send.send(RecognitionFailed(e.kind, str(e)))


async def _accept(stream: RecognitionStream, audio: PcmChunk) -> str | None:
    """Feed speech in progress; due before the next piece of audio arrives."""
    with work_urgency(Urgency(trio.current_time() + audio.duration, LISTENING)):
        return await stream.accept(audio)

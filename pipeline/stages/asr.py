"""Stage: utterances → transcripts. Controls and utterance-start notices pass through in order.

Speculative recognition: when the user pauses (``SpeechPaused``) an offline recognizer starts
decoding the utterance so far while the turn detector decides. If the turn ends there, the text
is ready (or nearly); if the user speaks on (``SpeechResumed``), that decode is cancelled and the
whole utterance is decoded when it ends. Streaming recognizers decode as the audio arrives, so
their running result is used instead.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import trio

from ..backends import BackendError, RecognitionStream, SpeechRecognizer
from ..messages import (
    PcmChunk,
    RecognitionFailed,
    SpeechAudio,
    SpeechEnded,
    SpeechPaused,
    SpeechProgress,
    SpeechResumed,
    Transcript,
    UplinkControl,
    UtteranceStarted,
)
from ..scheduling import LISTENING, SPEECH_END, Urgency
from ..workers import work_urgency
from .listen import UtteranceOutput

log = logging.getLogger(__name__)

RecognizerOutput = UtteranceStarted | SpeechProgress | Transcript | RecognitionFailed | UplinkControl


class VoiceMeter:
    """Voiced seconds of an utterance: 20 ms frames within 20 dB of its loudest frame so far
    (the VAD has already judged it speech; this leaves out its pre-roll and trailing silence)."""

    FRAME = 0.02
    RANGE = 0.1  # -20 dB in RMS

    def __init__(self) -> None:
        self.loudest = 0.01
        self.seconds = 0.0

    def feed(self, audio: PcmChunk) -> float:
        size = max(1, round(self.FRAME * audio.sample_rate))
        count = len(audio.samples) // size
        if count:
            frames = audio.samples[: count * size].reshape(count, size)
            levels = np.sqrt(np.mean(frames.astype(np.float64) ** 2, axis=1))
            self.loudest = max(self.loudest, float(levels.max()))
            self.seconds += float(np.count_nonzero(levels >= self.RANGE * self.loudest)) * size / audio.sample_rate
        return self.seconds


class Speculation:
    """A decode of the utterance as it was at a pause, running beside the turn decision."""

    def __init__(self, audio: PcmChunk) -> None:
        self.samples = len(audio.samples)
        self._audio = audio
        self._scope = trio.CancelScope()
        self._done = trio.Event()
        self._text: str | None = None
        self._error: BackendError | None = None

    async def run(self, recognizer: SpeechRecognizer) -> None:
        with self._scope:
            try:
                # Due now: if the turn ends at this pause, the user is already waiting for it.
                with work_urgency(Urgency(trio.current_time(), SPEECH_END)):
                    self._text = await recognizer.open_stream().finish(self._audio)
            except BackendError as e:
                self._error = e
        self._done.set()

    def covers(self, utterance: PcmChunk) -> bool:
        """Whether this decode was of exactly ``utterance`` (nothing was said since)."""
        return self.samples == len(utterance.samples) and not self._scope.cancel_called

    def discard(self) -> None:
        self._scope.cancel()

    async def result(self) -> str:
        """The text, once the decode has finished (a failure raises its ``BackendError``)."""
        await self._done.wait()
        if self._error is not None:
            raise self._error
        assert self._text is not None
        return self._text


async def recognize(
    receive: trio.MemoryReceiveChannel[UtteranceOutput],
    send: trio.MemorySendChannel[RecognizerOutput],
    recognizer: SpeechRecognizer,
    on_speech_end: Callable[[SpeechEnded], None],
) -> None:
    """Feed each utterance to a recognition stream; hand on the final text when it ends.

    Streaming recognizers decode while the user speaks, so the text is ready as speech ends;
    offline ones decode the whole utterance in ``finish``, or start at a pause (see the module doc).
    Partial text never reaches the device as ``stt``: only the final text does. The final decode
    is due at once (the user is waiting); decoding while the user speaks only has to keep up
    with the audio.
    """
    stream: RecognitionStream | None = None
    speculation: Speculation | None = None
    voice = VoiceMeter()
    partial: str | None = None
    mode = ""
    streaming = bool(getattr(recognizer, "streaming", False))

    def drop_speculation() -> None:
        nonlocal speculation
        if speculation is not None:
            speculation.discard()
            speculation = None

    with receive, send:
        async with trio.open_nursery() as nursery:
            async for item in receive:
                try:
                    match item:
                        case UtteranceStarted(audio=audio, mode=mode):
                            drop_speculation()
                            await send.send(item)  # the controller may barge in on it
                            stream, voice, partial = recognizer.open_stream(), VoiceMeter(), None
                            voice.feed(audio)
                            partial = await _accept(stream, audio) or partial
                        case SpeechAudio(audio=audio):
                            voice.feed(audio)
                            if stream is not None:
                                partial = await _accept(stream, audio) or partial
                            await send.send(SpeechProgress(voice.seconds, partial, mode))
                        case SpeechPaused(audio=audio):
                            drop_speculation()
                            if not streaming:
                                speculation = Speculation(audio)
                                nursery.start_soon(speculation.run, recognizer)
                        case SpeechResumed():
                            drop_speculation()
                        case SpeechEnded(audio=audio):
                            ended_at = trio.current_time()
                            on_speech_end(item)
                            current, stream = stream or recognizer.open_stream(), None
                            ready, speculation = speculation, None
                            if ready is not None and ready.covers(audio):
                                text = await ready.result()
                            else:
                                if ready is not None:
                                    ready.discard()
                                with work_urgency(Urgency(ended_at, SPEECH_END)):
                                    text = await current.finish(audio)
                            await send.send(Transcript(text.strip(), ended_at, audio))
                        case _:
                            await send.send(item)
                except BackendError as e:
                    stream = None
                    log.warning("speech recognition failed (%s): %s", e.kind, e)
                    await send.send(RecognitionFailed(e.kind, str(e)))
            nursery.cancel_scope.cancel()


async def _accept(stream: RecognitionStream, audio: PcmChunk) -> str | None:
    """Feed speech in progress; due before the next piece of audio arrives."""
    with work_urgency(Urgency(trio.current_time() + audio.duration, LISTENING)):
        return await stream.accept(audio)

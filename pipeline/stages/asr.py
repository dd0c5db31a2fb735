"""Stage: utterances → transcripts. Controls and utterance-start notices pass through in order.

Decoding while the user speaks: an offline recognizer that can decode an utterance piece by piece
(``decodes_segments``, e.g. Moonshine) gets the utterance in *segments*, cut at gaps between
words as the audio arrives (``asr_segments.SegmentCutter``), each decoded in the background while
the user goes on. The gap after the last word cuts the last segment too, so by the time the turn
ends its text is usually ready, and at the end only what follows the last cut (the *tail*) is
decoded, if it holds any speech. A pause (``SpeechPaused``) cuts at once, with its decode due now
(the turn may end there); when the user speaks on (``SpeechResumed``) that segment stays one.
The transcript is the segments' texts joined.

Other offline recognizers decode the whole utterance, starting speculatively at a pause: if the
turn ends there that decode's text is the transcript; if the user speaks on it is cancelled.
Streaming recognizers decode as the audio arrives, so their running result is used instead.
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
from .asr_segments import CutRule, Segment, SegmentCutter, join_texts
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


#: A segment cut while the user speaks is needed at the earliest when their turn could end: the
#: turn policy's short pause after the speech stops (the speech has not stopped yet at the cut).
SEGMENT_DUE_AFTER = 0.2


class Decode:
    """One background decode: of the utterance as it was at a pause, or of one of its segments."""

    def __init__(self, audio: PcmChunk) -> None:
        self.samples = len(audio.samples)
        self._audio = audio
        self._scope = trio.CancelScope()
        self._done = trio.Event()
        self._text: str | None = None
        self._error: BackendError | None = None

    async def run(self, recognizer: SpeechRecognizer, urgency: Urgency) -> None:
        with self._scope:
            try:
                with work_urgency(urgency):
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


class SegmentDecodes:
    """One utterance cut into segments as it arrives, and their decodes (see the module doc)."""

    def __init__(self, recognizer: SpeechRecognizer, nursery: trio.Nursery, rule: CutRule, sample_rate: int) -> None:
        self._recognizer = recognizer
        self._nursery = nursery
        self._rate = sample_rate
        self.cutter = SegmentCutter(rule, sample_rate)
        self._decodes: dict[int, Decode] = {}
        #: Segments cut, and whether each was the tail (for tests and logs).
        self.decoded: list[tuple[Segment, str]] = []
        #: Segments withdrawn or dropped after they were cut (their decode thrown away).
        self.withdrawn = 0

    def feed(self, audio: PcmChunk) -> None:
        """More speech: decode the segments it completes in the background."""
        due = Urgency(trio.current_time() + SEGMENT_DUE_AFTER, LISTENING)
        cuts, withdrawn = self.cutter.feed(audio.samples)
        self._drop(withdrawn)
        for segment in cuts:
            self._start(segment, due)

    def pause(self, so_far: PcmChunk) -> None:
        """The user paused and the utterance so far is exactly ``so_far``: cut there, due now (the
        turn may end at this pause)."""
        self._drop(self.cutter.rebase(so_far.samples))
        due = Urgency(trio.current_time(), SPEECH_END)
        cuts, withdrawn = self.cutter.cut()
        self._drop(withdrawn)
        for segment in cuts:
            self._start(segment, due)

    async def finish(self, utterance: PcmChunk, due: Urgency) -> str:
        """The utterance is over (exactly ``utterance``): decode what is left, join the texts."""
        plan = self.cutter.finish(utterance.samples)
        self._drop(plan.dropped)
        for segment in plan.segments:
            if segment.number not in self._decodes:
                self._start(segment, due)
        decodes = [self._decodes[s.number] for s in plan.segments if s.number in self._decodes]
        if plan.tail is not None and plan.tail.voiced:
            self._start(plan.tail, due, "tail")
            decodes.append(self._decodes[plan.tail.number])
        return join_texts([await decode.result() for decode in decodes])

    def discard(self) -> None:
        """Cancel every decode still running (the utterance was abandoned or failed)."""
        for decode in self._decodes.values():
            decode.discard()
        self._decodes.clear()

    def _start(self, segment: Segment, due: Urgency, kind: str = "segment") -> None:
        self.decoded.append((segment, kind))
        if not segment.voiced:
            return  # nothing said: an empty text, no decode
        decode = Decode(PcmChunk(segment.samples, self._rate))
        self._decodes[segment.number] = decode
        self._nursery.start_soon(decode.run, self._recognizer, due)

    def _drop(self, segments: tuple[Segment, ...] | list[Segment]) -> None:
        for segment in segments:
            self.withdrawn += 1
            if (decode := self._decodes.pop(segment.number, None)) is not None:
                decode.discard()


async def recognize(
    receive: trio.MemoryReceiveChannel[UtteranceOutput],
    send: trio.MemorySendChannel[RecognizerOutput],
    recognizer: SpeechRecognizer,
    on_speech_end: Callable[[SpeechEnded], None],
    cut_rule: CutRule | None = None,
) -> None:
    """Feed each utterance to a recognition stream; hand on the final text when it ends.

    Streaming recognizers decode while the user speaks, so the text is ready as speech ends;
    offline ones decode segments while the user speaks (``decodes_segments``), else the whole
    utterance in ``finish`` or from a pause (see the module doc). Partial text never reaches the
    device as ``stt``: only the final text does. What is decoded once the user has finished is due
    at once (they are waiting); decoding while they speak only has to be done by the time they
    could have finished.
    """
    stream: RecognitionStream | None = None
    speculation: Decode | None = None
    segments: SegmentDecodes | None = None
    voice = VoiceMeter()
    partial: str | None = None
    mode = ""
    streaming = bool(getattr(recognizer, "streaming", False))
    segmenting = not streaming and bool(getattr(recognizer, "decodes_segments", False))
    rule = cut_rule or CutRule()

    def drop_speculation() -> None:
        nonlocal speculation
        if speculation is not None:
            speculation.discard()
            speculation = None

    def drop_segments() -> None:
        nonlocal segments
        if segments is not None:
            segments.discard()
            segments = None

    with receive, send:
        async with trio.open_nursery() as nursery:
            async for item in receive:
                try:
                    match item:
                        case UtteranceStarted(audio=audio, mode=mode):
                            drop_speculation()
                            drop_segments()
                            await send.send(item)  # the controller may barge in on it
                            stream, voice, partial = recognizer.open_stream(), VoiceMeter(), None
                            voice.feed(audio)
                            if segmenting:
                                segments = SegmentDecodes(recognizer, nursery, rule, audio.sample_rate)
                                segments.feed(audio)
                            partial = await _accept(stream, audio) or partial
                        case SpeechAudio(audio=audio):
                            voice.feed(audio)
                            if segments is not None:
                                segments.feed(audio)
                            if stream is not None:
                                partial = await _accept(stream, audio) or partial
                            await send.send(SpeechProgress(voice.seconds, partial, mode))
                        case SpeechPaused(audio=audio):
                            drop_speculation()
                            if segments is not None:
                                segments.pause(audio)
                            elif not streaming:
                                speculation = Decode(audio)
                                # Due now: if the turn ends at this pause, the user is already waiting.
                                nursery.start_soon(speculation.run, recognizer, Urgency(trio.current_time(), SPEECH_END))
                        case SpeechResumed():
                            drop_speculation()  # a segment cut at the pause stays one
                        case SpeechEnded(audio=audio):
                            ended_at = trio.current_time()
                            on_speech_end(item)
                            current, stream = stream or recognizer.open_stream(), None
                            ready, speculation = speculation, None
                            due = Urgency(ended_at, SPEECH_END)
                            if segmenting:
                                if segments is None:  # no start seen (cannot happen with the listen stage)
                                    segments = SegmentDecodes(recognizer, nursery, rule, audio.sample_rate)
                                cut, segments = segments, None
                                try:
                                    text = await cut.finish(audio, due)
                                finally:
                                    cut.discard()  # after a failure, the other decodes are of no use
                            elif ready is not None and ready.covers(audio):
                                text = await ready.result()
                            else:
                                if ready is not None:
                                    ready.discard()
                                with work_urgency(due):
                                    text = await current.finish(audio)
                            await send.send(Transcript(text.strip(), ended_at, audio))
                        case _:
                            await send.send(item)
                except BackendError as e:
                    stream = None
                    drop_segments()
                    log.warning("speech recognition failed (%s): %s", e.kind, e)
                    await send.send(RecognitionFailed(e.kind, str(e)))
            nursery.cancel_scope.cancel()


async def _accept(stream: RecognitionStream, audio: PcmChunk) -> str | None:
    """Feed speech in progress; due before the next piece of audio arrives."""
    with work_urgency(Urgency(trio.current_time() + audio.duration, LISTENING)):
        return await stream.accept(audio)

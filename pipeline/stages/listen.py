"""Stage: when is the user speaking? Listen state + VAD → utterances.

The sans-IO core ``UtteranceDetector`` follows the device's ``listen`` messages:

- not listening: audio is dropped (the wake word's unpaced burst arrives before ``listen``);
- ``auto`` and ``realtime``: the VAD decides where utterances start and end;
- ``manual`` (push-to-talk): everything between ``listen start`` and ``listen stop`` is the
  utterance, whatever the VAD thinks.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from ..backends import VadStream
from ..scheduling import LISTENING, Urgency
from ..workers import CpuWorkers
from ..messages import (
    ListenStart,
    ListenStop,
    PcmChunk,
    SpeechAudio,
    SpeechEnded,
    SpeechStarted,
    UplinkControl,
    UtteranceStarted,
    WakeWordDetected,
)

UtteranceOutput = UtteranceStarted | SpeechAudio | SpeechEnded | UplinkControl

#: An utterance longer than this is ended by force, so memory stays bounded.
MAX_UTTERANCE_SECONDS = 60.0


class UtteranceDetector:
    """Turns uplink PCM and listen controls into utterance started / audio / ended, in order.

    It is the one owner of the listen state (it sees the controls in order with the audio); each
    ``UtteranceStarted`` carries the mode it was heard in, for the controller's barge-in rule.
    """

    def __init__(self, open_vad: Callable[[], VadStream], sample_rate: int = 16000) -> None:
        self._open_vad = open_vad
        self._vad: VadStream | None = None  # opened on first use: idle sessions hold no VAD state
        self.sample_rate = sample_rate
        #: The listen mode (auto, manual, realtime); None: not listening.
        self.mode: str | None = None
        #: The utterance in progress (None: no speech now).
        self._utterance: list[PcmChunk] | None = None
        self._utterance_samples = 0

    @property
    def needs_vad(self) -> bool:
        """Listening in a mode where the VAD decides, with no VAD state opened yet."""
        return self._vad is None and self.mode in ("auto", "realtime")

    def open_vad(self) -> None:
        """Open the VAD state now (it may load a model: call it off the event loop)."""
        if self._vad is None:
            self._vad = self._open_vad()

    def _reset(self) -> None:
        if self._vad is not None:
            self._vad.reset()
        self._utterance = None
        self._utterance_samples = 0

    def _start(self, audio: PcmChunk) -> UtteranceStarted:
        assert self.mode is not None
        self._utterance = [audio]
        self._utterance_samples = len(audio.samples)
        return UtteranceStarted(audio, self.mode)

    def _end(self) -> SpeechEnded:
        ended = SpeechEnded(PcmChunk.join(self._utterance or [], self.sample_rate))
        self._utterance = None
        self._utterance_samples = 0
        return ended

    def _continue(self, chunk: PcmChunk) -> list[UtteranceOutput]:
        assert self._utterance is not None
        self._utterance.append(chunk)
        self._utterance_samples += len(chunk.samples)
        if self._utterance_samples <= MAX_UTTERANCE_SECONDS * self.sample_rate:
            return [SpeechAudio(chunk)]
        if self._vad is not None:
            self._vad.reset()
        return [SpeechAudio(chunk), self._end()]

    def control(self, item: UplinkControl) -> list[UtteranceOutput]:
        out: list[UtteranceOutput] = []
        match item:
            case ListenStart(mode=mode):
                self._reset()
                self.mode = mode
            case ListenStop():
                if self.mode == "manual" and self._utterance:
                    out.append(self._end())
                self._reset()
                self.mode = None
            case WakeWordDetected():
                self._reset()  # the wake word's own audio is not a question
        out.append(item)
        return out

    def audio(self, chunk: PcmChunk) -> list[UtteranceOutput]:
        if self.mode is None:
            return []
        if self.mode == "manual":
            return [self._start(chunk)] if self._utterance is None else self._continue(chunk)
        if self._vad is None:
            self._vad = self._open_vad()
        events = self._vad.feed(chunk.samples)
        if not events:
            return self._continue(chunk) if self._utterance is not None else []
        out: list[UtteranceOutput] = []
        for event in events:
            match event:
                case SpeechStarted():
                    out.append(self._start(event.audio))
                case SpeechEnded():
                    # The VAD's own utterance (pre-roll included) is the authoritative one.
                    self._utterance = None
                    self._utterance_samples = 0
                    out.append(event)
        return out


async def detect_utterances(
    receive: trio.MemoryReceiveChannel[PcmChunk | UplinkControl],
    send: trio.MemorySendChannel[UtteranceOutput],
    detector: UtteranceDetector,
    workers: CpuWorkers,
) -> None:
    """Run the detector over the uplink. A session's VAD state is opened in a worker when it
    first listens (opening may load a model: tens of ms that would stall every session)."""
    with receive, send:
        async for item in receive:
            if isinstance(item, PcmChunk) and detector.needs_vad:
                await workers.run(detector.open_vad, urgency=Urgency(trio.current_time(), LISTENING))
            outputs = detector.audio(item) if isinstance(item, PcmChunk) else detector.control(item)
            for output in outputs:
                await send.send(output)

"""Stage: when is the user speaking? Listen state + VAD → utterances.

The sans-IO core ``UtteranceDetector`` follows the device's ``listen`` messages:

- not listening: audio is dropped (the wake word's unpaced burst arrives before ``listen``);
- ``auto`` and ``realtime``: the VAD decides where utterances start and end;
- ``manual`` (push-to-talk): everything between ``listen start`` and ``listen stop`` is the
  utterance, whatever the VAD thinks.

With a turn detector, in the listen modes configured for it (``[turn] modes``), the VAD runs with
a short silence window (``[turn] pause_ms``) and its utterances become *segments*: at each pause
the ``TurnPolicy`` asks the detector whether the user has finished (``TurnQuestion``, carried out
by the async shell), and the segments of one utterance are joined until it says so or the silence
limit passes. The recognizer hears ``SpeechPaused`` (it may start decoding) and ``SpeechResumed``
(the same utterance goes on) in between.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import trio

from ..backends import BackendError, TurnDetector, VadStream
from ..scheduling import LISTENING, SPEECH_END, Urgency
from ..messages import (
    ListenStart,
    ListenStop,
    PcmChunk,
    SpeechAudio,
    SpeechEnded,
    SpeechPaused,
    SpeechResumed,
    SpeechStarted,
    UplinkControl,
    UtteranceStarted,
    WakeWordDetected,
)
from ..workers import CpuWorkers, work_urgency
from .turn_policy import Ask, EndTurn, Phase, TurnPolicy, TurnTiming

log = logging.getLogger(__name__)

UtteranceOutput = UtteranceStarted | SpeechAudio | SpeechPaused | SpeechResumed | SpeechEnded | UplinkControl


@dataclass(frozen=True, eq=False)
class TurnQuestion:
    """For the shell: ask the turn detector about ``audio`` and report the answer as ``ask``."""

    ask: int
    audio: PcmChunk


DetectorOutput = UtteranceOutput | TurnQuestion

#: An utterance longer than this is ended by force, so memory stays bounded.
MAX_UTTERANCE_SECONDS = 60.0


class UtteranceDetector:
    """Turns uplink PCM and listen controls into utterance started / audio / ended, in order.

    It is the one owner of the listen state (it sees the controls in order with the audio); each
    ``UtteranceStarted`` carries the mode it was heard in, for the controller's barge-in rule.

    ``open_vad()`` opens a VAD stream; ``open_vad(min_silence_ms)`` one with a shorter silence
    window (only with the turn policy).
    ``turn`` (with ``turn_modes``) enables the turn policy; without it the VAD's window ends turns.
    """

    def __init__(
        self,
        open_vad: Callable[..., VadStream],
        sample_rate: int = 16000,
        *,
        turn: TurnTiming | None = None,
        turn_modes: tuple[str, ...] = (),
    ) -> None:
        self._open_vad = open_vad
        self._vad: VadStream | None = None  # opened on first use: idle sessions hold no VAD state
        self._vad_window: float | None = None  # the silence window the open VAD stream uses
        self.sample_rate = sample_rate
        #: The listen mode (auto, manual, realtime); None: not listening.
        self.mode: str | None = None
        #: The utterance in progress (None: no speech now); with the policy, its current segment.
        self._utterance: list[PcmChunk] | None = None
        self._utterance_samples = 0
        self._timing = turn
        self._turn_modes = turn_modes if turn is not None else ()
        self.policy = TurnPolicy(turn) if turn is not None else None
        #: With the policy: the finished segments of the utterance in progress, and the silence since.
        self._segments: list[PcmChunk] = []
        self._silence = 0.0

    @property
    def uses_policy(self) -> bool:
        """Whether the turn policy decides in the current listen mode."""
        return self.mode in self._turn_modes

    def _wanted_window(self) -> float | None:
        return self._timing.pause * 1000 if self._timing is not None and self.uses_policy else None

    @property
    def needs_vad(self) -> bool:
        """Listening in a mode where the VAD decides, without the VAD state that mode needs."""
        if self.mode not in ("auto", "realtime"):
            return False
        return self._vad is None or self._vad_window != self._wanted_window()

    def open_vad(self) -> None:
        """Open the VAD state the mode needs (it may load a model: call it off the event loop)."""
        if self._vad is None or self._vad_window != self._wanted_window():
            self._vad_window = self._wanted_window()
            # A VAD asked for no special window is opened as before (plugins may take no argument).
            self._vad = self._open_vad() if self._vad_window is None else self._open_vad(self._vad_window)

    def _reset(self) -> None:
        if self._vad is not None:
            self._vad.reset()
        self._utterance = None
        self._utterance_samples = 0
        self._segments = []
        self._silence = 0.0
        if self.policy is not None:
            self.policy.reset()

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
        if self.uses_policy and self.policy is not None:
            self._segments.append(PcmChunk.join(self._utterance, self.sample_rate))
            self._utterance = None
            return [SpeechAudio(chunk), *self._act(self.policy.end())]
        return [SpeechAudio(chunk), self._end()]

    def control(self, item: UplinkControl) -> list[DetectorOutput]:
        out: list[DetectorOutput] = []
        match item:
            case ListenStart(mode=mode):
                self._reset()
                self.mode = mode
            case ListenStop():
                if self.mode == "manual" and self._utterance:
                    out.append(self._end())
                elif self.uses_policy and self._segments and self._utterance is None and self.policy is not None:
                    out += self._act(self.policy.end())  # paused, not yet judged: the words count
                self._reset()
                self.mode = None
            case WakeWordDetected():
                self._reset()  # the wake word's own audio is not a question
        out.append(item)
        return out

    def audio(self, chunk: PcmChunk) -> list[DetectorOutput]:
        if self.mode is None:
            return []
        if self.mode == "manual":
            return [self._start(chunk)] if self._utterance is None else self._continue(chunk)
        self.open_vad()
        assert self._vad is not None
        if self.uses_policy:
            return self._audio_with_policy(chunk)
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


    # ----------------------------------------------------------------------------------------
    # With the turn policy
    # ----------------------------------------------------------------------------------------

    def _so_far(self) -> PcmChunk:
        return PcmChunk.join(self._segments, self.sample_rate)

    def _audio_with_policy(self, chunk: PcmChunk) -> list[DetectorOutput]:
        assert self._vad is not None and self.policy is not None and self._timing is not None
        events = self._vad.feed(chunk.samples)
        if not events:
            if self._utterance is not None:
                return list(self._continue(chunk))
            if self.policy.phase is Phase.PAUSED:
                self._silence += chunk.duration
                return self._act(self.policy.silence(self._silence))
            return []
        out: list[DetectorOutput] = []
        for event in events:
            match event:
                case SpeechStarted(audio=audio):
                    resumed = self.policy.phase is Phase.PAUSED
                    self.policy.speech()
                    self._utterance = [audio]
                    self._utterance_samples = sum(len(s.samples) for s in self._segments) + len(audio.samples)
                    if resumed:
                        out += [SpeechResumed(), SpeechAudio(audio)]
                    else:
                        assert self.mode is not None
                        self._segments = []
                        out.append(UtteranceStarted(audio, self.mode))
                case SpeechEnded(audio=audio):
                    # The VAD's own segment (pre-roll included) is the authoritative one.
                    self._utterance = None
                    self._segments.append(audio)
                    self._silence = self._timing.pause  # the VAD's window has just passed
                    out.append(SpeechPaused(self._so_far()))
                    out += self._act(self.policy.silence(self._silence))
        return out

    def _act(self, actions: list[Ask | EndTurn]) -> list[DetectorOutput]:
        out: list[DetectorOutput] = []
        for action in actions:
            match action:
                case Ask(ask=ask):
                    out.append(TurnQuestion(ask, self._so_far()))
                case EndTurn(reason=reason):
                    log.debug("turn ended (%s) after %.2f s of silence", reason, self._silence)
                    out.append(SpeechEnded(self._so_far()))
                    self._segments = []
                    self._silence = 0.0
                    self._utterance_samples = 0
        return out

    def answer(self, ask: int, probability: float) -> list[DetectorOutput]:
        """The detector's answer to ``TurnQuestion`` ``ask``."""
        return self._act(self.policy.answer(ask, probability)) if self.policy is not None else []

    def failed(self, ask: int) -> list[DetectorOutput]:
        """The detector could not answer ``TurnQuestion`` ``ask``."""
        return self._act(self.policy.failed(ask)) if self.policy is not None else []

    @property
    def pending_question(self) -> int | None:
        """The question whose answer still counts (older ones can be abandoned)."""
        return self.policy.pending if self.policy is not None else None


async def detect_utterances(
    receive: trio.MemoryReceiveChannel[PcmChunk | UplinkControl],
    send: trio.MemorySendChannel[UtteranceOutput],
    detector: UtteranceDetector,
    workers: CpuWorkers,
    turn: TurnDetector | None = None,
) -> None:
    """Run the detector over the uplink. A session's VAD state is opened in a worker when it
    first listens (opening may load a model: tens of ms that would stall every session).

    The turn detector's questions run as tasks beside the uplink (audio keeps flowing while the
    model thinks); a question the policy no longer waits for is cancelled. One lock keeps the
    detector's state and the order of what is sent consistent between the two.
    """
    lock = trio.Lock()
    questions: dict[int, trio.CancelScope] = {}
    failures = [0]

    async def emit(nursery: trio.Nursery, outputs: list[DetectorOutput]) -> None:
        for output in outputs:
            if isinstance(output, TurnQuestion):
                nursery.start_soon(ask, output)
            else:
                await send.send(output)
        for number, scope in questions.items():
            if number != detector.pending_question:
                scope.cancel()  # stale: its answer would be ignored anyway

    async def ask(question: TurnQuestion) -> None:
        assert turn is not None
        with trio.CancelScope() as scope:
            questions[question.ask] = scope
            try:
                # Due now: the answer decides whether the user is already waiting for a reply.
                with work_urgency(Urgency(trio.current_time(), SPEECH_END)):
                    verdict = await turn.predict(question.audio)
            except BackendError as e:
                failures[0] += 1
                if failures[0] == 1 or failures[0] % 100 == 0:  # a broken model would flood the log
                    log.warning("turn detection failed (%s, #%d): %s; waiting for the silence limit", e.kind, failures[0], e)
                async with lock:
                    await emit(nursery, detector.failed(question.ask))
            else:
                async with lock:
                    await emit(nursery, detector.answer(question.ask, verdict.probability))
        questions.pop(question.ask, None)

    with receive, send:
        async with trio.open_nursery() as nursery:
            async for item in receive:
                if isinstance(item, PcmChunk) and detector.needs_vad:
                    await workers.run(detector.open_vad, urgency=Urgency(trio.current_time(), LISTENING))
                async with lock:
                    outputs = detector.audio(item) if isinstance(item, PcmChunk) else detector.control(item)
                    await emit(nursery, outputs)
            nursery.cancel_scope.cancel()

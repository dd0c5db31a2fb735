"""Decoding while the user speaks (pipeline/stages/asr.py with ``decodes_segments``): the
recognizer stage on its own with exact utterances, and whole sessions through the WebSocket.
Test-double backends (the fake recognizer hears one phrase per decode, so a transcript of several
phrases can only come from several segments); virtual time."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import trio

from xiaozhi_trio.pipeline.config import TurnPolicyConfig, parse_config
from xiaozhi_trio.pipeline.messages import (
    PcmChunk,
    RecognitionFailed,
    SpeechAudio,
    SpeechEnded,
    SpeechPaused,
    SpeechResumed,
    Transcript,
    UtteranceStarted,
)
from xiaozhi_trio.pipeline.stages.asr import recognize
from xiaozhi_trio.pipeline.stages.asr_segments import CutRule
from xiaozhi_trio.plugins.testing.fakes.backends import FakeAsr, FakeBackends, FakeVad, speech
from xiaozhi_trio.plugins.testing.harness import fake_config, make_app, open_device

RATE = 16000
CHUNK = 960


def gap(seconds: float) -> np.ndarray:
    return np.zeros(round(seconds * RATE), np.float32)


async def run_stage(asr: FakeAsr, messages: list[object]) -> list[object]:
    """Send ``messages`` through the recognizer stage (60 ms apart, as audio arrives); return
    what it sends on."""
    into_send, into_receive = trio.open_memory_channel[Any](100)
    out_send, out_receive = trio.open_memory_channel[Any](100)
    received: list[object] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(recognize, into_receive, out_send, asr, lambda ended: None, CutRule())
        async with into_send:
            for message in messages:
                await into_send.send(message)
                await trio.sleep(CHUNK / RATE)
        async for item in out_receive:
            received.append(item)
    return received


def as_stage_input(audio: np.ndarray) -> list[object]:
    """The listen stage's output for one utterance without pauses: started, audio in chunks, ended."""
    chunks = [PcmChunk(audio[i : i + CHUNK], RATE) for i in range(0, len(audio), CHUNK)]
    return [UtteranceStarted(chunks[0], "auto"), *[SpeechAudio(c) for c in chunks[1:]], SpeechEnded(PcmChunk(audio, RATE))]


async def test_the_transcript_joins_the_segments_and_the_end_decodes_only_the_tail(autojump_clock: Any) -> None:
    # Three phrases with pauses between them (the listen stage would report them; here it does
    # not, so only the recognizer's own cuts count); the last one runs to the very end of the
    # utterance, so its decode can only happen at the end.
    audio = np.concatenate([speech("turn on", 1.1), gap(0.35), speech("the kitchen", 1.1), gap(0.35), speech("lights", 0.7)])
    asr = FakeAsr(decodes_segments=True)
    received = await run_stage(asr, as_stage_input(audio))
    (transcript,) = [r for r in received if isinstance(r, Transcript)]
    assert transcript.text == "turn on the kitchen lights"
    decoded = [samples for _, samples in asr.decoded]
    assert len(decoded) == 3
    # Consecutive, exact pieces of the utterance: nothing lost, nothing decoded twice.
    assert np.array_equal(np.concatenate(decoded), audio)
    # The decode at the end was only the tail: the last phrase, and the pause from the cut (made
    # once the quiet had lasted 100 ms, in the middle of that).
    assert 0.7 * RATE < len(decoded[-1]) < (0.7 + 0.35 - 0.05) * RATE
    ended_at = transcript.speech_ended_at
    assert [at < ended_at for at, _ in asr.decoded] == [True, True, False]


async def test_speech_resuming_within_a_short_quiet_withdraws_the_early_decode(autojump_clock: Any) -> None:
    audio = np.concatenate([speech("turn on", 1.1), gap(0.12), speech("the kitchen lights", 1.5)])
    asr = FakeAsr(decodes_segments=True, delay=0.3)  # still decoding when the user speaks on
    received = await run_stage(asr, as_stage_input(audio))
    (transcript,) = [r for r in received if isinstance(r, Transcript)]
    # The decode started at the quiet was cancelled; the utterance was decoded as one.
    assert len(asr.decoded) == 1 and np.array_equal(asr.decoded[0][1], audio)
    assert transcript.text == "the kitchen lights"  # the fake hears the dominant phrase


async def test_without_segments_the_whole_utterance_is_decoded_once(autojump_clock: Any) -> None:
    audio = np.concatenate([speech("turn on", 0.9), gap(0.12), speech("the kitchen", 1.2)])
    asr = FakeAsr()  # a recognizer that does not decode segments (e.g. a remote one)
    received = await run_stage(asr, as_stage_input(audio))
    (transcript,) = [r for r in received if isinstance(r, Transcript)]
    assert transcript.text == "the kitchen"  # the fake hears one phrase: the dominant one
    assert len(asr.decoded) == 1 and np.array_equal(asr.decoded[0][1], audio)


async def test_a_pause_keeps_the_cut_and_speech_resuming_goes_on_from_it(autojump_clock: Any) -> None:
    first = speech("what is", 1.1)
    rest = np.concatenate([gap(0.2), speech("the time", 0.9)])  # the VAD's pre-roll, then speech
    heard_before_pause = np.concatenate([first, gap(0.25)])  # the VAD heard more silence than it keeps
    so_far = np.concatenate([first, gap(0.2)])
    chunks = [PcmChunk(heard_before_pause[i : i + CHUNK], RATE) for i in range(0, len(heard_before_pause), CHUNK)]
    final = np.concatenate([so_far, rest])
    messages: list[object] = [UtteranceStarted(chunks[0], "auto"), *[SpeechAudio(c) for c in chunks[1:]]]
    messages += [SpeechPaused(PcmChunk(so_far, RATE)), SpeechResumed()]
    messages += [SpeechAudio(PcmChunk(rest[i : i + CHUNK], RATE)) for i in range(0, len(rest), CHUNK)]
    messages.append(SpeechEnded(PcmChunk(final, RATE)))
    asr = FakeAsr(decodes_segments=True)
    received = await run_stage(asr, messages)
    (transcript,) = [r for r in received if isinstance(r, Transcript)]
    assert transcript.text == "what is the time"
    decoded = [samples for _, samples in asr.decoded]
    assert len(decoded) == 2
    # Cut at the first silence (after 100 ms of it, in its middle) and kept, as the quiet around
    # the pause lasted more than 300 ms; at the end only what followed the cut was decoded.
    cut = round((1.1 + 0.06) * RATE)
    assert np.array_equal(decoded[0], final[:cut]) and np.array_equal(decoded[1], final[cut:])


async def test_a_failing_segment_fails_the_utterance_without_hanging(autojump_clock: Any) -> None:
    audio = np.concatenate([speech("turn on", 1.1), gap(0.35), speech("the lights", 0.9)])
    asr = FakeAsr(decodes_segments=True, fail=True)
    received = await run_stage(asr, as_stage_input(audio))
    assert [type(r) for r in received if not isinstance(r, UtteranceStarted)].count(RecognitionFailed) == 1
    assert not any(isinstance(r, Transcript) for r in received)


def segmenting_app(tmp_path: Path) -> tuple[Any, FakeBackends, Any]:
    # Silero's 300 ms pre-roll: the quiet around a pause in the joined utterance lasts as long.
    fakes = FakeBackends(vad=FakeVad(preroll=0.3), asr=FakeAsr(decodes_segments=True))
    base = fake_config(tmp_path).with_backend("turn", parse_config({"turn": {"backend": "fake"}}).backend("turn"))
    config = dataclasses.replace(base, turn_policy=TurnPolicyConfig())
    return make_app(tmp_path, fakes, config=config)


async def test_a_session_answers_the_joined_segments_decoded_while_the_user_spoke(tmp_path: Path, autojump_clock: Any) -> None:
    app, fakes, _ = segmenting_app(tmp_path)
    fakes.turn.finished = {"in london"}
    question = np.concatenate([speech("what time is it", 1.1), gap(0.5), speech("in london", 1.0)])
    async with open_device(app) as device:
        started = trio.current_time()
        reply, _ = await device.ask(question, trailing_silence=2.0)
    spoken_at = started + len(question) / RATE
    assert reply.stt == "what time is it in london"
    assert [r.text for r in fakes.agent.requests] == ["what time is it in london"]
    # Both segments were decoded before the VAD's 200 ms pause had even passed: the first silence
    # after each part cut it; the silence after them was never decoded.
    assert len(fakes.asr.decoded) == 2
    assert all(at < spoken_at + 0.2 for at, _ in fakes.asr.decoded)

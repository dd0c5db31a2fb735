"""Turn-taking in a whole session, through the WebSocket: a device pausing mid-sentence, one
finishing a question, a detector that fails, speculative recognition. Test-double backends,
with the fake turn detector; virtual time."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np

from xiaozhi_trio.pipeline.config import TurnPolicyConfig, parse_config
from xiaozhi_trio.pipeline.events import SpeechEndDetected, TurnEnded

from xiaozhi_trio.plugins.testing.fakes.backends import FakeBackends, speech
from xiaozhi_trio.plugins.testing.harness import fake_config, make_app, open_device

FIRST = "i would like to know"
RATE = 16000
FRAME = 0.06
REST = "the weather in shanghai"


def turn_app(tmp_path: Path, **policy: Any) -> tuple[Any, FakeBackends, Any]:
    base = fake_config(tmp_path).with_backend("turn", parse_config({"turn": {"backend": "fake"}}).backend("turn"))
    config = dataclasses.replace(base, turn_policy=dataclasses.replace(TurnPolicyConfig(), **policy))
    return make_app(tmp_path, config=config)


async def ask(device: Any, samples: np.ndarray, **kwargs: Any) -> tuple[Any, float]:
    """Ask in auto mode; return the reply and the trio time the speech ended (the microphone
    streams in real time from the start)."""
    import trio

    started = trio.current_time()
    reply, _ = await device.ask(samples, **kwargs)
    return reply, started + len(samples) / RATE


def broken_sentence(pause: float) -> np.ndarray:
    # The second part is longer, so the fake recognizer hears it in the joined utterance.
    return np.concatenate([speech(FIRST, 0.8), np.zeros(int(pause * 16000), np.float32), speech(REST, 1.4)])


async def test_a_mid_sentence_pause_does_not_end_the_turn(tmp_path: Path, autojump_clock: Any) -> None:
    app, fakes, events = turn_app(tmp_path)
    fakes.turn.finished = {REST}
    async with open_device(app) as device:
        reply, _ = await device.ask(broken_sentence(0.7))
    assert reply.stt == REST
    assert [r.text for r in fakes.agent.requests] == [REST]
    assert fakes.turn.asked[0] == FIRST  # asked at the pause, told "not finished"
    assert [e.outcome for e in events.of(TurnEnded)] == ["completed"]
    (ended,) = events.of(SpeechEndDetected)
    assert ended.utterance_seconds >= 0.8 + 1.4  # both parts, one utterance


async def test_a_doubtful_answer_at_a_mid_sentence_pause_does_not_end_the_turn(tmp_path: Path, autojump_clock: Any) -> None:
    # 0.6 ends the turn at the pause with one threshold of 0.5 (pipecat's); by default only after
    # 1 s of silence, and the user speaks on after 0.7 s.
    for policy, joined in (({}, True), ({"threshold": 0.5}, False)):
        app, fakes, events = turn_app(tmp_path, **policy)
        fakes.turn.finished = {REST}
        fakes.turn.probabilities = {FIRST: 0.6}
        async with open_device(app) as device:
            await device.listen_start("auto")
            await device.speak(broken_sentence(0.7), trailing_silence=2.0)
            await device.receive_reply()
        assert fakes.turn.asked[0] == FIRST
        assert [r.text for r in fakes.agent.requests][:1] == ([REST] if joined else [FIRST]), policy
        if joined:
            (ended,) = events.of(SpeechEndDetected)
            assert ended.utterance_seconds >= 0.8 + 1.4


async def test_without_a_detector_the_same_pause_splits_the_sentence(tmp_path: Path, autojump_clock: Any) -> None:
    app, fakes, _ = make_app(tmp_path)  # [turn] backend = "off": the VAD's 0.3 s window decides
    async with open_device(app) as device:
        await device.listen_start("auto")
        await device.speak(broken_sentence(0.7), trailing_silence=1.0)
        await device.receive_reply()
    assert [r.text for r in fakes.agent.requests][:1] == [FIRST]


async def test_a_finished_question_is_answered_at_the_short_pause(tmp_path: Path, autojump_clock: Any) -> None:
    app, fakes, _ = turn_app(tmp_path)
    fakes.turn.finished = {"what time is it"}
    async with open_device(app) as device:
        reply, spoken_at = await ask(device, speech("what time is it"), trailing_silence=3.0)
    assert reply.stt == "what time is it" and reply.stt_at is not None
    # The 200 ms pause and the detector's 50 ms, far from the 1.6 s silence limit.
    assert reply.stt_at - spoken_at < 0.6
    # The decode started at the pause was the one used: the recognizer ran once.
    assert fakes.asr.heard == ["what time is it"]


async def test_an_unfinished_sentence_ends_at_the_silence_limit(tmp_path: Path, autojump_clock: Any) -> None:
    app, fakes, _ = turn_app(tmp_path, max_silence_ms=1200.0)
    async with open_device(app) as device:
        reply, spoken_at = await ask(device, speech(FIRST), trailing_silence=3.0)
    assert reply.stt == FIRST and reply.stt_at is not None
    assert reply.stt_at - spoken_at >= 1.2 - FRAME  # the silence is counted in whole uplink frames
    # Asked once, at the pause: "not finished".
    assert fakes.turn.asked == [FIRST]


async def test_asked_again_as_the_silence_grows_with_recheck(tmp_path: Path, autojump_clock: Any) -> None:
    app, fakes, _ = turn_app(tmp_path, max_silence_ms=1200.0, recheck_ms=400.0)
    async with open_device(app) as device:
        await ask(device, speech(FIRST), trailing_silence=3.0)
    assert len(fakes.turn.asked) >= 3


async def test_a_failing_detector_falls_back_to_the_silence_limit(tmp_path: Path, autojump_clock: Any, caplog: Any) -> None:
    app, fakes, _ = turn_app(tmp_path)
    fakes.turn.fail = True
    with caplog.at_level(logging.WARNING):
        async with open_device(app) as device:
            reply, spoken_at = await ask(device, speech("what time is it"), trailing_silence=3.0)
    assert reply.stt == "what time is it" and reply.stt_at is not None
    assert reply.stt_at - spoken_at >= 1.6 - FRAME
    assert any("turn detection failed" in r.getMessage() for r in caplog.records)


async def test_speech_after_the_pause_discards_the_early_decode(tmp_path: Path, autojump_clock: Any) -> None:
    app, fakes, _ = turn_app(tmp_path)
    fakes.asr.delay = 0.3  # the early decode is still running when the user speaks on
    fakes.turn.finished = {REST}
    async with open_device(app) as device:
        reply, _ = await device.ask(broken_sentence(0.6))
    assert reply.stt == REST
    # The decode of the first part was cancelled; the whole utterance was decoded at the end.
    assert fakes.asr.heard[-1] == REST and FIRST not in [r.text for r in fakes.agent.requests]


async def test_manual_mode_ignores_the_detector(tmp_path: Path, autojump_clock: Any) -> None:
    app, fakes, _ = turn_app(tmp_path)
    async with open_device(app) as device:
        await device.listen_start("manual")
        await device.send_packets(device.encode(broken_sentence(0.7)))
        await device.listen_stop()
        reply = await device.receive_reply()
    assert reply.stt == REST and fakes.turn.asked == []

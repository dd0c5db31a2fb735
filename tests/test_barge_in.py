"""Interruptions that ignore noise, through the WebSocket: in realtime mode a cough or an
"uh-huh" over the reply does not stop it (and is not answered); a real interruption does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import trio

from xiaozhi_trio.pipeline.events import TurnEnded

from xiaozhi_trio.plugins.testing.fakes.backends import speech
from xiaozhi_trio.plugins.testing.harness import make_app, open_device

STORY = "tell me a story"
ANSWER = " ".join(f"Sentence {i} of a fairly short story." for i in range(6))




async def talk_over_a_playing_reply(tmp_path: Path, sound: Any, **session: Any) -> tuple[Any, Any, list[Any]]:
    """In realtime mode (the microphone stays open): ask for a story, and while it plays make
    ``sound``; read every reply."""
    app, fakes, events = make_app(tmp_path, **session)
    fakes.agent.answers[STORY] = ANSWER
    fakes.agent.delta_delay = 0.3  # the reply is still being made while the user makes the sound
    replies = []
    microphone = np.concatenate([speech(STORY), np.zeros(24000, np.float32), sound])
    async with open_device(app) as device:
        await device.listen_start("realtime")
        async with trio.open_nursery() as nursery:

            async def read() -> None:
                while True:
                    replies.append(await device.receive_reply())

            nursery.start_soon(read)
            await device.speak(microphone, trailing_silence=2.0)
            await trio.sleep(20)
            nursery.cancel_scope.cancel()
    return fakes, events, replies


async def test_a_cough_over_the_reply_does_not_stop_it(tmp_path: Path, autojump_clock: Any) -> None:
    fakes, events, replies = await talk_over_a_playing_reply(tmp_path, speech("ahem", 0.3))
    assert [e.outcome for e in events.of(TurnEnded)] == ["completed"]
    assert [r.text for r in fakes.agent.requests] == [STORY] and fakes.agent.cancelled == 0
    assert [r.stt for r in replies] == [STORY]  # the cough was not shown or answered


async def test_an_uh_huh_over_the_reply_does_not_stop_it(tmp_path: Path, autojump_clock: Any) -> None:
    fakes, events, replies = await talk_over_a_playing_reply(tmp_path, speech("uh-huh", 0.45))
    assert [e.outcome for e in events.of(TurnEnded)] == ["completed"]
    assert [r.text for r in fakes.agent.requests] == [STORY]
    assert "uh-huh" in fakes.asr.heard  # it was heard, and let go


async def test_real_speech_over_the_reply_interrupts_and_is_answered(tmp_path: Path, autojump_clock: Any) -> None:
    fakes, events, replies = await talk_over_a_playing_reply(tmp_path, speech("wait stop talking", 1.2))
    assert [e.outcome for e in events.of(TurnEnded)] == ["interrupted", "completed"]
    assert [r.text for r in fakes.agent.requests] == [STORY, "wait stop talking"]
    assert replies[-1].stt == "wait stop talking"


async def test_without_the_noise_rule_any_sound_interrupts(tmp_path: Path, autojump_clock: Any) -> None:
    fakes, events, _ = await talk_over_a_playing_reply(tmp_path, speech("ahem", 0.3), barge_in_ignores_noise=False)
    assert [e.outcome for e in events.of(TurnEnded)][0] == "interrupted"

"""Typed text and wake words over the device protocol: ``listen detect`` carries either."""

from __future__ import annotations

import pytest
import trio

from xiaozhi_trio.pipeline.events import TurnEnded
from xiaozhi_trio.pipeline.messages import TypedText, WakeWordDetected
from xiaozhi_trio.pipeline.session.reader import WakeWords

from xiaozhi_trio.plugins.testing.fakes.backends import speech
from xiaozhi_trio.plugins.testing.harness import make_app, open_device


async def test_typed_text_is_shown_and_answered_like_speech(tmp_path, autojump_clock):
    app, fakes, events = make_app(tmp_path)
    fakes.agent.answers["what is the capital of France"] = "Paris. A lovely city."
    async with open_device(app) as device:
        await device.send_text("what is the capital of France")
        reply = await device.receive_reply()
    assert reply.stt == "what is the capital of France"
    assert reply.sentences == ["Paris.", "A lovely city."]
    assert reply.stt_at <= reply.tts_start_at
    assert reply.packets and reply.stray_packets == 0
    assert [r.text for r in fakes.agent.requests] == ["what is the capital of France"]
    assert [e.outcome for e in events.of(TurnEnded)] == ["completed"]


@pytest.mark.parametrize("text", ["你好小智", "Hi, XiaoZhi!", ""])
async def test_a_wake_word_is_greeted_and_not_sent_to_the_agent(tmp_path, autojump_clock, text):
    app, fakes, _ = make_app(tmp_path, wake_word_greeting="I'm here.")
    async with open_device(app) as device:
        await device.wake_word(text)
        reply = await device.receive_reply()
    assert reply.stt is None
    assert reply.sentences == ["I'm here."]
    assert reply.packets
    assert fakes.agent.requests == []


async def test_the_firmware_listens_while_it_is_greeted(tmp_path, autojump_clock):
    """The firmware sends its wake word and then ``listen start`` at once: the greeting plays,
    then the question asked after it is answered."""
    app, fakes, events = make_app(tmp_path, wake_word_greeting="I'm here.")
    fakes.agent.answers["what time is it"] = "It is noon."
    async with open_device(app) as device:
        await device.wake_word("你好小智")
        await device.listen_start("auto")
        greeting = await device.receive_reply()
        answer, _ = await device.ask(speech("what time is it"))
    assert greeting.sentences == ["I'm here."] and greeting.packets
    assert answer.stt == "what time is it" and answer.sentences == ["It is noon."]
    assert [e.outcome for e in events.of(TurnEnded)] == ["completed", "completed"]


async def test_without_a_greeting_a_wake_word_says_nothing(tmp_path, autojump_clock):
    app, fakes, events = make_app(tmp_path, wake_word_greeting="")
    async with open_device(app) as device:
        await device.wake_word("你好小智")
        with trio.move_on_after(5):
            message = await device.receive()
            pytest.fail(f"the server answered a wake word: {message!r}")
    assert fakes.agent.requests == []
    assert events.of(TurnEnded) == []


async def test_configured_wake_words_replace_the_defaults(tmp_path, autojump_clock):
    app, fakes, _ = make_app(tmp_path, wake_words=("hey jarvis",), wake_word_greeting="Yes?")
    async with open_device(app) as device:
        await device.wake_word("Hey Jarvis")
        greeting = await device.receive_reply()
        await device.send_text("你好小智")  # not a wake word here: a message
        answer = await device.receive_reply()
    assert greeting.sentences == ["Yes?"]
    assert answer.stt == "你好小智"
    assert [r.text for r in fakes.agent.requests] == ["你好小智"]


async def test_typed_text_during_a_reply_replaces_it(tmp_path, autojump_clock):
    app, fakes, events = make_app(tmp_path)
    fakes.agent.answers["tell me a story"] = " ".join(f"This is sentence {i} of the story." for i in range(30))
    fakes.agent.answers["stop, what time is it"] = "It is noon."
    async with open_device(app) as device:
        await device.send_text("tell me a story")
        while isinstance(await device.receive(), dict):
            pass  # until the story's audio flows
        await device.send_text("stop, what time is it")
        story = await device.receive_reply()
        answer = await device.receive_reply()
    assert story.stt == "stop, what time is it"  # shown at once, before the story's tts stop
    assert answer.sentences == ["It is noon."]
    assert answer.stray_packets == 0
    assert [e.outcome for e in events.of(TurnEnded)] == ["interrupted", "completed"]


@pytest.mark.parametrize(
    "text, wake_word",
    [("你好小智", True), ("你好 小智。", True), ("HI ESP", True), ("hi-esp", True), ("", True), ("  ", True), ("你好", False), ("hi espresso", False)],
)
def test_wake_words_are_compared_without_case_spaces_or_punctuation(text, wake_word):
    routed = WakeWords(["你好小智", "Hi ESP"]).classify(WakeWordDetected(text))
    assert routed == (WakeWordDetected(text) if wake_word else TypedText(text.strip()))

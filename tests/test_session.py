"""Protocol conformance: a device speaking the firmware's side, for every framing version and
listen mode, against a session with test-double backends."""

from __future__ import annotations

import numpy as np
import pytest
import trio
from trio_websocket import ConnectionClosed

from xiaozhi_trio.pipeline.audio.opus import OpusDecoder
from xiaozhi_trio.pipeline.backends import BackendError
from xiaozhi_trio.pipeline.config import RecordingConfig
from xiaozhi_trio.pipeline.events import FirstAudio, SessionError, SessionOpened, TurnEnded
from xiaozhi_trio.pipeline.messages import AgentText

from xiaozhi_trio.plugins.testing.fakes.backends import speech
from xiaozhi_trio.plugins.testing.harness import make_app, open_device

VERSIONS = [1, 2, 3]


@pytest.mark.parametrize("version", VERSIONS)
async def test_server_hello_follows_the_firmware_contract(tmp_path, autojump_clock, version):
    app, _, _ = make_app(tmp_path)
    async with open_device(app, protocol_version=version) as device:
        hello = device.server_hello
    assert hello["type"] == "hello"
    assert hello["transport"] == "websocket"
    assert hello["session_id"]
    assert hello["audio_params"] == {"format": "opus", "sample_rate": 24000, "channels": 1, "frame_duration": 60}


@pytest.mark.parametrize("version", VERSIONS)
async def test_auto_mode_turn(tmp_path, autojump_clock, version):
    app, fakes, events = make_app(tmp_path)
    fakes.agent.answers["what time is it"] = "It is three o'clock. Time for tea!"
    async with open_device(app, protocol_version=version) as device:
        await device.listen_start("auto")
        await device.speak(speech("what time is it"))
        reply = await device.receive_reply()
    assert reply.stt == "what time is it"
    assert reply.sentences == ["It is three o'clock.", "Time for tea!"]
    assert reply.stray_packets == 0
    assert reply.stt_at <= reply.tts_start_at <= reply.first_audio_at <= reply.tts_stop_at
    # Every packet is exactly one 60 ms frame (the decoder's native 48 kHz shows it exactly).
    decoder = OpusDecoder(48000)
    assert {len(decoder.decode(p)) for p in reply.packets} == {2880}
    expected_seconds = sum(len(s) for s in fakes.tts.spoken) * fakes.tts.seconds_per_char
    assert len(reply.packets) * 0.06 == pytest.approx(expected_seconds, abs=0.06 * len(fakes.tts.spoken) + 0.001)
    assert [e.outcome for e in events.of(TurnEnded)] == ["completed"]
    assert events.of(FirstAudio)


@pytest.mark.parametrize("version", VERSIONS)
async def test_each_sentence_is_framed_by_marks_that_carry_its_text(tmp_path, autojump_clock, version):
    app, fakes, _ = make_app(tmp_path)
    fakes.agent.answers["what time is it"] = "It is three o'clock. Time for tea!"
    async with open_device(app, protocol_version=version) as device:
        await device.listen_start("auto")
        await device.speak(speech("what time is it"))
        reply = await device.receive_reply()
    marks = [(m["state"], m.get("text")) for m in reply.messages if m["type"] == "tts" and "sentence" in m["state"]]
    assert marks == [
        ("sentence_start", "It is three o'clock."),
        ("sentence_end", "It is three o'clock."),
        ("sentence_start", "Time for tea!"),
        ("sentence_end", "Time for tea!"),
    ]
    assert all(m["session_id"] == device.server_hello["session_id"] for m in reply.messages if m["type"] == "tts")


async def test_reply_audio_is_the_synthesized_audio(tmp_path, autojump_clock):
    app, fakes, _ = make_app(tmp_path)
    fakes.agent.answers["hi"] = "Hello there, nice to meet you."
    async with open_device(app) as device:
        await device.listen_start("auto")
        await device.speak(speech("hi"))
        reply = await device.receive_reply()
    audio = reply.audio(24000).samples
    spectrum = np.abs(np.fft.rfft(audio))
    assert np.argmax(spectrum) * 24000 / len(audio) == pytest.approx(440, abs=10)


async def test_manual_mode_turn_ends_at_listen_stop(tmp_path, autojump_clock):
    app, fakes, _ = make_app(tmp_path)
    async with open_device(app, protocol_version=2) as device:
        await device.listen_start("manual")
        # Push-to-talk: no trailing silence, the button release ends the utterance.
        await device.send_packets(device.encode(speech("turn on the light", 0.8)))
        await device.listen_stop()
        reply = await device.receive_reply()
    assert reply.stt == "turn on the light"
    assert fakes.agent.requests[0].text == "turn on the light"
    assert reply.packets


async def test_manual_mode_speech_without_listen_stop_starts_no_turn(tmp_path, autojump_clock):
    app, fakes, _ = make_app(tmp_path)
    async with open_device(app) as device:
        await device.listen_start("manual")
        await device.speak(speech("hello"), trailing_silence=2.0)
        with trio.move_on_after(5):
            await device.receive()
    assert fakes.agent.requests == []


async def test_audio_without_listen_is_ignored(tmp_path, autojump_clock):
    app, fakes, _ = make_app(tmp_path)
    async with open_device(app) as device:
        await device.speak(speech("hello"))
        with trio.move_on_after(5):
            await device.receive()
    assert fakes.asr.heard == []
    assert fakes.vad.streams_opened == 0


async def test_consecutive_turns_in_auto_mode(tmp_path, autojump_clock):
    app, fakes, events = make_app(tmp_path)
    async with open_device(app, protocol_version=3) as device:
        for phrase in ["one", "two", "three"]:
            await device.listen_start("auto")
            await device.speak(speech(phrase))
            reply = await device.receive_reply()
            assert reply.stt == phrase
    assert [r.text for r in fakes.agent.requests] == ["one", "two", "three"]
    assert [e.outcome for e in events.of(TurnEnded)] == ["completed"] * 3


async def _reply_in_progress(device, phrase: str):
    """Ask, then read until the reply's audio is flowing."""
    await device.speak(speech(phrase))
    while True:
        item = await device.receive()
        if not isinstance(item, dict):
            return


def _long_answer() -> str:
    return " ".join(f"This is sentence number {i} of a very long answer." for i in range(40))


@pytest.mark.parametrize("interrupt", ["abort", "wake_word"])
async def test_interruption_stops_the_reply_within_a_frame(tmp_path, autojump_clock, interrupt):
    app, fakes, events = make_app(tmp_path)
    fakes.agent.answers["tell me a story"] = _long_answer()
    fakes.agent.delta_delay = 0.05
    async with open_device(app) as device:
        await device.listen_start("auto")
        await _reply_in_progress(device, "tell me a story")
        sent_at = trio.current_time()
        if interrupt == "abort":
            await device.abort()
        else:
            await device.wake_word("你好小智")
        while True:
            item = await device.receive()
            if isinstance(item, dict) and item.get("type") == "tts" and item.get("state") == "stop":
                stopped_at = trio.current_time()
                break
        # Nothing of the old turn may follow the stop; a wake word is greeted in a turn of its own.
        after: list = []
        with trio.move_on_after(3):
            while True:
                after.append(await device.receive())
    stray = [item for item in after if not isinstance(item, dict)]
    assert stopped_at - sent_at <= 0.06
    assert fakes.agent.cancelled == 1
    if interrupt == "abort":
        assert stray == []
        assert [e.outcome for e in events.of(TurnEnded)] == ["interrupted"]
    else:
        texts = [(m["state"], m.get("text")) for m in after if isinstance(m, dict) and m.get("type") == "tts"]
        assert (after[0]["type"], after[0]["state"]) == ("tts", "start")  # no audio before the greeting
        assert ("sentence_start", app.config.session.wake_word_greeting) in texts
        assert texts[-1] == ("stop", None)
        assert stray
        assert [e.outcome for e in events.of(TurnEnded)] == ["interrupted", "completed"]


async def test_realtime_barge_in_replaces_the_reply(tmp_path, autojump_clock):
    app, fakes, events = make_app(tmp_path)
    fakes.agent.answers["tell me a story"] = _long_answer()
    fakes.agent.delta_delay = 0.05
    async with open_device(app) as device:
        await device.listen_start("realtime")
        await _reply_in_progress(device, "tell me a story")
        # Full duplex: the user talks over the reply.
        nursery_reply = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(device.speak, speech("stop"))
            reply = await device.receive_reply()  # the interrupted reply ends with tts stop
            nursery_reply = await device.receive_reply()  # then the answer to "stop"
    assert reply.tts_stop_at is not None
    assert nursery_reply.stt == "stop"
    assert nursery_reply.stray_packets == 0
    assert [e.outcome for e in events.of(TurnEnded)] == ["interrupted", "completed"]


async def test_no_barge_in_in_auto_mode_by_default(tmp_path, autojump_clock):
    app, fakes, events = make_app(tmp_path)
    fakes.agent.answers["hi"] = "Hello! " * 5
    async with open_device(app) as device:
        await device.listen_start("auto")
        await device.speak(speech("hi"))
        reply = await device.receive_reply()
    assert [e.outcome for e in events.of(TurnEnded)] == ["completed"]
    assert len(reply.sentences) == 5


async def test_downlink_is_paced_within_the_device_buffer(tmp_path, autojump_clock):
    app, fakes, _ = make_app(tmp_path)
    fakes.agent.answers["talk"] = _long_answer()  # ~40 s of audio
    async with open_device(app) as device:
        reply, _ = await device.ask(speech("talk"))
    frame = 0.06
    lead_limit = app.config.audio.downlink_lead_ms / 1000
    start = reply.packet_times[0]
    assert len(reply.packets) * frame > 30
    for index, at in enumerate(reply.packet_times):
        # Audio the device holds when this packet arrives never exceeds the configured lead.
        assert (index + 1) * frame - (at - start) <= lead_limit + 1e-6
    gaps = np.diff(reply.packet_times)
    assert gaps.max() <= frame + 1e-6


async def test_agent_failure_is_apologised_for_and_the_session_goes_on(tmp_path, autojump_clock):
    app, fakes, events = make_app(tmp_path)
    fakes.agent.answers["first"] = "Well, the answer is forty two. And more."
    fakes.agent.fail_after = 3
    async with open_device(app) as device:
        await device.listen_start("auto")
        await device.speak(speech("first"))
        reply = await device.receive_reply()
        # "Well, the answer" was unfinished: the device hears only the apology.
        assert " ".join(reply.sentences) == app.config.session.apology_text
        fakes.agent.fail_after = None
        await device.listen_start("auto")
        await device.speak(speech("second"))
        second = await device.receive_reply()
    assert second.stt == "second"
    assert any(e.kind.startswith("agent:") for e in events.of(SessionError))
    assert [e.outcome for e in events.of(TurnEnded)] == ["failed", "completed"]


def agent_failing_after(*deltas: str):
    """A stand-in for ``FakeAgent.respond``: streams ``deltas``, then fails."""

    async def respond(request, send):
        for delta in deltas:
            await send.send(AgentText(delta))
            await trio.sleep(0.05)
        raise BackendError("the stream broke off", kind="stream_cut")

    return respond


@pytest.mark.parametrize(
    ("deltas", "heard"),
    [
        # Half a word: dropped, with the rest of its sentence.
        (("The weather is", " fine today. The we"), ["The weather is fine today."]),
        (("The we",), []),
        # An unfinished sentence ends at its last complete clause.
        (("Sure. Tomorrow will be sunny,", " with a high of tw"), ["Sure.", "Tomorrow will be sunny,"]),
        (("明天是晴天，", "最高气温二十"), ["明天是晴天，"]),
        # A number cut after its point is not a sentence end.
        (("It is 3.",), []),
    ],
)
async def test_an_agent_failing_mid_sentence_drops_the_fragment_before_the_apology(
    tmp_path, autojump_clock, deltas, heard
):
    app, fakes, events = make_app(tmp_path)
    fakes.agent.respond = agent_failing_after(*deltas)  # type: ignore[method-assign]
    apology = app.config.session.apology_text
    async with open_device(app) as device:
        await device.listen_start("auto")
        await device.speak(speech("what about tomorrow"))
        reply = await device.receive_reply()
    assert reply.sentences[: len(heard)] == heard
    assert " ".join(reply.sentences[len(heard) :]) == apology
    assert fakes.tts.spoken == reply.sentences
    assert [m["text"] for m in reply.messages if m.get("state") == "sentence_end"] == reply.sentences
    assert [e.outcome for e in events.of(TurnEnded)] == ["failed"]


async def test_tts_failure_still_shows_the_sentence(tmp_path, autojump_clock):
    app, fakes, _ = make_app(tmp_path)
    fakes.agent.answers["q"] = "First part is fine. Second part explodes. Third part is fine."
    fakes.tts.fail_on = "explodes"
    async with open_device(app) as device:
        await device.listen_start("auto")
        await device.speak(speech("q"))
        reply = await device.receive_reply()
    assert reply.sentences == ["First part is fine.", "Second part explodes.", "Third part is fine."]
    assert fakes.tts.spoken == ["First part is fine.", "Third part is fine."]


async def test_recognizer_failure_is_apologised_for(tmp_path, autojump_clock):
    app, fakes, _ = make_app(tmp_path)
    fakes.asr.fail = True
    async with open_device(app) as device:
        await device.listen_start("auto")
        await device.speak(speech("anything"))
        reply = await device.receive_reply()
    assert " ".join(reply.sentences) == app.config.session.apology_text
    assert fakes.agent.requests == []


async def test_idle_device_hears_goodbye_then_is_closed(tmp_path, autojump_clock):
    app, fakes, _ = make_app(tmp_path, idle_timeout=60.0)
    async with open_device(app) as device:
        await device.listen_start("auto")
        reply = await device.receive_reply()
        assert " ".join(reply.sentences) == app.config.session.goodbye_text
        assert trio.current_time() >= 60
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                await device.receive()
    assert (closed.value.reason.code, closed.value.reason.reason) == (1000, "idle timeout")


async def test_keepalive_keeps_the_firmware_timer_from_firing(tmp_path, autojump_clock):
    app, _, _ = make_app(tmp_path, idle_timeout=0)
    arrivals = []
    async with open_device(app) as device:
        with trio.move_on_after(400):
            while True:
                await device.receive()
                arrivals.append(trio.current_time())
    gaps = np.diff([0.0, *arrivals])
    assert len(arrivals) >= 8
    assert gaps.max() < 120


async def test_reconnecting_device_replaces_its_old_session(tmp_path, autojump_clock):
    app, _, _ = make_app(tmp_path)
    async with open_device(app, device_id="aa:bb") as first:
        assert app.sessions.count == 1
        async with open_device(app, device_id="aa:bb") as second:
            with trio.fail_after(5), pytest.raises(ConnectionClosed) as closed:
                while True:
                    await first.receive()
            assert closed.value.reason.reason == "replaced by a newer connection of the same device"
            assert second.session_id != first.session_id
            assert app.sessions.count == 1
            reply, _ = await second.ask(speech("still there"))
            assert reply.stt == "still there"


async def test_recordings_keep_the_utterance_and_the_reply(tmp_path, autojump_clock):
    import dataclasses
    import json

    import soundfile

    from xiaozhi_trio.plugins.testing.harness import fake_config

    config = dataclasses.replace(fake_config(tmp_path), recording=RecordingConfig(enabled=True))
    app, fakes, _ = make_app(tmp_path, config=config)
    fakes.agent.answers["remember this"] = "I will remember."
    async with open_device(app, device_id="aa:bb:cc") as device:
        reply, _ = await device.ask(speech("remember this"))
    folder = tmp_path / "recordings" / "aa_bb_cc"
    (sidecar,) = folder.glob("*.json")
    meta = json.loads(sidecar.read_text())
    assert meta["transcript"] == "remember this"
    assert meta["reply_text"] == "I will remember."
    user, rate = soundfile.read(folder / meta["user"]["file"])
    assert rate == 16000 and len(user) / rate > 0.9
    spoken, rate = soundfile.read(folder / meta["reply"]["file"])
    assert rate == 24000
    assert len(spoken) / rate == pytest.approx(len(reply.packets) * 0.06, abs=0.07)


async def test_agent_usage_reaches_observers(tmp_path, autojump_clock):
    from xiaozhi_trio.pipeline.events import AgentUsage

    app, fakes, events = make_app(tmp_path)
    original = fakes.agent.respond

    async def respond_with_usage(request, send):
        await original(request, send)
        request.report_usage(12, 34)

    fakes.agent.respond = respond_with_usage  # type: ignore[method-assign]
    async with open_device(app) as device:
        await device.ask(speech("count tokens"))
    (usage,) = events.of(AgentUsage)
    assert (usage.input_tokens, usage.output_tokens) == (12, 34)


@pytest.mark.parametrize("version", VERSIONS)
async def test_browser_without_headers_names_its_framing_in_the_hello(tmp_path, autojump_clock, version):
    """No headers at all (a browser): ids from the query, framing from the hello's version."""
    app, _, events = make_app(tmp_path)
    path = "/xiaozhi/v1/?device-id=aa:bb:cc:dd:ee:ff&client-id=browser-1"
    async with open_device(app, path=path, headers=[], protocol_version=version) as device:
        reply, _ = await device.ask(speech("hello from a browser"))
    assert reply.stt == "hello from a browser"
    assert reply.packets
    (opened,) = events.of(SessionOpened)
    assert (opened.device_id, opened.client_id, opened.protocol_version) == ("aa:bb:cc:dd:ee:ff", "browser-1", version)

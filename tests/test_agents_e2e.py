"""The Coze agent inside the whole pipeline: a device speaks, the (fake, loopback) Coze answers,
the device hears it. Real clock: the fake Coze is a real HTTP server."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import trio

import xiaozhi_trio.plugins.coze.plugin as coze_plugin
from xiaozhi_trio.pipeline.config import BackendConfig

from xiaozhi_trio.plugins.testing.fakes.backends import FakeBackends, speech
from xiaozhi_trio.plugins.testing.fakes.fake_coze import FAKE_BOT_ID, FAKE_TOKEN, FakeCoze, ToolRule
from xiaozhi_trio.plugins.testing.fakes.mcp_device import SimulatedDevice
from xiaozhi_trio.plugins.testing.harness import fake_config, make_app, open_device

ANSWER = "The weather is sunny today. It will be warm in the afternoon. Take a hat with you. Have a nice day."


@pytest.fixture
async def coze(nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch) -> FakeCoze:
    monkeypatch.setenv("COZE_API_TOKEN", FAKE_TOKEN)
    fake = FakeCoze(answer=ANSWER, delta_chars=6, delta_interval=0.05)
    await nursery.start(fake.serve)
    return fake


def coze_app(tmp_path: Path, coze: FakeCoze, fakes: FakeBackends | None = None):
    base = fake_config(tmp_path)
    config = base.with_backend("agent", BackendConfig("coze", {"bot_id": FAKE_BOT_ID, "base_url": coze.url}))
    return make_app(tmp_path, fakes, config=config, plugins=(coze_plugin,))


def chat_requests(coze: FakeCoze) -> list:
    return coze.requests_to("/v3/chat")


async def test_spoken_question_reaches_coze_and_the_answer_is_spoken_while_it_streams(tmp_path, coze):
    app, _, _ = coze_app(tmp_path, coze)
    async with open_device(app) as device:
        reply, _ = await device.ask(speech("what is the weather"))
    (chat,) = chat_requests(coze)
    assert chat.body["additional_messages"][0]["content"] == "what is the weather"
    assert reply.stt == "what is the weather"
    assert " ".join(reply.sentences) == ANSWER
    (fake_chat,) = coze.chats.values()
    # The device was already hearing the answer before Coze had finished sending it.
    assert reply.first_audio_at < fake_chat.answer_sent_at[-1]
    await app.aclose()


async def test_barge_in_frees_the_conversation_for_the_next_turn(tmp_path, coze):
    coze.answer = " ".join(f"Here is part {i} of a long story." for i in range(40))
    coze.delta_interval = 0.05
    app, _, _ = coze_app(tmp_path, coze)
    async with open_device(app) as device:
        await device.listen_start("auto")
        await device.speak(speech("tell me a story"), trailing_silence=0.5)
        while isinstance(await device.receive(), dict):  # until the reply's audio flows
            pass
        await device.abort()
        interrupted = await device.receive_reply()  # the rest of the old reply, up to tts stop
        assert interrupted.tts_stop_at is not None
        coze.answer = "Sure, stopping."
        coze.delta_interval = 0.0
        reply, _ = await device.ask(speech("stop please"))
    assert " ".join(reply.sentences) == "Sure, stopping."
    assert len(coze.requests_to("/v3/chat/cancel")) == 1
    assert [c.status for c in coze.chats.values()] == ["canceled", "completed"]  # Coze spells it so
    await app.aclose()


async def test_memory_survives_reconnects_and_restarts(tmp_path, coze):
    app, _, _ = coze_app(tmp_path, coze)
    async with open_device(app, device_id="aa:bb:cc:00:00:01") as device:
        await device.ask(speech("my name is Ada"))
    async with open_device(app, device_id="aa:bb:cc:00:00:01") as device:
        await device.ask(speech("what is my name"))
    await app.aclose()
    restarted, _, _ = coze_app(tmp_path, coze)  # a new process would open the same database
    async with open_device(restarted, device_id="aa:bb:cc:00:00:01") as device:
        await device.ask(speech("and now"))
    async with open_device(restarted, device_id="aa:bb:cc:00:00:02") as device:
        await device.ask(speech("who am I"))
    conversations = [c.query["conversation_id"] for c in chat_requests(coze)]
    assert conversations[0] == conversations[1] == conversations[2]
    assert conversations[3] != conversations[0]  # another device, another memory
    assert len(coze.requests_to("/v1/conversation/create")) == 2
    await restarted.aclose()


@pytest.mark.parametrize(
    "name_in_coze",
    [
        "self__audio_speaker__set_volume",  # the server's function name
        "self.audio_speaker.set_volume",  # the device's own name
        "self_audio_speaker_set_volume",  # dots written as underscores
        "set_volume",  # the last segment, unambiguous on this device
    ],
)
async def test_volume_request_runs_the_device_tool(tmp_path, coze, name_in_coze):
    coze.tool_rules = [ToolRule("volume", name_in_coze, {"volume": 30}, "Done, the device said {output}.")]
    app, _, _ = coze_app(tmp_path, coze)
    simulated = SimulatedDevice(volume=70)
    async with open_device(app, features={"mcp": True}) as device:
        device.mcp_handler = simulated.handle
        reply, _ = await device.ask(speech("turn the volume down to thirty"))
    assert simulated.volume == 30
    text = " ".join(reply.sentences)
    assert text.startswith("Done, the device said") and "true" in text.lower()
    await app.aclose()


async def test_a_tool_name_that_resolves_to_nothing_gets_the_valid_names(tmp_path, coze, caplog):
    coze.tool_rules = [ToolRule("volume", "change_volume", {"volume": 30}, "Tool said: {output}")]
    app, _, _ = coze_app(tmp_path, coze)
    simulated = SimulatedDevice(volume=70)
    async with open_device(app, features={"mcp": True}) as device:
        device.mcp_handler = simulated.handle
        reply, _ = await device.ask(speech("turn the volume down to thirty"))
    assert simulated.volume == 70 and simulated.calls == []
    (submit,) = coze.requests_to("/v3/chat/submit_tool_outputs")
    output = submit.body["tool_outputs"][0]["output"]
    assert output.startswith("error: there is no tool called 'change_volume'; the tools are: ")
    assert "self.audio_speaker.set_volume" in output and "self.get_device_status" in output
    assert "change_volume" in caplog.text and "self.audio_speaker.set_volume" in caplog.text
    assert reply.sentences  # the bot still answers (here: with the error)
    await app.aclose()

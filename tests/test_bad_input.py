"""Bad input from a device: each gets a specific, logged reaction; the session (or at least every
other session) goes on, and no task is left behind."""

from __future__ import annotations

import json
import struct

import pytest
import trio
import trio.testing
from trio_websocket import ConnectionClosed

from xiaozhi_trio.pipeline.events import SessionClosed, SessionError, TurnEnded

from xiaozhi_trio.plugins.testing.fakes.backends import speech
from xiaozhi_trio.plugins.testing.harness import StallingStream, make_app, open_device, rejection_status


async def _still_answers(device, phrase: str = "are you there") -> None:
    reply, _ = await device.ask(speech(phrase))
    assert reply.stt == phrase
    assert reply.packets


def _kinds(events) -> list[str]:
    return [e.kind for e in events.of(SessionError)]


@pytest.mark.parametrize(
    "message, kind",
    [
        ("{not json", "bad_message"),
        ("[1, 2, 3]", "bad_message"),
        (json.dumps({"type": "dance"}), "bad_message"),
        (json.dumps({"no_type": True}), "bad_message"),
        (json.dumps({"type": "listen", "state": "sing"}), "bad_message"),
        (json.dumps({"type": "listen", "state": "start", "mode": "psychic"}), "bad_message"),
        (json.dumps({"type": "mcp", "payload": "not an object"}), "bad_message"),
    ],
)
async def test_bad_text_messages_are_ignored_with_a_warning(tmp_path, autojump_clock, caplog, message, kind):
    app, _, events = make_app(tmp_path)
    async with open_device(app) as device:
        await device.ws.send_message(message)
        await _still_answers(device)
    assert kind in _kinds(events)
    assert "text message ignored" in caplog.text


async def test_audio_before_hello_is_ignored(tmp_path, autojump_clock, caplog):
    app, _, events = make_app(tmp_path)
    async with open_device(app, hello=False) as device:
        await device.ws.send_message(device.encode(speech("early", 0.2))[0])
        await device.hello()
        await _still_answers(device)
    assert "audio_before_hello" in _kinds(events)


async def test_second_hello_gets_the_same_answer(tmp_path, autojump_clock):
    app, _, events = make_app(tmp_path)
    async with open_device(app) as device:
        first = device.server_hello
        second = await device.hello()
        await _still_answers(device)
    assert second == first
    assert "second_hello" in _kinds(events)


@pytest.mark.parametrize(
    "payload, kind",
    [
        (b"", "bad_frame"),  # empty binary message
        (b"\xff" * 40, "bad_audio"),  # not Opus
        (b"\x03\x00", "bad_audio"),  # code-3 packet claiming zero frames
        # Some garbage is valid Opus (this is 10 ms of silence): it decodes and does no harm.
        (b"\x00" * 3, None),
    ],
    ids=["empty", "ff", "zero-frames", "valid-silence"],
)
async def test_garbage_audio_is_dropped_and_the_session_goes_on(tmp_path, autojump_clock, payload, kind):
    app, _, events = make_app(tmp_path)
    async with open_device(app) as device:
        await device.listen_start("auto")
        for _ in range(5):
            await device.ws.send_message(payload)
        await _still_answers(device)
    if kind is not None:
        assert _kinds(events).count(kind) == 5


@pytest.mark.parametrize(
    "version, message",
    [
        (2, struct.pack(">HHIII", 2, 0, 0, 0, 300) + b"\x01" * 120),  # says 300, carries 120
        (2, struct.pack(">HHIII", 2, 0, 0, 0, 10) + b"\x01" * 50),  # says 10, carries 50
        (2, b"\x00\x02\x00"),  # shorter than the header
        (3, struct.pack(">BBH", 0, 0, 200) + b"\x01" * 20),
        (3, struct.pack(">BBH", 9, 0, 2) + b"\x01\x02"),  # unknown type
    ],
)
async def test_framing_header_that_disagrees_with_the_payload(tmp_path, autojump_clock, version, message):
    app, _, events = make_app(tmp_path)
    async with open_device(app, protocol_version=version) as device:
        await device.ws.send_message(message)
        await _still_answers(device)
    assert "bad_frame" in _kinds(events)


@pytest.mark.parametrize("version", ["7", "two", "0"])
async def test_unknown_protocol_version_is_rejected_at_the_handshake(tmp_path, autojump_clock, version):
    app, _, _ = make_app(tmp_path)
    headers = [(b"Protocol-Version", version.encode()), (b"Device-Id", b"aa")]
    assert await rejection_status(app, headers=headers) == 400
    assert app.sessions.count == 0


async def test_wrong_path_is_404(tmp_path, autojump_clock):
    app, _, _ = make_app(tmp_path)
    assert await rejection_status(app, path="/somewhere/else") == 404


async def test_oversize_message_closes_only_that_connection(tmp_path, autojump_clock):
    app, _, _ = make_app(tmp_path)
    async with open_device(app, device_id="bb") as other:
        async with open_device(app, device_id="aa") as device:
            await device.ws.send_message(b"\x00" * (app.config.server.max_message_bytes + 1))
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    await device.receive()
            assert closed.value.reason.code == 1009  # message too big
        await _still_answers(other)


async def test_no_hello_closes_the_connection(tmp_path, autojump_clock):
    app, _, events = make_app(tmp_path)
    async with open_device(app, hello=False) as device:
        with pytest.raises(ConnectionClosed):
            while True:
                await device.receive()
        assert trio.current_time() >= app.config.session.hello_timeout
    assert app.sessions.count == 0
    assert events.of(SessionClosed) == []  # no session was ever opened


async def test_disconnect_mid_turn_cancels_the_agent_and_ends_cleanly(tmp_path, autojump_clock):
    app, fakes, events = make_app(tmp_path)
    fakes.agent.answers["long"] = "Word " * 500
    fakes.agent.delta_delay = 0.05
    async with open_device(app) as device:
        await device.listen_start("auto")
        await device.speak(speech("long"))
        # Read until audio flows, then vanish (the firmware never sends a close frame).
        while isinstance(await device.receive(), dict):
            pass
    # open_device waited for the server side to finish: the session and all its tasks are gone.
    assert app.sessions.count == 0
    assert fakes.agent.cancelled == 1
    assert [e.outcome for e in events.of(TurnEnded)] == ["interrupted"]
    assert [e.reason for e in events.of(SessionClosed)] == ["device disconnected"]


async def test_device_that_stops_reading_is_disconnected(tmp_path, autojump_clock):
    app, fakes, events = make_app(tmp_path, send_timeout=5.0)
    fakes.agent.answers["long"] = "Word " * 2000
    streams: list[StallingStream] = []

    def stalling_pair():
        client, server = trio.testing.memory_stream_pair()
        streams.append(StallingStream(server))
        return client, streams[-1]

    async with open_device(app, stream_pair=stalling_pair) as device:
        await device.listen_start("auto")
        await device.speak(speech("long"))
        while isinstance(await device.receive(), dict):
            pass
        streams[0].stall()  # the device stops reading; the server must give up on its own
        with trio.fail_after(120):
            while app.sessions.count:
                await trio.sleep(1)
    reasons = [e.reason for e in events.of(SessionClosed)]
    assert reasons == ["device stopped reading: the device read nothing for 5 s"]


async def test_misbehaving_device_does_not_disturb_another(tmp_path, autojump_clock):
    app, _, _ = make_app(tmp_path)
    async with open_device(app, device_id="good") as good, open_device(app, device_id="bad", protocol_version=2) as bad:
        async with trio.open_nursery() as nursery:

            async def misbehave() -> None:
                await bad.listen_start("auto")
                for i in range(200):
                    await bad.ws.send_message(b"\xde\xad" * (i % 7))
                    await bad.ws.send_message("{oops" if i % 2 else json.dumps({"type": "nope"}))
                    await trio.sleep(0.01)

            nursery.start_soon(misbehave)
            for phrase in ("one", "two"):
                await _still_answers(good, phrase)

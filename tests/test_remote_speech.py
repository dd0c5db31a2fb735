"""Speech on another machine: the sherpa-onnx WebSocket recognizer client and the OpenAI-compatible
speech client, against faithful stand-ins of both servers on loopback; failures become
``BackendError`` and the device hears the apology."""

from __future__ import annotations

import socket

import numpy as np
import pytest
import trio
from xiaozhi_trio.pipeline.backends import BackendError, ConfigError
from xiaozhi_trio.pipeline.config import parse_config
from xiaozhi_trio.pipeline.messages import PcmChunk
from xiaozhi_trio.plugins import remote_speech
from xiaozhi_trio.plugins.remote_speech import OpenAiSpeech, OpenAiSpeechOptions, RemoteAsrOptions, RemoteRecognizer

from xiaozhi_trio.plugins.testing.fakes.backends import FakeBackends, speech
from xiaozhi_trio.plugins.testing.fakes.fake_openai import FakeOpenAI, HttpReply, Stream
from xiaozhi_trio.plugins.testing.fakes.sherpa_asr_server import FakeSherpaAsrServer
from xiaozhi_trio.plugins.testing.harness import make_app, open_device


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def recognise(url: str, samples: np.ndarray, **options: float) -> str:
    recognizer = RemoteRecognizer(RemoteAsrOptions(url=url, **options))
    stream = recognizer.open_stream()
    assert await stream.accept(PcmChunk(samples[:1600], 16000)) is None
    return await stream.finish(PcmChunk(samples, 16000))


# ---- recognition ---------------------------------------------------------------------------------


async def test_the_server_recognises_utterances_short_long_and_silent(nursery: trio.Nursery) -> None:
    server = FakeSherpaAsrServer()
    url = await nursery.start(server.serve)
    assert await recognise(url, speech("turn on the light")) == "turn on the light"
    # Eight seconds of float32 is 512 KB: sent in several messages, as the server's size limit needs.
    assert await recognise(url, speech("a long story", seconds=8.0)) == "a long story"
    assert await recognise(url, np.zeros(16000, dtype=np.float32)) == ""
    assert server.utterances == [(16000, 16000), (16000, 128000), (16000, 16000)]


async def test_recognition_failures_are_backend_errors(nursery: trio.Nursery) -> None:
    slow = FakeSherpaAsrServer(delay=60)
    slow_url = await nursery.start(slow.serve)
    with pytest.raises(BackendError) as caught:
        await recognise(slow_url, speech("hello"), timeout=0.5)
    assert caught.value.kind == "timeout"
    busy = FakeSherpaAsrServer(refuse=True)
    busy_url = await nursery.start(busy.serve)
    with pytest.raises(BackendError, match="refused") as caught:
        await recognise(busy_url, speech("hello"))
    assert caught.value.kind == "connect"
    with pytest.raises(BackendError, match="cannot reach") as caught:
        await recognise(f"ws://127.0.0.1:{closed_port()}", speech("hello"))
    assert caught.value.kind == "connect"


def test_options_are_checked() -> None:
    with pytest.raises(ConfigError, match="ws:// or wss://"):
        remote_speech.create_asr(None, {"url": "http://gpu:6006"})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="unknown key"):
        remote_speech.create_asr(None, {"url": "ws://gpu:6006", "timout": 3})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="http"):
        remote_speech.create_tts(None, {"url": "gpu:8880"})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="NO_SUCH_KEY_VAR"):
        remote_speech.create_tts(None, {"url": "http://gpu:8880/v1", "api_key_env": "NO_SUCH_KEY_VAR"})  # type: ignore[arg-type]


# ---- synthesis -----------------------------------------------------------------------------------


def pcm(samples: np.ndarray) -> bytes:
    return (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()


async def synthesise(tts: OpenAiSpeech, text: str) -> list[PcmChunk]:
    send, receive = trio.open_memory_channel[PcmChunk](100)
    async with send, receive:
        await tts.synthesize(text, send)
        send.close()
        return [chunk async for chunk in receive]


async def test_speech_streams_back_as_pcm_even_split_mid_sample(nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch) -> None:
    server = FakeOpenAI(route="/audio/speech")
    base = await nursery.start(server.serve)
    tone = 0.5 * np.sin(np.linspace(0, 200, 4801)).astype(np.float32)
    data = pcm(tone)
    server.script(Stream([data[:1001], data[1001:5000], data[5000:]], done=False))
    monkeypatch.setenv("SPEECH_KEY", "k-123")
    tts = OpenAiSpeech(OpenAiSpeechOptions(url=base, voice="af_bella", model="kokoro", api_key_env="SPEECH_KEY"))
    chunks = await synthesise(tts, "Hello there.")
    await tts.aclose()
    heard = np.concatenate([c.samples for c in chunks])
    assert all(c.sample_rate == 24000 for c in chunks)
    np.testing.assert_allclose(heard, tone, atol=1 / 16000)
    request = server.requests[0]
    assert request.path.endswith("/audio/speech") and request.headers["authorization"] == "Bearer k-123"
    assert request.body == {"model": "kokoro", "input": "Hello there.", "voice": "af_bella", "response_format": "pcm", "speed": 1.0}


async def test_synthesis_failures_are_backend_errors(nursery: trio.Nursery) -> None:
    server = FakeOpenAI(route="/audio/speech")
    base = await nursery.start(server.serve)
    never = trio.Event()
    server.script(HttpReply(500, {"error": {"message": "model not loaded"}}),
                  Stream([b"\x00\x00", b"\x00\x00"], done=False, gate=never, gate_at=1))
    tts = OpenAiSpeech(OpenAiSpeechOptions(url=base, timeout=0.5))
    with pytest.raises(BackendError, match="model not loaded") as caught:
        await synthesise(tts, "one")
    assert caught.value.kind == "http_500"
    with pytest.raises(BackendError) as caught:
        await synthesise(tts, "two")  # the first samples came, then nothing
    assert caught.value.kind == "timeout"
    await tts.aclose()
    gone = OpenAiSpeech(OpenAiSpeechOptions(url=f"http://127.0.0.1:{closed_port()}/v1"))
    with pytest.raises(BackendError, match="cannot reach") as caught:
        await synthesise(gone, "three")
    await gone.aclose()


# ---- in a session --------------------------------------------------------------------------------


async def test_an_unreachable_speech_server_costs_the_turn_an_apology(tmp_path, nursery: trio.Nursery) -> None:
    busy = FakeSherpaAsrServer(refuse=True)
    url = await nursery.start(busy.serve)
    config = parse_config({"vad": {"backend": "fake"}, "asr": {"backend": "sherpa-onnx-remote", "url": url},
                           "agent": {"backend": "fake"}, "tts": {"backend": "fake"}, "turn": {"backend": "off"},
                           "server": {"data_dir": str(tmp_path)}})
    app, fakes, _ = make_app(tmp_path, FakeBackends(), config=config, plugins=(remote_speech,))
    async with open_device(app) as device:
        await device.listen_start("auto")
        await device.speak(speech("hello there"))
        reply = await device.receive_reply()
        assert " ".join(reply.sentences) == app.config.session.apology_text
        busy.refuse = False  # the speech machine is back: the next turn is recognised
        await device.listen_start("auto")
        await device.speak(speech("hello there"))
        second = await device.receive_reply()
    assert second.stt == "hello there" and fakes.agent.requests[-1].text == "hello there"
    await app.aclose()

"""The talk page (/talk): served safely over HTTP, and driven for real in headless Chromium.

The browser test runs Debian's ``chromium`` through Playwright (never a downloaded browser) with a
fake microphone that plays a question spoken by espeak-ng. The server is the real one with the
default speech models (Silero VAD, Moonshine ASR, Piper TTS), auth and activation on; the agent is
the OpenAI-compatible test double on loopback, which first calls the page's volume tool and then
answers. The page checks in, shows its activation code, gets its token once the code is bound,
connects, talks, and must show the transcript, the sentences and the tool call, and play the reply;
then a typed question gets its answer too.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
import soxr
import trio
from xiaozhi_trio.pipeline.app import App
from xiaozhi_trio.pipeline.backends import BackendContext
from xiaozhi_trio.pipeline.config import parse_config
from xiaozhi_trio.pipeline.ops.http import build_ops_services, serve_http
from xiaozhi_trio.pipeline.protocol.tools import encode_tool_name
from xiaozhi_trio.pipeline.registry import Plugins
from xiaozhi_trio.pipeline.server import serve_devices
from xiaozhi_trio.pipeline.workers import CpuWorkers

from .contracts.models import models_dir
from xiaozhi_trio.plugins.testing.speech import RATE, spoken
from xiaozhi_trio.plugins.testing.wer import word_error_rate
from xiaozhi_trio.plugins.testing.fakes.fake_openai import FakeOpenAI, text_reply, tool_call_reply
from xiaozhi_trio.plugins.testing.fakes.ops_server import running_ops

CHROMIUM = "/usr/bin/chromium"
QUESTION = "Please turn the volume down to thirty."
ANSWER = "Done, the volume is thirty now. Is that better?"
TYPED = "What is two plus two?"
TYPED_ANSWER = "Two plus two is four."


@pytest.fixture(autouse=True)
def _no_env_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XIAOZHI_TRIO_SECRET", raising=False)


# ---- HTTP -----------------------------------------------------------------------------------------------


async def test_the_page_and_its_files_are_served_with_a_strict_policy(tmp_path) -> None:
    async with running_ops(tmp_path) as (_services, base), httpx.AsyncClient() as client:
        page = await client.get(f"{base}/talk")
        assert page.status_code == 200 and page.headers["content-type"] == "text/html; charset=utf-8"
        assert '<script src="/talk/talk.js"' in page.text
        policy = page.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "unsafe-inline" not in policy and "ws:" in policy
        assert page.headers["x-content-type-options"] == "nosniff"
        for name, kind in (("talk.js", "text/javascript"), ("capture-worklet.js", "text/javascript"), ("talk.css", "text/css")):
            asset = await client.get(f"{base}/talk/{name}")
            assert asset.status_code == 200 and asset.headers["content-type"].startswith(kind), name
            assert asset.content
        assert (await client.head(f"{base}/talk/")).status_code == 200
        for path in ("/talk/../secret.key", "/talk/%2e%2e/secret.key", "/talk/talk.py", "/talk/x/talk.js"):
            assert (await client.get(f"{base}{path}")).status_code == 404, path
        assert (await client.post(f"{base}/talk")).status_code == 405


# ---- the browser ----------------------------------------------------------------------------------------


def fake_microphone(path: Path) -> Path:
    """The question as Chromium's fake capture device plays it: 48 kHz 16-bit WAV, with silence
    before (the page starts listening) and after (the server's VAD ends the utterance)."""
    speech = spoken(QUESTION)
    audio = np.concatenate([np.zeros(RATE // 2, np.float32), speech, np.zeros(3 * RATE, np.float32)])
    sf.write(path, soxr.resample(audio, RATE, 48000), 48000, subtype="PCM_16")
    return path


@dataclasses.dataclass
class LiveServer:
    http_base: str
    ops: object
    agent: FakeOpenAI


async def start_server(nursery: trio.Nursery, data_dir: Path) -> LiveServer:
    agent = FakeOpenAI()
    await nursery.start(agent.serve)
    volume_tool = encode_tool_name("self.audio_speaker.set_volume")
    agent.script(tool_call_reply([("call_1", volume_tool, json.dumps({"volume": 30}))]), text_reply(ANSWER), text_reply(TYPED_ANSWER))
    config = parse_config({
        "server": {"data_dir": str(data_dir), "host": "127.0.0.1"},
        "vad": {"backend": "silero"},
        "asr": {"backend": "sherpa-onnx"},
        "agent": {"backend": "openai", "base_url": agent.base_url, "model": "test"},
        "tts": {"backend": "sherpa-onnx"},
    })
    workers = CpuWorkers()
    context = BackendContext(data_dir=data_dir, workers=workers, models_dir=models_dir())
    app = await trio.to_thread.run_sync(lambda: App.build(config, Plugins(), context=context))
    app.workers = workers
    ws_port = await nursery.start(serve_devices, app, "127.0.0.1", 0)
    # The OTA reply must name the port the WebSocket server really bound.
    public = dataclasses.replace(config.server, public_url=f"ws://127.0.0.1:{ws_port}/xiaozhi/v1/")
    ops = build_ops_services(dataclasses.replace(config, server=public))
    ops.attach(app)
    http_port = await nursery.start(serve_http, ops, "127.0.0.1", 0)
    return LiveServer(f"http://127.0.0.1:{http_port}", ops, agent)


def wait_until(page, expression: str, timeout: float) -> None:
    """Poll ``expression`` in the page (Playwright's own ``wait_for_function`` evaluates strings
    with ``eval``, which the page's content security policy forbids, rightly)."""
    import time

    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        if time.monotonic() > deadline:
            raise AssertionError(f"the page never got to {expression!r}; it shows: {page.inner_text('#status')!r}")
        page.wait_for_timeout(200)


def drive_the_page(url: str, microphone: Path, screenshot: Path, bind_code) -> dict:
    """In a worker thread (Playwright's sync API): check in, get bound, connect, talk."""
    from playwright.sync_api import sync_playwright

    args = [
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={microphone}%noloop",
        "--autoplay-policy=no-user-gesture-required",
        "--no-sandbox",
    ]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            console: list[str] = []
            page.on("console", lambda message: console.append(message.text))
            page.goto(url)
            page.click("#check-in")
            wait_until(page, "window.talk.activationCode !== ''", 20)
            bind_code(page.evaluate("window.talk.activationCode"))
            # The page polls /activate like the firmware, then checks in again for its token.
            wait_until(page, "document.getElementById('token').value !== ''", 30)
            page.click("#connect")
            wait_until(page, "window.talk.connected", 20)
            page.click("#talk-auto")
            wait_until(page, "window.talk.sentences.length > 0 && !window.talk.speaking && window.talk.replyPackets > 0", 120)
            page.click("#talk-auto")  # microphone off; now a typed question
            page.fill("#typed", TYPED)
            page.press("#typed", "Enter")
            wait_until(page, f"window.talk.sentences.includes({json.dumps(TYPED_ANSWER)}) && !window.talk.speaking", 60)
            page.wait_for_timeout(500)  # the last decoded frames reach the page
            page.screenshot(path=str(screenshot), full_page=True)
            state = page.evaluate("window.talk")
            state["console"] = console
            state["shown"] = page.inner_text("#conversation")
            return state
        finally:
            browser.close()


@pytest.mark.models
async def test_a_spoken_question_in_chromium_gets_a_transcript_a_tool_call_and_reply_audio(tmp_path) -> None:
    if shutil.which(CHROMIUM) is None:
        pytest.skip(f"{'!' * 20} CHROMIUM IS MISSING: the talk page was NOT tested in a browser; "
                    f"`apt-get install chromium` (.ci/run does) {'!' * 20}")
    microphone = fake_microphone(tmp_path / "question.wav")
    screenshot = tmp_path / "talk.png"
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, tmp_path / "data")
        token = trio.lowlevel.current_trio_token()

        def bind_code(code: str) -> None:
            assert trio.from_thread.run(server.ops.registry.bind_code, code, trio_token=token) is not None

        state = await trio.to_thread.run_sync(drive_the_page, f"{server.http_base}/talk", microphone, screenshot, bind_code)
        nursery.cancel_scope.cancel()
    server.ops.close()
    print(f"talk page screenshot: {screenshot}")

    assert state["errors"] == [], (state["errors"], state["console"])
    assert state["sentPackets"] > 20  # seconds of Opus packets from the microphone...
    assert state["uplinkFrameMs"] == 60  # ...each 60 ms, as the hello announced
    transcript, typed = state["transcripts"]
    assert word_error_rate(QUESTION, transcript) <= 0.3, transcript
    assert typed == TYPED
    (call,) = state["toolCalls"]
    assert call == {"name": "self.audio_speaker.set_volume", "arguments": {"volume": 30}, "result": True, "error": None}
    assert state["volume"] == 30
    assert " ".join(state["sentences"]) == f"{ANSWER} {TYPED_ANSWER}"
    assert ANSWER.split(".")[0] in state["shown"] and transcript in state["shown"]
    # The reply was decoded in the page: seconds of speech, not silence, nothing outside tts start/stop.
    assert state["replySeconds"] > 1.0 and state["strayPackets"] == 0
    assert math.sqrt(state["replyEnergy"] / state["replySamples"]) > 0.01
    # The agent saw the question the page asked, then the tool's result, then the typed question.
    first, second, third = server.agent.requests
    assert first.body["messages"][-1]["content"] == transcript
    assert second.body["messages"][-1]["role"] == "tool"
    assert third.body["messages"][-1]["content"] == TYPED

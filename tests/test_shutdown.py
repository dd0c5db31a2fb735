"""Graceful shutdown: replies in flight finish, sessions get a close frame, stores close, exit 0.

In process (autojump clock) for the drain logic, and as a real ``xiaozhi-trio serve`` subprocess
with the test-double backends installed as a plugin, stopped with SIGTERM and SIGINT.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from trio_websocket import ConnectionClosed

from xiaozhi_trio.pipeline.client import DeviceClient, connect
from xiaozhi_trio.pipeline.shutdown import ReplyTracker, drain_sessions

from xiaozhi_trio.plugins.testing.fakes.backends import speech, tone
from xiaozhi_trio.plugins.testing.fakes.serve_plugin import ANSWER, QUESTION_PITCH, installed_plugin
from xiaozhi_trio.plugins.testing.harness import make_app, open_device, rejection_status

ROOT = Path(__file__).resolve().parents[1]
STORY = " ".join(f"Part {n} of the story goes on and on." for n in range(1, 9))


def tracked_app(tmp_path: Path):
    app, fakes, events = make_app(tmp_path)
    tracker = ReplyTracker()
    app.plugins.register(tracker)
    fakes.agent.answers["tell me a story"] = STORY
    fakes.agent.delta_delay = 0.1
    return app, fakes, tracker


async def wait_for_reply_audio(device: DeviceClient, question: str) -> None:
    await device.listen_start("auto")
    await device.speak(speech(question), trailing_silence=0.5)
    while isinstance(await device.receive(), dict):  # until the reply's first audio packet
        pass


async def close_code(device: DeviceClient) -> int:
    """Read until the server closes the connection; its close code."""
    with trio.fail_after(10):
        while True:
            try:
                await device.receive()
            except ConnectionClosed as closed:
                return closed.reason.code


async def test_a_reply_in_flight_finishes_then_the_session_closes_with_1001(tmp_path, autojump_clock) -> None:
    app, fakes, tracker = tracked_app(tmp_path)
    async with open_device(app) as device, trio.open_nursery() as nursery:
        await wait_for_reply_audio(device, "tell me a story")
        cut_short: list[int] = []

        async def drain() -> None:
            cut_short.append(await drain_sessions(app, tracker, grace=60))

        nursery.start_soon(drain)
        reply = await device.receive_reply()
        assert reply.tts_stop_at is not None
        assert " ".join(reply.sentences[-2:]).endswith("Part 8 of the story goes on and on.")
        assert await close_code(device) == 1001
    assert cut_short == [0] and fakes.agent.completed == 1 and app.sessions.count == 0
    await app.aclose()


async def test_the_grace_period_bounds_the_wait(tmp_path, autojump_clock) -> None:
    app, fakes, tracker = tracked_app(tmp_path)
    fakes.agent.delta_delay = 5.0  # a reply that would take minutes
    async with open_device(app) as device, trio.open_nursery() as nursery:
        await wait_for_reply_audio(device, "tell me a story")
        started = trio.current_time()
        cut_short: list[int] = []

        async def drain() -> None:
            cut_short.append(await drain_sessions(app, tracker, grace=3))

        nursery.start_soon(drain)
        assert await close_code(device) == 1001
        assert 3 <= trio.current_time() - started < 4  # virtual time: the grace period, no more
    assert cut_short == [1] and fakes.agent.cancelled == 1
    await app.aclose()


async def test_idle_sessions_close_at_once_and_new_ones_are_refused(tmp_path, autojump_clock) -> None:
    app, _fakes, tracker = tracked_app(tmp_path)
    async with open_device(app, device_id="aa:00:00:00:00:01") as idle:
        with trio.fail_after(1):
            assert await drain_sessions(app, tracker, grace=60) == 0
            assert await close_code(idle) == 1001
        assert await rejection_status(app, device_id="aa:00:00:00:00:02") == 503
    await app.aclose()


def test_tracker_follows_speech_and_turns() -> None:
    from xiaozhi_trio.pipeline.events import SessionClosed, SpeechEndDetected, TranscriptReady, TurnEnded, TurnStarted

    tracker = ReplyTracker()
    ids = {"session_id": "s1", "device_id": "d1", "at": 0.0}
    assert not tracker.busy("d1")
    tracker.xiaozhi_session_event(SpeechEndDetected(**ids, utterance_seconds=1.0))
    assert tracker.busy("d1")  # the transcript is being made
    tracker.xiaozhi_session_event(TranscriptReady(**ids, text="", speech_ended_at=0.0))
    assert not tracker.busy("d1")  # nothing was said: no reply coming
    tracker.xiaozhi_session_event(TurnStarted(**ids, turn=1, text="hi"))
    assert tracker.busy("d1") and not tracker.busy("d2")
    tracker.xiaozhi_session_event(TurnEnded(**ids, turn=1, outcome="completed", sentences=1, audio_seconds=1.0))
    assert not tracker.busy("d1")
    tracker.xiaozhi_session_event(TurnStarted(**ids, turn=2, text="hi"))
    tracker.xiaozhi_session_event(SessionClosed(**ids, reason="gone"))
    assert not tracker.busy("d1")


# ---- a real server process ------------------------------------------------------------------------


def server_command() -> list[str]:
    script = Path(sys.executable).with_name("xiaozhi-trio")
    return [str(script)] if script.exists() else [sys.executable, "-m", "xiaozhi_trio.pipeline.cli"]


def start_server(tmp_path: Path, grace: float = 30.0) -> tuple[subprocess.Popen[str], str]:
    """``xiaozhi-trio serve`` on free ports with the test-double backends; (process, ws URL)."""
    config = tmp_path / "config.toml"
    config.write_text(
        f'[server]\ndata_dir = "{tmp_path / "data"}"\nshutdown_grace = {grace}\n'
        '[ota]\nport = 0\n[auth]\nenabled = false\n[devices]\nactivation = false\n'
        + "".join(f'[{kind}]\nbackend = "fake"\n' for kind in ("vad", "asr", "agent", "tts"))
    )
    site = installed_plugin(tmp_path / "site")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.pop("XIAOZHI_TRIO_SECRET", None)
    process = subprocess.Popen(
        [*server_command(), "serve", "-c", str(config), "--host", "127.0.0.1", "--port", "0"],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    assert process.stdout is not None
    for line in process.stdout:  # the ready line names the bound ports
        if match := re.search(r"(ws://\S+/xiaozhi/v1/)", line):
            return process, match.group(1)
    process.wait(5)
    raise AssertionError(f"the server did not start (exit status {process.returncode})")


def stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.kill()
        process.wait(10)


async def test_sigterm_lets_the_reply_finish_closes_with_a_close_frame_and_exits_0(tmp_path) -> None:
    process, url = start_server(tmp_path)
    try:
        async with connect(url, device_id="25:B0:58:00:00:01") as device:
            await device.hello()
            await device.listen_start("auto")
            await device.speak(tone(QUESTION_PITCH), trailing_silence=0.5)
            with trio.fail_after(30):
                while isinstance(await device.receive(), dict):  # the reply is playing
                    pass
            process.send_signal(signal.SIGTERM)
            with trio.fail_after(30):
                reply = await device.receive_reply()
            assert " ".join(reply.sentences).endswith(ANSWER.rsplit(". ", 1)[-1])  # heard to the end
            assert await close_code(device) == 1001
            assert device.ws.closed.reason == "server shutting down"
        output = await trio.to_thread.run_sync(process.communicate, None, 30)
        assert process.returncode == 0, output[0]
        assert "Traceback" not in output[0]
        assert "SIGTERM: shutting down" in output[0]
    finally:
        stop(process)


async def test_a_second_signal_exits_at_once(tmp_path) -> None:
    process, url = start_server(tmp_path, grace=600)
    try:
        async with connect(url) as device:
            await device.hello()
            await device.listen_start("auto")
            await device.speak(tone(QUESTION_PITCH), trailing_silence=0.5)
            with trio.fail_after(30):
                while isinstance(await device.receive(), dict):
                    pass
            process.send_signal(signal.SIGINT)  # Ctrl-C: the reply would finish
            await trio.sleep(0.5)
            assert process.poll() is None
            process.send_signal(signal.SIGINT)  # Ctrl-C again: out now, not after the reply
            output = await trio.to_thread.run_sync(process.communicate, None, 30)
        assert process.returncode == 128 + signal.SIGINT, output[0]
        assert "Traceback" not in output[0] and "exiting now" in output[0]
    finally:
        stop(process)

"""Overload that the server says out loud: CPU pool figures on /metrics, saturation in the log,
and a limit of talking devices beyond which new connections are refused clearly."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from types import SimpleNamespace

import pytest
import trio
import trio.testing
from trio_websocket import ConnectionRejected
from xiaozhi_trio.pipeline import events as ev
from xiaozhi_trio.pipeline.app import App
from xiaozhi_trio.pipeline.ops.metrics import Metrics
from xiaozhi_trio.pipeline.scheduling import PLAYBACK, SPEECH_END, Urgency
from xiaozhi_trio.pipeline.talking import TalkingSessions
from xiaozhi_trio.pipeline.workers import CpuWorkers

from xiaozhi_trio.plugins.testing.fakes.backends import speech
from xiaozhi_trio.plugins.testing.fakes.workers import CpuWork, VirtualThreads
from xiaozhi_trio.plugins.testing.harness import fake_config, make_app, open_device
from tests.test_metrics import exposition, samples

IDS = {"device_id": "02:00:00:00:00:01"}


async def test_queue_waits_per_kind_and_saturation_reach_metrics(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="xiaozhi_trio.pipeline.workers")
    workers = CpuWorkers(1, runner=VirtualThreads())
    metrics = Metrics()
    metrics.watch_load(SimpleNamespace(workers=workers, talking=TalkingSessions(60.0)))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: workers.run(CpuWork(0.4)))  # takes the one thread
        await trio.sleep(0.01)
        for _ in range(2):
            nursery.start_soon(lambda: workers.run(CpuWork(0.4), urgency=Urgency(trio.current_time(), SPEECH_END)))
        nursery.start_soon(lambda: workers.run(CpuWork(0.1), urgency=Urgency(trio.current_time() + 5, PLAYBACK)))
        await trio.sleep(0.01)
        during = samples(exposition(metrics))
    assert during[("xiaozhi_cpu_workers", ())] == 1
    assert during[("xiaozhi_cpu_workers_busy", ())] == 1
    assert during[("xiaozhi_cpu_calls_queued", ())] == 3
    assert during[("xiaozhi_cpu_saturation", ())] == 4
    after = samples(exposition(metrics))
    assert after[("xiaozhi_cpu_queue_wait_seconds_count", (("kind", SPEECH_END),))] == 2
    # Waits 0.39 and 0.79 s.
    assert after[("xiaozhi_cpu_queue_wait_seconds_bucket", (("kind", SPEECH_END), ("le", "0.25")))] == 0
    assert after[("xiaozhi_cpu_queue_wait_seconds_bucket", (("kind", SPEECH_END), ("le", "0.5")))] == 1
    assert after[("xiaozhi_cpu_queue_wait_seconds_bucket", (("kind", SPEECH_END), ("le", "+Inf")))] == 2
    assert after[("xiaozhi_cpu_queue_wait_seconds_sum", (("kind", SPEECH_END),))] == pytest.approx(1.18)
    # The run-ahead call went last but was not late: its deadline was 5 s away.
    assert after[("xiaozhi_cpu_queue_wait_seconds_count", (("kind", PLAYBACK),))] == 1
    assert after[("xiaozhi_cpu_queue_wait_seconds_sum", (("kind", PLAYBACK),))] == pytest.approx(1.19)
    assert after[("xiaozhi_cpu_saturated", ())] == 1
    assert "CPU workers saturated: speech_end work started 0.39 s late" in caplog.text
    await trio.sleep(10)  # the pool goes quiet; the next scrape ends the episode
    assert samples(exposition(metrics))[("xiaozhi_cpu_saturated", ())] == 0
    assert "CPU workers no longer saturated" in caplog.text


def event(kind: type, session: str, at: float, **fields: object) -> ev.SessionEvent:
    return kind(session_id=session, at=at, **IDS, **fields)


def test_a_session_talks_from_its_opening_until_it_has_been_quiet_for_the_window() -> None:
    talking = TalkingSessions(window=60.0)
    talking.xiaozhi_session_event(event(ev.SessionOpened, "a", 0.0, client_id="c", protocol_version=1))
    talking.xiaozhi_session_event(event(ev.SessionOpened, "b", 0.0, client_id="c", protocol_version=1))
    assert talking.count(10.0) == 2
    talking.xiaozhi_session_event(event(ev.SpeechEndDetected, "a", 50.0, utterance_seconds=1.0))
    talking.xiaozhi_session_event(event(ev.TurnEnded, "a", 55.0, turn=1, outcome="completed", sentences=1, audio_seconds=2.0))
    assert talking.count(61.0) == 1  # b has said nothing for a minute
    assert talking.count(115.0) == 1 and talking.count(115.1) == 0
    talking.xiaozhi_session_event(event(ev.SessionClosed, "a", 70.0, reason="gone"))
    assert talking.count(70.0) == 0


async def refused_with(app: App, **kwargs: object) -> tuple[int, bytes] | None:
    """The status and body a handshake of ``open_device(app, **kwargs)`` is refused with."""
    refused = None
    try:
        async with open_device(app, **kwargs):  # type: ignore[arg-type]
            pass
    except* ConnectionRejected as group:
        rejected = group.exceptions[0]
        assert isinstance(rejected, ConnectionRejected)
        refused = rejected.status_code, rejected.body or b""
    return refused


async def test_beyond_the_talking_limit_new_devices_are_refused_clearly(tmp_path, autojump_clock) -> None:
    base = fake_config(tmp_path)
    config = dataclasses.replace(base, server=dataclasses.replace(base.server, max_talking_sessions=1, talking_window=30.0))
    app, fakes, events = make_app(tmp_path, config=config)
    async with open_device(app, device_id="02:00:00:00:00:0a") as first:
        reply, _ = await first.ask(speech("hello"))
        assert reply.packets
        assert await refused_with(app, device_id="02:00:00:00:00:0b") == (503, b"server busy: too many devices are talking; try again in a minute")
        assert app.talking.refused == 1
        # The device already talking may reconnect (its old session is replaced).
        async with open_device(app, device_id="02:00:00:00:00:0a") as again:
            assert again.server_hello["session_id"]
        await trio.sleep(31)  # the first device has gone quiet
        async with open_device(app, device_id="02:00:00:00:00:0b") as second:
            reply, _ = await second.ask(speech("hello"))
            assert reply.packets


async def talk_on(app: App, stack: contextlib.AsyncExitStack, number: int) -> None:
    """Device ``number`` connects (kept open by ``stack``) and is answered."""
    device = await stack.enter_async_context(open_device(app, device_id=f"02:00:00:00:01:{number:02x}"))
    reply, _ = await device.ask(speech("hello"))
    assert reply.packets


async def test_by_default_the_eleventh_talking_device_is_refused(tmp_path, autojump_clock) -> None:
    app, _, _ = make_app(tmp_path)
    assert app.config.server.max_talking_sessions == 10
    async with contextlib.AsyncExitStack() as stack:
        for number in range(10):
            await talk_on(app, stack, number)
        assert await refused_with(app, device_id="02:00:00:00:01:ff") == (503, b"server busy: too many devices are talking; try again in a minute")


async def test_without_a_limit_nobody_is_refused_for_talking(tmp_path, autojump_clock) -> None:
    base = fake_config(tmp_path)
    config = dataclasses.replace(base, server=dataclasses.replace(base.server, max_talking_sessions=0))
    app, _, _ = make_app(tmp_path, config=config)
    async with contextlib.AsyncExitStack() as stack:
        for number in range(12):
            await talk_on(app, stack, number)
    assert app.talking.refused == 0

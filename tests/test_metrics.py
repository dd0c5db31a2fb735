"""Metrics from session events, the Prometheus text output, turn timing, and session-tagged logs."""

from __future__ import annotations

import dataclasses
import io
import json
import logging

import httpx
import pytest
import trio
import trio.lowlevel
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from xiaozhi_trio.pipeline import events as ev
from xiaozhi_trio.pipeline.backends import ConfigError
from xiaozhi_trio.pipeline.hookspecs import hookimpl
from xiaozhi_trio.pipeline.ops.http import build_ops_services
from xiaozhi_trio.pipeline.ops.logcontext import (
    JsonFormatter,
    LogfmtFormatter,
    SessionContextFilter,
    TextFormatter,
    bind_session,
    configure_logging,
)
from xiaozhi_trio.pipeline.ops.metrics import MAX_SERIES, Metrics, MetricsConfig
from xiaozhi_trio.pipeline.tables import parse_table
from xiaozhi_trio.pipeline.ops.turns import (
    FIRST_AUDIO,
    FIRST_SENTENCE,
    FIRST_TEXT,
    RESPONSE,
    TRANSCRIPT,
    TurnSummary,
    TurnTimer,
)
from xiaozhi_trio.pipeline.registry import Plugins
from xiaozhi_trio.plugins import observability

from xiaozhi_trio.plugins.testing.fakes.backends import speech
from xiaozhi_trio.plugins.testing.fakes.ops_server import running_ops
from xiaozhi_trio.plugins.testing.harness import fake_config, make_app, open_device

DEV = "a4:cf:12:34:56:78"


@pytest.fixture(autouse=True)
def _no_env_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XIAOZHI_TRIO_SECRET", raising=False)


def talk(session: str = "s1", device: str = DEV, start: float = 100.0, turn: int = 1, outcome: str = "completed",
         gaps: tuple[float, float, float, float] = (0.2, 0.5, 0.1, 0.3)) -> list[ev.SessionEvent]:
    """One session with one turn: end of speech, then each stage ``gaps`` seconds after the previous."""
    ids = {"session_id": session, "device_id": device}
    t_end = start + 2.0
    t_transcript = t_end + gaps[0]
    t_text = t_transcript + 0.01 + gaps[1]
    t_sentence = t_text + gaps[2]
    t_audio = t_sentence + gaps[3]
    return [
        ev.SessionOpened(**ids, at=start, client_id="c", protocol_version=1),
        ev.SpeechEndDetected(**ids, at=t_end, utterance_seconds=1.5),
        ev.TranscriptReady(**ids, at=t_transcript, text="hello", speech_ended_at=t_end),
        ev.TurnStarted(**ids, at=t_transcript + 0.01, turn=turn, text="hello"),
        ev.FirstAgentText(**ids, at=t_text, turn=turn),
        ev.FirstSentence(**ids, at=t_sentence, turn=turn, text="Hi."),
        ev.FirstAudio(**ids, at=t_audio, turn=turn),
        ev.AgentUsage(**ids, at=t_audio, input_tokens=120, output_tokens=30),
        ev.TurnEnded(**ids, at=t_audio + 1.0, turn=turn, outcome=outcome, sentences=1, audio_seconds=0.8),
        ev.SessionError(**ids, at=t_audio + 1.1, kind="tts", message="voice hiccup"),
    ]


def closed(session: str = "s1", at: float = 200.0) -> ev.SessionClosed:
    return ev.SessionClosed(session_id=session, device_id=DEV, at=at, reason="device gone")


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """name + sorted labels → value, from a parse by prometheus-client's own parser."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def exposition(metrics: Metrics) -> str:
    """What a plain scrape gets: the text format 0.0.4."""
    body, content_type = metrics.render()
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    return body.decode()


def test_synthetic_session_moves_every_number() -> None:
    metrics = Metrics()
    session = talk()
    for event in session[:1]:
        metrics.xiaozhi_session_event(event)
    s = samples(exposition(metrics))
    assert s[("xiaozhi_sessions_connected", ())] == 1
    assert s[("xiaozhi_sessions_total", (("protocol_version", "1"),))] == 1
    for event in session[1:]:
        metrics.xiaozhi_session_event(event)
    metrics.xiaozhi_session_event(closed())
    s = samples(exposition(metrics))
    assert s[("xiaozhi_sessions_connected", ())] == 0
    assert s[("xiaozhi_sessions_closed_total", (("reason", "device gone"),))] == 1
    assert s[("xiaozhi_turns_total", (("outcome", "completed"),))] == 1
    assert s[("xiaozhi_session_errors_total", (("kind", "tts"),))] == 1
    assert s[("xiaozhi_agent_tokens_total", (("direction", "input"),))] == 120
    assert s[("xiaozhi_agent_tokens_total", (("direction", "output"),))] == 30
    expected = {TRANSCRIPT: 0.2, FIRST_TEXT: 0.51, FIRST_SENTENCE: 0.1, FIRST_AUDIO: 0.3}
    for stage, seconds in expected.items():
        assert s[("xiaozhi_turn_stage_seconds_count", (("stage", stage),))] == 1
        assert s[("xiaozhi_turn_stage_seconds_sum", (("stage", stage),))] == pytest.approx(seconds)
    assert s[("xiaozhi_turn_response_seconds_sum", ())] == pytest.approx(0.2 + 0.51 + 0.1 + 0.3)
    # Cumulative buckets: 0.3 s lands in le=0.3 and every bucket above it.
    assert s[("xiaozhi_turn_stage_seconds_bucket", (("le", "0.2"), ("stage", FIRST_AUDIO)))] == 0
    assert s[("xiaozhi_turn_stage_seconds_bucket", (("le", "0.3"), ("stage", FIRST_AUDIO)))] == 1
    assert s[("xiaozhi_turn_stage_seconds_bucket", (("le", "+Inf"), ("stage", FIRST_AUDIO)))] == 1


async def test_metrics_endpoint_moves_as_a_session_talks_through_the_hook(tmp_path) -> None:
    async with running_ops(tmp_path) as (services, base):
        plugins = Plugins(entry_points=False, extra=[services.metrics])
        async with httpx.AsyncClient() as client:
            before = await client.get(f"{base}/metrics")
            assert before.status_code == 200
            assert before.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
            assert samples(before.text)[("xiaozhi_sessions_connected", ())] == 0
            for event in talk("a") + talk("b", device="02:00:00:00:00:01", turn=1, outcome="interrupted"):
                plugins.emit(event)
            during = samples((await client.get(f"{base}/metrics")).text)
            assert during[("xiaozhi_sessions_connected", ())] == 2
            assert during[("xiaozhi_turns_total", (("outcome", "interrupted"),))] == 1
            assert during[("xiaozhi_turn_response_seconds_count", ())] == 2
            health = (await client.get(f"{base}/healthz")).json()
            assert health["ok"] is True and health["sessions"] == 2 and health["version"]
            plugins.emit(closed("a"))
            after = samples((await client.get(f"{base}/metrics")).text)
            assert after[("xiaozhi_sessions_connected", ())] == 1
            assert after[("xiaozhi_http_requests_total", (("route", "metrics"), ("status", "200")))] == 2
            assert after[("xiaozhi_http_request_seconds_count", (("route", "healthz"),))] == 1


async def test_session_count_comes_from_the_session_manager_when_given(tmp_path) -> None:
    async with running_ops(tmp_path) as (services, base):
        services.session_count = lambda: 7
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"{base}/healthz")).json()["sessions"] == 7


async def test_metrics_can_be_switched_off(tmp_path) -> None:
    async with running_ops(tmp_path, {"metrics": {"enabled": False}}) as (_services, base), httpx.AsyncClient() as client:
        assert (await client.get(f"{base}/metrics")).status_code == 404


def test_label_values_are_escaped_and_series_are_capped() -> None:
    metrics = Metrics()
    metrics.errors.inc(kind='odd "kind"\nwith \\ newline')
    for i in range(MAX_SERIES + 50):
        metrics.sessions_closed.inc(reason=f"reason {i}")
    s = samples(exposition(metrics))
    assert s[("xiaozhi_session_errors_total", (("kind", 'odd "kind"\nwith \\ newline'),))] == 1
    reasons = [labels for (name, labels) in s if name == "xiaozhi_sessions_closed_total"]
    assert len(reasons) == MAX_SERIES + 1
    assert s[("xiaozhi_sessions_closed_total", (("reason", "other"),))] == 50


async def test_process_metrics_and_openmetrics_on_request(tmp_path) -> None:
    from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics

    async with running_ops(tmp_path) as (_services, base), httpx.AsyncClient() as client:
        plain = samples((await client.get(f"{base}/metrics")).text)
        assert plain[("process_resident_memory_bytes", ())] > 1_000_000
        assert plain[("process_open_fds", ())] >= 3 and plain[("process_cpu_seconds_total", ())] > 0
        assert plain[("process_start_time_seconds", ())] > 1_600_000_000
        # What Prometheus asks for first.
        accept = "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.4,*/*;q=0.1"
        scraped = await client.get(f"{base}/metrics", headers={"Accept": accept})
        assert scraped.headers["content-type"].startswith("application/openmetrics-text; version=1.0.0")
        families = {f.name: f for f in parse_openmetrics(scraped.text)}
        assert families["xiaozhi_http_requests"].type == "counter"
        assert families["xiaozhi_turn_response_seconds"].type == "histogram"
        assert families["xiaozhi_build_info"].samples[0].value == 1


def test_each_server_counts_on_its_own() -> None:
    first, second = Metrics(), Metrics()
    first.errors.inc(kind="tts")
    assert first.errors.get(kind="tts") == 1 and second.errors.get(kind="tts") == 0
    assert samples(exposition(second)).get(("xiaozhi_session_errors_total", (("kind", "tts"),))) is None


def test_metrics_config() -> None:
    assert parse_table("metrics", MetricsConfig, {"log_format": "json"}).log_format == "json"
    with pytest.raises(ConfigError, match="log_format"):
        parse_table("metrics", MetricsConfig, {"log_format": "xml"})
    with pytest.raises(ConfigError, match=r"unknown key\(s\) in \[metrics\]: port"):
        parse_table("metrics", MetricsConfig, {"port": 9100})


# ---- turn timing ------------------------------------------------------------------------------

gap = st.floats(min_value=0.0, max_value=20.0, allow_nan=False)


@given(st.tuples(gap, gap, gap, gap), st.tuples(gap, gap, gap, gap), st.booleans())
def test_turn_timer_measures_each_stage_whatever_the_interleaving(gaps_a, gaps_b, interleave) -> None:
    a = talk("a", start=10.0, gaps=gaps_a)
    b = talk("b", start=10.5, gaps=gaps_b, turn=4)
    merged = sorted(a + b, key=lambda e: e.at) if interleave else a + b
    timer = TurnTimer()
    summaries = {r.session_id: r for e in merged for r in timer.feed(e) if isinstance(r, TurnSummary)}
    for name, gaps in (("a", gaps_a), ("b", gaps_b)):
        stages = summaries[name].stages
        assert stages[TRANSCRIPT] == pytest.approx(gaps[0])
        assert stages[FIRST_TEXT] == pytest.approx(0.01 + gaps[1])
        assert stages[FIRST_SENTENCE] == pytest.approx(gaps[2])
        assert stages[FIRST_AUDIO] == pytest.approx(gaps[3])
        assert stages[RESPONSE] == pytest.approx(sum(gaps) + 0.01)


def test_turn_without_speech_measures_from_turn_start_and_closing_forgets() -> None:
    timer = TurnTimer()
    ids = {"session_id": "s", "device_id": DEV}
    timer.feed(ev.TurnStarted(**ids, at=1.0, turn=1, text="wake word"))
    timer.feed(ev.FirstAgentText(**ids, at=1.4, turn=1))
    (summary,) = timer.feed(ev.TurnEnded(**ids, at=2.0, turn=1, outcome="failed", sentences=0, audio_seconds=0))
    assert summary.stages == {FIRST_TEXT: pytest.approx(0.4)} and summary.outcome == "failed"
    assert timer.feed(ev.FirstAudio(**ids, at=3.0, turn=99)) == []  # unknown turn: ignored
    timer.feed(closed("s"))
    assert timer.open_sessions == 0


# ---- logs ---------------------------------------------------------------------------------------


def capture(formatter: logging.Formatter) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    handler.addFilter(SessionContextFilter())
    logger = logging.getLogger(f"test.logcontext.{id(stream)}")
    logger.handlers = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return logger, stream


async def test_every_line_of_a_session_carries_its_ids_in_child_tasks_and_threads() -> None:
    logger, stream = capture(LogfmtFormatter())
    logger.info("before")
    with bind_session(DEV, "sess-1"):
        logger.info("in the session", extra={"turn": 3})
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: trio.to_thread.run_sync(logger.info, "from a worker thread"))
            nursery.start_soon(lambda: _log_async(logger, "from a child task"))
    logger.info("after")
    lines = stream.getvalue().splitlines()
    assert "device=" not in lines[0] and "device=" not in lines[-1]
    for line in lines[1:-1]:
        assert f"device={DEV}" in line and "session=sess-1" in line, line
    assert 'msg="in the session" turn=3' in lines[1]


async def _log_async(logger: logging.Logger, message: str) -> None:
    await trio.lowlevel.checkpoint()
    logger.info(message)


def test_json_and_text_formats() -> None:
    logger, stream = capture(JsonFormatter())
    with bind_session(DEV, "s2"):
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("it broke", extra={"kind": "asr"})
    record = json.loads(stream.getvalue())
    assert record["device"] == DEV and record["session"] == "s2" and record["msg"] == "it broke"
    assert record["kind"] == "asr" and "ValueError: boom" in record["exc"] and record["level"] == "error"

    logger, stream = capture(TextFormatter())
    with bind_session(DEV, "s3"):
        logger.warning("hello")
    assert stream.getvalue().rstrip().endswith(f"hello [{DEV} s3]")


def test_configure_logging_installs_the_filter_on_the_root(monkeypatch) -> None:
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", list(root.handlers))
    stream = io.StringIO()
    configure_logging(logging.INFO, "logfmt", stream)
    with bind_session(DEV, "s4"):
        logging.getLogger("xiaozhi_trio.somewhere").info("tagged")
    assert f"device={DEV} session=s4" in stream.getvalue()


def test_observability_plugin_logs_turn_latencies(caplog) -> None:
    caplog.set_level(logging.INFO, logger="xiaozhi_trio.sessions")
    plugin = observability.SessionLogger()
    for event in talk("s5"):
        plugin.observe(event)
    plugin.observe(closed("s5"))
    turn = next(r for r in caplog.records if r.getMessage().startswith("turn 1 completed"))
    assert turn.device == DEV and turn.session == "s5" and turn.outcome == "completed"
    assert turn.speech_end_to_first_audio_s == pytest.approx(1.11)
    assert "response 1.11 s" in turn.getMessage()
    assert [r.getMessage() for r in caplog.records] == [turn.getMessage()]  # sessions log the rest themselves


def test_session_logger_adapter_ids_are_used_without_bind_session() -> None:
    logger, stream = capture(LogfmtFormatter())
    adapter = logging.LoggerAdapter(logger, {"device_id": DEV, "session_id": "s6"})
    adapter.info("from the session")
    line = stream.getvalue()
    assert f"device={DEV} session=s6" in line and "device_id" not in line


# ---- a real session (test-double backends) feeding the metrics and the session log -------------


class _PlainLogger:
    """An observer that logs with a plain module logger: the ids must come from bind_session."""

    log = logging.getLogger("tests.plain_observer")

    @hookimpl
    def xiaozhi_session_event(self, event: ev.SessionEvent) -> None:
        self.log.info("saw %s", type(event).__name__)


async def test_metrics_and_session_ids_move_as_a_real_session_talks(tmp_path, autojump_clock, caplog) -> None:
    config = dataclasses.replace(fake_config(tmp_path), extra={"auth": {"enabled": False}})
    app, fakes, _events = make_app(tmp_path, config=config)
    ops = build_ops_services(config)
    ops.attach(app)
    app.plugins.register(observability)
    app.plugins.register(_PlainLogger())
    caplog.handler.addFilter(SessionContextFilter())
    caplog.set_level(logging.INFO)
    fakes.agent.answers["what time is it"] = "It is three o'clock. Time for tea!"
    async with open_device(app) as device:
        assert samples(exposition(ops.metrics))[("xiaozhi_sessions_connected", ())] == 1
        assert ops.sessions == 1
        await device.listen_start("auto")
        await device.speak(speech("what time is it"))
        await device.receive_reply()
    s = samples(exposition(ops.metrics))
    assert s[("xiaozhi_sessions_connected", ())] == 0
    assert s[("xiaozhi_turns_total", (("outcome", "completed"),))] == 1
    for stage in (TRANSCRIPT, FIRST_TEXT, FIRST_SENTENCE, FIRST_AUDIO):
        assert s[("xiaozhi_turn_stage_seconds_count", (("stage", stage),))] == 1, stage
    assert s[("xiaozhi_turn_response_seconds_count", ())] == 1
    plain = [r for r in caplog.records if r.name == "tests.plain_observer"]
    assert plain and all(r.device == "02:00:00:00:00:01" and r.session for r in plain)
    assert any(r.getMessage().startswith("turn 1 completed") for r in caplog.records if r.name == "xiaozhi_trio.sessions")
    ops.close()

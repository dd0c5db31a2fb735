"""Prometheus metrics, fed by the session-event hook and the HTTP server, served with ``prometheus-client``.

Each ``Metrics`` has its own ``CollectorRegistry`` (never the library's process-global one), so tests
and several servers in one process keep separate numbers; the registry also holds prometheus-client's
process collector (resident memory, CPU seconds, open file descriptors, start time). ``render`` uses
the library's exposition code and negotiates the format from the scrape's ``Accept`` header: the
Prometheus text format 0.0.4 by default, OpenMetrics when asked.

``Counter``, ``Gauge`` and ``Histogram`` here are thin wrappers that keep one rule the library does
not have: at most ``MAX_SERIES`` label sets per metric, beyond which new ones are counted under
``other``, so a misbehaving client (odd error kinds, many close reasons) cannot grow memory without
bound.

``Metrics`` is a plugin object: the app registers it with the plugin manager and it observes
``xiaozhi_session_event`` like any third-party exporter would.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import prometheus_client
import trio
from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import choose_encoder

from .. import __version__
from ..events import (
    AgentUsage,
    SessionClosed,
    SessionError,
    SessionEvent,
    SessionOpened,
)
from ..hookspecs import hookimpl
from ..tables import require
from ..workers import WAIT_BUCKETS, CpuWorkers
from .turns import RESPONSE, STAGES, StageLatency, TurnSummary, TurnTimer

if TYPE_CHECKING:
    from .auth import AuthDecision

#: Seconds; from quick local stages (tens of ms) to slow cloud agents.
LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
#: Distinct label sets per metric; beyond that new ones are counted under ``other``.
MAX_SERIES = 200
LOG_FORMATS = ("logfmt", "json", "text")


@dataclass(frozen=True)
class MetricsConfig:
    """``[metrics]``: observability (Prometheus metrics and the log format)."""

    #: Serve ``GET /metrics`` on the HTTP port.
    enabled: bool = True
    #: ``logfmt`` (key=value lines with device and session ids), ``json`` (one object per line) or
    #: ``text`` (classic human-readable lines, ids appended).
    log_format: str = "logfmt"

    def __post_init__(self) -> None:
        require(self.log_format in LOG_FORMATS, f"[metrics] log_format must be one of {', '.join(LOG_FORMATS)}, not {self.log_format!r}")


F = TypeVar("F", bound="_Family")


class _Family:
    """One metric, its label names, and the label sets seen (for the cap)."""

    def __init__(self, metric: Any, name: str, labelnames: Sequence[str]) -> None:
        self.metric = metric
        self.name = name
        self.labelnames = tuple(labelnames)
        self._series: set[tuple[str, ...]] = set()

    def _key(self, labels: dict[str, str]) -> tuple[str, ...]:
        if set(labels) != set(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, not {tuple(labels)}")
        key = tuple(str(labels[n]) for n in self.labelnames)
        if key not in self._series:
            if len(self._series) >= MAX_SERIES:
                key = tuple("other" for _ in self.labelnames)
            self._series.add(key)
        return key

    def _child(self, labels: dict[str, str]) -> Any:
        return self.metric.labels(*self._key(labels)) if self.labelnames else self.metric

    def _sample(self, suffix: str, labels: dict[str, str]) -> float:
        """The current value of sample ``<name><suffix>`` with ``labels`` (0 if never set)."""
        wanted = {n: str(labels[n]) for n in self.labelnames}
        for family in self.metric.collect():
            for sample in family.samples:
                if sample.name == self.name + suffix and sample.labels == wanted:
                    return float(sample.value)
        return 0.0


class Counter(_Family):
    def __init__(self, name: str, help: str, labelnames: Sequence[str] = ()) -> None:
        super().__init__(prometheus_client.Counter(name, help, labelnames, registry=None), name, labelnames)

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        if amount < 0:
            raise ValueError("a counter only goes up")
        self._child(labels).inc(amount)

    def get(self, **labels: str) -> float:
        return self._sample("_total", labels)


class Gauge(_Family):
    def __init__(self, name: str, help: str, labelnames: Sequence[str] = ()) -> None:
        super().__init__(prometheus_client.Gauge(name, help, labelnames, registry=None), name, labelnames)

    def set(self, value: float, **labels: str) -> None:
        self._child(labels).set(value)

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        self._child(labels).inc(amount)

    def get(self, **labels: str) -> float:
        return self._sample("", labels)


class Histogram(_Family):
    def __init__(self, name: str, help: str, labelnames: Sequence[str] = (), buckets: Iterable[float] = LATENCY_BUCKETS) -> None:
        metric = prometheus_client.Histogram(name, help, labelnames, registry=None, buckets=tuple(sorted(buckets)))
        super().__init__(metric, name, labelnames)

    def observe(self, value: float, **labels: str) -> None:
        self._child(labels).observe(value)

    def count(self, **labels: str) -> int:
        return int(self._sample("_count", labels))


class Metrics:
    """The server's metrics. Register the instance with the plugin manager to feed it session events."""

    def __init__(self) -> None:
        #: This server's registry; ``ProcessCollector`` adds process memory, CPU, open files, start time.
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        self._timer = TurnTimer()
        add = self._add
        self.build_info = add(Gauge("xiaozhi_build_info", "The running xiaozhi-trio version.", ["version"]))
        self.build_info.set(1, version=__version__)
        self.sessions_connected = add(Gauge("xiaozhi_sessions_connected", "Device sessions open now."))
        self.sessions = add(Counter("xiaozhi_sessions", "Device sessions opened, by binary protocol version.", ["protocol_version"]))
        self.sessions_closed = add(Counter("xiaozhi_sessions_closed", "Device sessions closed, by reason.", ["reason"]))
        self.turns = add(Counter("xiaozhi_turns", "Turns ended, by outcome (completed, interrupted, failed).", ["outcome"]))
        self.stage_seconds = add(Histogram(
            "xiaozhi_turn_stage_seconds",
            "Per-stage turn latency: end of speech -> transcript -> first agent text -> first sentence -> first audio.",
            ["stage"],
        ))
        self.response_seconds = add(Histogram("xiaozhi_turn_response_seconds", "End of the user's speech to the first reply audio packet."))
        self.errors = add(Counter("xiaozhi_session_errors", "Errors in sessions, by kind.", ["kind"]))
        self.agent_tokens = add(Counter("xiaozhi_agent_tokens", "Tokens agents reported, by direction (input, output).", ["direction"]))
        self.http_requests = add(Counter("xiaozhi_http_requests", "HTTP requests, by route and status.", ["route", "status"]))
        self.http_seconds = add(Histogram("xiaozhi_http_request_seconds", "HTTP request handling time, by route.", ["route"], HTTP_BUCKETS))
        self.ota_check_ins = add(Counter("xiaozhi_ota_check_ins", "OTA check-ins, by the device's state afterwards.", ["state"]))
        self.activations = add(Counter("xiaozhi_activations", "Activation requests, by result.", ["result"]))
        self.auth_decisions = add(Counter("xiaozhi_auth_decisions", "WebSocket handshake auth decisions, by result.", ["result"]))

    def _add(self, family: F) -> F:
        self.registry.register(family.metric)
        return family

    # ---- session events --------------------------------------------------------------------

    @hookimpl
    def xiaozhi_session_event(self, event: SessionEvent) -> None:
        """Observe one session event (called by the plugin manager)."""
        match event:
            case SessionOpened():
                self.sessions_connected.inc()
                self.sessions.inc(protocol_version=str(event.protocol_version))
            case SessionClosed():
                self.sessions_connected.inc(-1)
                self.sessions_closed.inc(reason=event.reason)
            case SessionError():
                self.errors.inc(kind=event.kind)
            case AgentUsage():
                self.agent_tokens.inc(max(0, event.input_tokens), direction="input")
                self.agent_tokens.inc(max(0, event.output_tokens), direction="output")
            case _:
                pass
        for result in self._timer.feed(event):
            match result:
                case StageLatency(stage=stage, seconds=seconds) if stage in STAGES:
                    self.stage_seconds.observe(seconds, stage=stage)
                case StageLatency(stage=stage, seconds=seconds) if stage == RESPONSE:
                    self.response_seconds.observe(seconds)
                case TurnSummary(outcome=outcome):
                    self.turns.inc(outcome=outcome)
                case _:
                    pass

    def watch_load(self, app: Any) -> None:
        """Expose the app's CPU worker pool and talking sessions, read at each scrape."""
        self.registry.register(ServerLoad(app))

    # ---- the ops side ----------------------------------------------------------------------

    def http_request(self, route: str, status: int, seconds: float) -> None:
        self.http_requests.inc(route=route, status=str(status))
        self.http_seconds.observe(seconds, route=route)

    def auth_decision(self, decision: AuthDecision) -> None:
        self.auth_decisions.inc(result="accepted" if decision.ok else "rejected")

    @property
    def connected(self) -> int:
        """Sessions open now, as the events tell."""
        return int(self.sessions_connected.get())

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """(body, Content-Type): every metric, in the format the scrape's ``Accept`` header asks
        for (OpenMetrics, or the Prometheus text format 0.0.4 by default)."""
        encode, content_type = choose_encoder(accept)
        return encode(self.registry), content_type


class ServerLoad:
    """A prometheus-client collector for how loaded the server is, read when scraped: the CPU
    worker pool (threads, busy, queued, saturation, queue waits per kind of work) and the
    sessions in a conversation (and connections refused because there were too many)."""

    def __init__(self, app: Any) -> None:
        self._app = app

    def collect(self) -> Iterable[Metric]:
        now = _now()
        workers = self._app.workers
        if isinstance(workers, CpuWorkers):
            yield from self._workers(workers, now)
        talking = self._app.talking
        count = talking.count(now) if now is not None else 0
        yield GaugeMetricFamily("xiaozhi_sessions_talking", "Sessions in a conversation now (spoke or were answered lately).", value=count)
        yield CounterMetricFamily("xiaozhi_sessions_refused_busy", "Connections refused because max_talking_sessions devices were talking.", value=talking.refused)

    def _workers(self, workers: CpuWorkers, now: float | None) -> Iterable[Metric]:
        if now is not None:
            workers.check_saturation(now)
        yield GaugeMetricFamily("xiaozhi_cpu_workers", "Threads for CPU-heavy backend work.", value=workers.threads)
        yield GaugeMetricFamily("xiaozhi_cpu_workers_busy", "CPU worker threads running a call now.", value=workers.busy)
        yield GaugeMetricFamily("xiaozhi_cpu_calls_queued", "Calls waiting for a CPU worker thread now.", value=workers.waiting)
        yield GaugeMetricFamily(
            "xiaozhi_cpu_saturation", "CPU work demand over capacity now: (running + queued calls) / threads; above 1, calls queue.",
            value=workers.saturation,
        )
        yield GaugeMetricFamily(
            "xiaozhi_cpu_saturated", "1 while CPU work starts late (a saturation episode, logged when it starts and ends).",
            value=1.0 if workers.monitor.saturated else 0.0,
        )
        waits = HistogramMetricFamily(
            "xiaozhi_cpu_queue_wait_seconds", "How long calls waited for a CPU worker thread, by kind of work (speech_end, first_audio, playback...).",
            labels=["kind"],
        )
        for kind, histogram in sorted(workers.waits.items()):
            running, buckets = 0, []
            for bound, count in zip((*WAIT_BUCKETS, float("inf")), histogram.counts):
                running += count
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), running))
            waits.add_metric([kind], buckets, histogram.total)
        yield waits


def _now() -> float | None:
    """trio's clock, or None when not called from a trio run (a test rendering directly)."""
    try:
        return trio.current_time()
    except RuntimeError:
        return None

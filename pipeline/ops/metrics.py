"""Prometheus metrics, fed by the session-event hook and the HTTP server, rendered as text 0.0.4.

A small implementation rather than ``prometheus-client``: the server needs counters, gauges and
histograms with labels, rendered on request, and nothing else; this keeps the runtime free of another
dependency and of a process-global registry (tests and several servers in one process each get their
own ``Metrics``). The test-suite checks the output with ``prometheus-client``'s own parser.

``Metrics`` is a plugin object: the app registers it with the plugin manager and it observes
``xiaozhi_session_event`` like any third-party exporter would.
"""

from __future__ import annotations

import abc
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .. import __version__
from ..events import (
    AgentUsage,
    SessionClosed,
    SessionError,
    SessionEvent,
    SessionOpened,
)
from ..hookspecs import hookimpl
from .settings import require
from .turns import RESPONSE, STAGES, StageLatency, TurnSummary, TurnTimer

if TYPE_CHECKING:
    from .auth import AuthDecision

#: Seconds; from quick local stages (tens of ms) to slow cloud agents.
LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
#: Distinct label sets per metric; beyond that new ones are counted under ``other`` so that a
#: misbehaving client (odd error kinds, many close reasons) cannot grow memory without bound.
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


def format_value(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


class _Family(abc.ABC):
    kind = "untyped"

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = ()) -> None:
        self.name = name
        self.help = help
        self.labelnames = tuple(labelnames)

    def _key(self, series: dict, labels: dict[str, str]) -> tuple[str, ...]:
        if set(labels) != set(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, not {tuple(labels)}")
        key = tuple(str(labels[n]) for n in self.labelnames)
        if key not in series and len(series) >= MAX_SERIES:
            key = tuple("other" for _ in self.labelnames)
        return key

    def header(self) -> list[str]:
        help_text = self.help.replace("\\", "\\\\").replace("\n", "\\n")
        return [f"# HELP {self.name} {help_text}", f"# TYPE {self.name} {self.kind}"]

    @abc.abstractmethod
    def lines(self) -> list[str]:
        """The family's sample lines."""


class Counter(_Family):
    kind = "counter"

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = ()) -> None:
        super().__init__(name, help, labelnames)
        self.values: dict[tuple[str, ...], float] = {} if labelnames else {(): 0.0}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        if amount < 0:
            raise ValueError("a counter only goes up")
        key = self._key(self.values, labels)
        self.values[key] = self.values.get(key, 0.0) + amount

    def get(self, **labels: str) -> float:
        return self.values.get(tuple(labels[n] for n in self.labelnames), 0.0)

    def lines(self) -> list[str]:
        # Counters are exposed with the _total suffix; the family name is declared without it.
        return [f"{self.name}_total{_labels(self.labelnames, k)} {format_value(v)}" for k, v in sorted(self.values.items())]


class Gauge(_Family):
    kind = "gauge"

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = ()) -> None:
        super().__init__(name, help, labelnames)
        self.values: dict[tuple[str, ...], float] = {} if labelnames else {(): 0.0}

    def set(self, value: float, **labels: str) -> None:
        self.values[self._key(self.values, labels)] = value

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = self._key(self.values, labels)
        self.values[key] = self.values.get(key, 0.0) + amount

    def get(self, **labels: str) -> float:
        return self.values.get(tuple(labels[n] for n in self.labelnames), 0.0)

    def lines(self) -> list[str]:
        return [f"{self.name}{_labels(self.labelnames, k)} {format_value(v)}" for k, v in sorted(self.values.items())]


class Histogram(_Family):
    kind = "histogram"

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = (), buckets: Iterable[float] = LATENCY_BUCKETS) -> None:
        super().__init__(name, help, labelnames)
        self.buckets = tuple(sorted(buckets))
        #: label values → (count per bucket, non-cumulative, with +Inf last; sum)
        self.series: dict[tuple[str, ...], tuple[list[int], list[float]]] = {}

    def observe(self, value: float, **labels: str) -> None:
        key = self._key(self.series, labels)
        counts, total = self.series.setdefault(key, ([0] * (len(self.buckets) + 1), [0.0]))
        index = next((i for i, bound in enumerate(self.buckets) if value <= bound), len(self.buckets))
        counts[index] += 1
        total[0] += value

    def count(self, **labels: str) -> int:
        entry = self.series.get(tuple(labels[n] for n in self.labelnames))
        return sum(entry[0]) if entry else 0

    def lines(self) -> list[str]:
        out = []
        for key, (counts, total) in sorted(self.series.items()):
            running = 0
            for bound, n in zip((*self.buckets, math.inf), counts):
                running += n
                le = f'le="{format_value(bound)}"'
                out.append(f"{self.name}_bucket{_labels(self.labelnames, key, le)} {running}")
            out.append(f"{self.name}_sum{_labels(self.labelnames, key)} {format_value(total[0])}")
            out.append(f"{self.name}_count{_labels(self.labelnames, key)} {running}")
        return out


class Metrics:
    """The server's metrics. Register the instance with the plugin manager to feed it session events."""

    def __init__(self) -> None:
        self._families: list[_Family] = []
        self._timer = TurnTimer()
        add = self._add
        self.build_info = add(Gauge("xiaozhi_build_info", "The running xiaozhi-trio version.", ["version"]))
        self.build_info.set(1, version=__version__)
        self.start_time = add(Gauge("process_start_time_seconds", "Start time of the process since the Unix epoch, in seconds."))
        self.start_time.set(time.time())
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

    def _add(self, family: _Family) -> _Family:
        self._families.append(family)
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

    def render(self) -> str:
        """All metrics in the Prometheus text exposition format 0.0.4."""
        lines: list[str] = []
        for family in self._families:
            lines.extend(family.header())
            lines.extend(family.lines())
        return "\n".join(lines) + "\n"


#: The Content-Type of ``render()``'s output.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

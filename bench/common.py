"""Shared pieces of the server benchmarks: a real server in its own process with instant
test-double backends, simulated devices on loopback, percentiles, tables and plots.

The server process builds the ``App`` as ``xiaozhi-trio serve`` does (real WebSocket protocol,
Opus codec, paced sender, worker pool, the observability plugin) but with the fake backends of
``xiaozhi_trio.plugins.testing.fakes.backends``, and adds an observer that keeps every turn's stage latencies from the
session events. The benchmark process drives simulated devices against it and fetches those
latencies through a pipe, so the two processes' CPU never mix and each clock is only ever
compared with itself.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import multiprocessing
import os
import resource
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import ExitStack, asynccontextmanager
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import trio

from xiaozhi_trio.pipeline.audio.framing import pack
from xiaozhi_trio.pipeline.audio.opus import OpusDecoder, OpusEncoder
from xiaozhi_trio.pipeline.client import DeviceClient, connect
from xiaozhi_trio.pipeline.events import SessionClosed, SessionError, SessionEvent, SessionOpened
from xiaozhi_trio.pipeline.hookspecs import hookimpl
from xiaozhi_trio.pipeline.messages import OpusPacket, Samples, SpeechEnded
from xiaozhi_trio.pipeline.ops.turns import TurnSummary, TurnTimer

RESULTS = Path(__file__).resolve().parent / "results"
UPLINK_RATE = 16000
FRAME_MS = 60
FRAME = FRAME_MS / 1000
#: How long to wait for the server process to build its app and listen.
STARTUP_TIMEOUT = 120.0


# ------------------------------------------------------------------------------------------------
# Process plumbing
# ------------------------------------------------------------------------------------------------


def pin(core: int) -> int:
    """Pin this process to the ``core``-th usable core (modulo their count); returns the core."""
    cores = sorted(os.sched_getaffinity(0))
    chosen = cores[core % len(cores)]
    os.sched_setaffinity(0, {chosen})
    return chosen


def raise_fd_limit(wanted: int) -> int:
    """Raise the soft open-file limit to ``wanted`` (capped by the hard limit); returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


def register_phrases(phrases: Iterable[str]) -> None:
    """Give the fake recognizer its phrases. Pitches are handed out in order, so the server and the
    devices must register the same phrases in the same order."""
    from xiaozhi_trio.plugins.testing.fakes.backends import pitch_for

    for phrase in phrases:
        pitch_for(phrase)


# ------------------------------------------------------------------------------------------------
# The server process
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerSpec:
    """What the server process runs with (picklable: it crosses into the child)."""

    #: Phrases the fake recognizer knows, in registration order.
    phrases: tuple[str, ...] = ()
    #: The fake agent's answers by phrase (others are echoed).
    answers: dict[str, str] = field(default_factory=dict)
    #: Overrides of ``[session]``, ``[audio]`` and ``[server]`` keys.
    session: dict[str, Any] = field(default_factory=dict)
    audio: dict[str, Any] = field(default_factory=dict)
    server: dict[str, Any] = field(default_factory=dict)
    #: Pin the server to this core (None: let it use all of them).
    core: int | None = None
    log_level: str = "WARNING"


class TurnRecorder:
    """A session-event observer that keeps each turn's stage latencies and counts the rest."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.timer = TurnTimer()
        self.turns: list[dict[str, Any]] = []
        self.errors: Counter[str] = Counter()
        self.closed: Counter[str] = Counter()
        self.opened = 0

    def figures(self) -> dict[str, Any]:
        """What it kept, picklable: ``turns``, ``errors``, ``closed``, ``opened``."""
        return {"turns": self.turns, "errors": dict(self.errors), "closed": dict(self.closed), "opened": self.opened}

    @hookimpl
    def xiaozhi_session_event(self, event: SessionEvent) -> None:
        match event:
            case SessionOpened():
                self.opened += 1
            case SessionClosed(reason=reason):
                self.closed[reason] += 1
            case SessionError(kind=kind):
                self.errors[kind] += 1
            case _:
                pass
        for result in self.timer.feed(event):
            if isinstance(result, TurnSummary):
                self.turns.append({"device": result.device_id, "turn": result.turn, "outcome": result.outcome, "stages": result.stages})


class TimedWorkers:
    """The app's worker pool, timing each call in three parts: waiting for a thread (the pool is
    shared and FIFO), running, and the hop back to the event loop. Measurement only."""

    #: Calls kept per function at most.
    KEEP = 50_000

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.threads = inner.threads
        self.calls: dict[str, list[tuple[float, float, float]]] = {}

    async def run(self, fn: Any, *args: object) -> Any:
        queued = time.perf_counter()
        marks: list[float] = []

        def timed() -> Any:
            marks.append(time.perf_counter())
            try:
                return fn(*args)
            finally:
                marks.append(time.perf_counter())

        result = await self.inner.run(timed)
        returned = time.perf_counter()
        calls = self.calls.setdefault(getattr(fn, "__qualname__", repr(fn)), [])
        if len(calls) < self.KEEP:
            calls.append((marks[0] - queued, marks[1] - marks[0], returned - marks[1]))
        return result

    @property
    def busy(self) -> int:
        return int(self.inner.busy)

    @property
    def waiting(self) -> int:
        return int(self.inner.waiting)


@dataclass
class ServedApp:
    """What a server process serves: its app, the answers to the benchmark's commands (each a
    function of no arguments that returns something picklable) and tasks to run beside it."""

    app: Any
    commands: dict[str, Callable[[], Any]]
    tasks: tuple[Callable[[], Awaitable[None]], ...] = ()


#: ``build(argument, resources)``: runs in the child process and returns what it serves; anything
#: that must live as long as the server (a temporary data folder) goes on ``resources``. A
#: module-level function, so that it crosses into the child by name.
AppBuilder = Callable[[Any, ExitStack], ServedApp]


def build_fake_app(spec: ServerSpec, resources: ExitStack) -> ServedApp:
    """The app with the instant fake backends and a ``TurnRecorder``; commands ``stats`` and
    ``reset``."""
    if spec.core is not None:
        pin(spec.core)
    raise_fd_limit(16384)
    logging.basicConfig(level=spec.log_level, format="server %(levelname)s %(name)s: %(message)s")
    from xiaozhi_trio.pipeline.app import App
    from xiaozhi_trio.pipeline.registry import Plugins
    from xiaozhi_trio.plugins import observability, sqlite_store
    from xiaozhi_trio.plugins.testing.fakes.backends import FakeAgent, FakeBackends
    from xiaozhi_trio.plugins.testing.harness import fake_config

    register_phrases(spec.phrases)
    data_dir = resources.enter_context(tempfile.TemporaryDirectory(prefix="xiaozhi-bench-"))
    config = fake_config(Path(data_dir), **spec.session)
    config = dataclasses.replace(
        config,
        audio=dataclasses.replace(config.audio, **spec.audio),
        # No limit of talking devices unless the spec sets one: the benchmarks measure beyond it.
        server=dataclasses.replace(config.server, **{"max_talking_sessions": 0, **spec.server}),
    )
    recorder = TurnRecorder()
    fakes = FakeBackends(agent=FakeAgent(answers=dict(spec.answers)))
    app = App.build(config, Plugins(entry_points=False, extra=[sqlite_store, fakes, observability, recorder]))
    workers = TimedWorkers(app.workers)
    app.workers = workers  # type: ignore[assignment]

    def stats() -> dict[str, Any]:
        return {
            **recorder.figures(),
            "live": app.sessions.count,
            "worker_threads": workers.threads,
            "worker_calls": workers.calls,
        }

    def reset() -> None:
        recorder.reset()
        workers.calls.clear()

    return ServedApp(app, {"stats": stats, "reset": reset})


def _server_process_main(build: AppBuilder, argument: Any, conn: Connection) -> None:
    """The server process: build what it serves, serve on loopback, answer the pipe."""
    with ExitStack() as resources:
        served = build(argument, resources)
        trio.run(_serve, served, conn)


async def _serve(served: ServedApp, conn: Connection) -> None:
    from xiaozhi_trio.pipeline.server import serve_devices

    async with trio.open_nursery() as nursery:
        conn.send(await nursery.start(serve_devices, served.app, "127.0.0.1", 0))
        for task in served.tasks:
            nursery.start_soon(task)
        while True:
            try:
                command = await trio.to_thread.run_sync(conn.recv, abandon_on_cancel=True)
            except EOFError:  # the benchmark went away
                break
            if command == "stop":
                break
            conn.send(served.commands[command]())
        nursery.cancel_scope.cancel()
    await served.app.aclose()


class ServerProcess:
    """The server in a child process (``with ServerProcess(spec) as server: server.url``): the one
    harness of every server benchmark. ``build`` (default: the fake backends of ``ServerSpec``)
    makes the app in the child from ``argument``."""

    def __init__(self, argument: Any, build: AppBuilder = build_fake_app) -> None:
        self.argument = argument
        self.build = build
        self.port = 0

    def __enter__(self) -> ServerProcess:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self.process = context.Process(
            target=_server_process_main, args=(self.build, self.argument, child), name="xiaozhi-bench-server", daemon=True
        )
        self.process.start()
        child.close()
        if not self._conn.poll(STARTUP_TIMEOUT):
            self.process.kill()
            raise RuntimeError(f"the server process did not start listening within {STARTUP_TIMEOUT:g} s")
        try:
            self.port = self._conn.recv()
        except EOFError:
            self.process.join(5)
            raise RuntimeError(f"the server process exited while starting (exit code {self.process.exitcode})") from None
        self.ps = psutil.Process(self.process.pid)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._conn.send("stop")
        except (BrokenPipeError, OSError):
            pass
        self.process.join(15)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)
        self._conn.close()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/xiaozhi/v1/"

    def request(self, command: str, timeout: float = 60.0) -> Any:
        """Ask the server process one of its commands (``"stats"``, ``"reset"``...; blocks briefly)."""
        self._conn.send(command)
        if not self._conn.poll(timeout):
            raise RuntimeError(f"the server process did not answer {command!r} within {timeout:g} s")
        return self._conn.recv()

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process so far (all its threads)."""
        times = self.ps.cpu_times()
        return times.user + times.system

    def rss(self) -> int:
        return int(self.ps.memory_info().rss)


# ------------------------------------------------------------------------------------------------
# Uplink audio
# ------------------------------------------------------------------------------------------------


def opus_packets(samples: Samples) -> list[bytes]:
    """16 kHz PCM → 60 ms uplink Opus packets, as the firmware encodes its microphone."""
    encoder = OpusEncoder(UPLINK_RATE, FRAME_MS, 24000)
    return encoder.encode(samples) + encoder.flush()


def frames(packets: Sequence[bytes], protocol_version: int) -> list[bytes]:
    """Opus packets framed for ``protocol_version`` (ready to send as binary messages)."""
    return [pack(protocol_version, OpusPacket(p, timestamp_ms=i * FRAME_MS)) for i, p in enumerate(packets)]


def end_of_speech_packet(packets: Sequence[bytes]) -> int:
    """Index of the packet after which the fake VAD declares the end of speech.

    The server decodes the same packets and runs the same deterministic energy VAD, so this is
    the packet whose arrival ends the user's turn: time from its sending is the server's share.
    """
    from xiaozhi_trio.plugins.testing.fakes.backends import FakeVad

    decoder = OpusDecoder(UPLINK_RATE)
    vad = FakeVad().open_stream()
    for index, packet in enumerate(packets):
        if any(isinstance(event, SpeechEnded) for event in vad.feed(decoder.decode(packet))):
            return index
    raise ValueError("the fake VAD never hears the end of this speech")


# ------------------------------------------------------------------------------------------------
# Simulated devices
# ------------------------------------------------------------------------------------------------


def device_id(index: int) -> str:
    return "02:00:00:{:02x}:{:02x}:{:02x}".format((index >> 16) & 255, (index >> 8) & 255, index & 255)


def client_id(index: int) -> str:
    return f"00000000-0000-4000-8000-{index:012d}"


@dataclass
class Heard:
    """One reply as the device played it, with the driver's trio times."""

    stt: str | None = None
    stt_at: float | None = None
    tts_start_at: float | None = None
    tts_stop_at: float | None = None
    packet_times: list[float] = field(default_factory=list)
    #: Seconds of audio in each packet, when the device decodes them (``Device.decode``).
    packet_seconds: list[float] = field(default_factory=list)
    done: trio.Event = field(default_factory=trio.Event)

    @property
    def first_audio_at(self) -> float | None:
        return self.packet_times[0] if self.packet_times else None


class Device:
    """A connected device whose reader, like the firmware's, runs all the time: it answers MCP
    requests (through a simulated device MCP server), counts keepalives and stray audio, and
    timestamps the current reply."""

    def __init__(self, client: DeviceClient) -> None:
        from xiaozhi_trio.plugins.testing.fakes.mcp_device import SimulatedDevice

        self.client = client
        self.mcp = SimulatedDevice()
        self.heard = Heard()
        self.keepalives = 0
        self.stray_packets = 0
        self.closed = trio.Event()
        #: Decodes a reply packet as it arrives and says how many seconds of audio it held (the
        #: firmware's own Opus work); None: packets are only timestamped.
        self.decode: Callable[[bytes], float] | None = None
        self._speaking = False

    def expect_reply(self) -> Heard:
        self.heard = Heard()
        return self.heard

    async def read(self) -> None:
        """Read until the connection closes (run in the device's nursery)."""
        from trio_websocket import ConnectionClosed

        try:
            while True:
                item = await self.client.receive()
                now = trio.current_time()
                if isinstance(item, OpusPacket):
                    if self._speaking:
                        self.heard.packet_times.append(now)
                        if self.decode is not None:
                            self.heard.packet_seconds.append(self.decode(item.data))
                    else:
                        self.stray_packets += 1
                    continue
                kind, state = item.get("type"), item.get("state")
                if kind == "mcp":
                    payload = item.get("payload", {})
                    if payload.get("method") == "notifications/keepalive":
                        self.keepalives += 1
                    for answer in self.mcp.handle(payload):
                        await self.client.send_json({"type": "mcp", "payload": answer})
                elif kind == "stt":
                    self.heard.stt, self.heard.stt_at = item.get("text"), now
                elif kind == "tts" and state == "start":
                    self._speaking = True
                    self.heard.tts_start_at = now
                elif kind == "tts" and state == "stop":
                    self._speaking = False
                    self.heard.tts_stop_at = now
                    self.heard.done.set()
        except ConnectionClosed:
            pass
        finally:
            self.closed.set()

    async def say(self, uplink: Sequence[bytes], *, mode: str = "auto", timeout: float = 20.0) -> tuple[Heard, list[float]]:
        """``listen start``, then stream ``uplink`` frames in real time until ``tts start`` (the
        firmware stops the microphone then, in auto mode), and wait for ``tts stop``. Returns the
        reply and the send time of each frame; ``heard.done`` is unset on timeout."""
        heard = self.expect_reply()
        await self.client.listen_start(mode)
        sent: list[float] = []
        with trio.move_on_after(timeout):
            start = trio.current_time()
            for index, frame in enumerate(uplink):
                await trio.sleep_until(start + index * FRAME)
                if heard.tts_start_at is not None:
                    break
                await self.client.ws.send_message(frame)
                sent.append(trio.current_time())
            await heard.done.wait()
        return heard, sent


@asynccontextmanager
async def open_device(url: str, index: int, *, protocol_version: int = 1) -> AsyncIterator[Device]:
    """Connect device ``index`` as the firmware does (headers, hello with MCP) with its reader running."""
    async with connect(url, device_id=device_id(index), client_id=client_id(index), protocol_version=protocol_version) as client:
        async with trio.open_nursery() as nursery:
            await client.hello(features={"mcp": True})
            device = Device(client)
            nursery.start_soon(device.read)
            try:
                yield device
            finally:
                nursery.cancel_scope.cancel()


class LoopLag:
    """Measures how late the driver's own event loop wakes up (its share of device-side figures)."""

    def __init__(self, period: float = 0.01) -> None:
        self.period = period
        self.samples: list[float] = []

    async def run(self) -> None:
        while True:
            before = trio.current_time()
            await trio.sleep(self.period)
            self.samples.append(trio.current_time() - before - self.period)


class MachineLoad:
    """CPU that processes other than the benchmark's own used during an interval, in % of a core:
    other work on the machine competes with the server and skews every timing."""

    def __init__(self, *pids: int) -> None:
        self._processes = [psutil.Process(pid) for pid in (os.getpid(), *pids)]

    def _sample(self) -> tuple[float, float, float]:
        total = psutil.cpu_times()
        busy = total.user + total.nice + total.system + getattr(total, "irq", 0.0) + getattr(total, "softirq", 0.0) + getattr(total, "steal", 0.0)
        own = 0.0
        for process in self._processes:
            try:
                times = process.cpu_times()
                own += times.user + times.system
            except psutil.NoSuchProcess:
                pass
        return busy, own, time.monotonic()

    def __enter__(self) -> MachineLoad:
        self._start = self._sample()
        self.others_percent = math.nan
        return self

    def __exit__(self, *exc: object) -> None:
        busy, own, now = self._sample()
        self.others_percent = max(0.0, 100 * ((busy - self._start[0]) - (own - self._start[1])) / (now - self._start[2]))


def wait_for_quiet(max_wait: float, busy_percent: float = 15.0) -> float:
    """Wait (at most ``max_wait`` s) until the machine's other work uses under ``busy_percent`` of
    the cores for 3 s in a row; returns the last busy share seen, in % of all cores."""
    deadline = time.monotonic() + max_wait
    quiet = 0
    busy = psutil.cpu_percent(interval=1.0)
    while time.monotonic() < deadline:
        quiet = quiet + 1 if busy < busy_percent else 0
        if quiet >= 3:
            break
        busy = psutil.cpu_percent(interval=1.0)
    return busy


# ------------------------------------------------------------------------------------------------
# Figures
# ------------------------------------------------------------------------------------------------


def percentiles(values: Sequence[float], points: Sequence[float] = (50, 95, 99)) -> dict[str, float]:
    """``{"n", "p50", "p95", "p99", "max"}`` of ``values`` (NaN when empty)."""
    data = np.asarray(values, dtype=float)
    out: dict[str, float] = {"n": float(len(data))}
    for point in points:
        out[f"p{point:g}"] = float(np.percentile(data, point)) if len(data) else math.nan
    out["max"] = float(data.max()) if len(data) else math.nan
    return out


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A plain-text table, columns right-aligned (also valid Markdown)."""
    cells = [[str(h) for h in headers]] + [[_cell(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.rjust(w) for c, w in zip(row, widths)) + " |" for row in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|")
    return "\n".join(lines)


def _cell(value: object) -> str:
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.1f}"
    return str(value)


def figure_path(name: str) -> Path:
    """``bench/results/<name>`` (the folder is made if needed; it is git-ignored)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    return RESULTS / name


def save_figure(fig: Any, name: str) -> str:
    """Lay out ``fig``, write it to ``bench/results/<name>`` and close it; return the path."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = figure_path(name)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def machine() -> str:
    """A one-line description of this machine, for the tables."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = psutil.virtual_memory().total / 2**30
    return f"{len(os.sched_getaffinity(0))} cores ({model}), {memory:.0f} GiB"

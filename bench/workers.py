"""Scale-out on one machine: talking devices against ``serve --workers 1`` and ``--workers 2``.

The server is the real supervisor (``pipeline/supervisor.py``) with N worker processes sharing the
listening socket, each the real server with the instant test-double backends (energy VAD, pitch
recognizer, scripted agent, tone synthesizer), so any time a turn takes is the server's own. The
simulated devices (this process) talk as in ``bench.server_latency``: stream the microphone in real
time, read the reply, pause, talk again. For each worker count the concurrency rises level by
level; the figure per level is the device-side server-added latency (sending the uplink packet
that completes the VAD's silence window → the first reply audio packet), and the **knee** is the
highest level whose p95 stays ≤ 100 ms with no lost turn.

Then **idle connections per GB**: devices that connect, say hello and stay quiet, spread over the
workers; the slope of the workers' total resident memory against connected devices.

Run from the repository root: ``python -m bench.workers [--workers 1,2] [--sessions 25,50,100,150]``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import psutil
import trio

from bench.common import figure_path, machine, percentiles, raise_fd_limit, register_phrases, table
from bench.server_latency import ANSWER, PHRASE, Level, Uplink, drive

KNEE_P95_MS = 100.0
START_TIMEOUT = 120.0


# ---- the server side (runs in the supervisor and worker processes) -------------------------------


def serve_bench_worker(index: int, sockets: list[socket.socket], ready_dir: str) -> None:
    """One worker: the real server on the fakes, on the supervisor's socket."""
    from xiaozhi_trio.plugins.testing.fakes.backends import FakeAgent, FakeBackends
    from xiaozhi_trio.plugins.testing.harness import fake_config
    from xiaozhi_trio.pipeline.app import App
    from xiaozhi_trio.pipeline.registry import Plugins
    from xiaozhi_trio.pipeline.server import serve_devices

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise_fd_limit(16384)
    register_phrases([PHRASE])
    with tempfile.TemporaryDirectory(prefix="xiaozhi-bench-") as data_dir:
        config = fake_config(Path(data_dir))
        fakes = FakeBackends(agent=FakeAgent(answers={PHRASE: ANSWER}))
        from xiaozhi_trio.plugins import sqlite_store

        app = App.build(config, Plugins(entry_points=False, extra=[sqlite_store, fakes]))

        async def main() -> None:
            async with trio.open_nursery() as nursery:
                await nursery.start(partial(serve_devices, app, sock=sockets[0]))
                (Path(ready_dir) / f"ready-{index}-{os.getpid()}").touch()

        trio.run(main)


def supervise(workers: int, ready_dir: str) -> None:
    """The supervisor process: bind, print the port, run the workers until SIGTERM."""
    from xiaozhi_trio.pipeline.supervisor import Supervisor, bind_listener

    sock = bind_listener("127.0.0.1", 0)
    print(sock.getsockname()[1], flush=True)
    sys.exit(Supervisor(workers, serve_bench_worker, [sock], (ready_dir,), stop_timeout=10).run())


class Cluster:
    """``with Cluster(2) as cluster: cluster.url``: the supervisor and its workers, ready."""

    def __init__(self, workers: int) -> None:
        self.workers = workers

    def __enter__(self) -> Cluster:
        self._ready = tempfile.TemporaryDirectory(prefix="xiaozhi-bench-ready-")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.workers", "--serve", str(self.workers), self._ready.name],
            stdout=subprocess.PIPE, text=True,
        )
        self.port = int(self.process.stdout.readline())
        deadline = time.monotonic() + START_TIMEOUT
        while len(list(Path(self._ready.name).glob("ready-*"))) < self.workers:
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.__exit__()
                raise RuntimeError(f"{self.workers} workers did not start within {START_TIMEOUT:g} s")
            time.sleep(0.1)
        self.pids = [int(p.name.split("-")[2]) for p in Path(self._ready.name).glob("ready-*")]
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._ready.cleanup()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/xiaozhi/v1/"

    def rss(self) -> int:
        return sum(psutil.Process(pid).memory_info().rss for pid in self.pids)

    def cpu_seconds(self) -> float:
        return sum(sum(psutil.Process(pid).cpu_times()[:2]) for pid in self.pids)


# ---- the device side -----------------------------------------------------------------------------


def run_level(cluster: Cluster, sessions: int, args: argparse.Namespace, uplink: Uplink) -> Level:
    level = Level(sessions)
    turns = max(args.min_turns, -(-args.samples // sessions))
    cpu_before, wall_before = cluster.cpu_seconds(), time.monotonic()
    trio.run(drive, cluster.url, level, uplink, turns, args.max_seconds)
    level.server_cpu_percent = 100 * (cluster.cpu_seconds() - cpu_before) / (time.monotonic() - wall_before)
    return level


async def hold_idle(url: str, count: int, cluster: Cluster, steps: int) -> list[tuple[int, int]]:
    """Connect ``count`` quiet devices in ``steps`` batches; (connected, workers' RSS) after each."""
    from bench.common import open_device

    points = [(0, cluster.rss())]
    release = trio.Event()

    async def hold(index: int, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with open_device(url, index + 1):
            task_status.started()
            await release.wait()

    async with trio.open_nursery() as nursery:
        per_step = count // steps
        for step in range(steps):
            async with trio.open_nursery() as batch:
                for index in range(step * per_step, (step + 1) * per_step):
                    batch.start_soon(partial(nursery.start, partial(hold, index)))
            await trio.sleep(1.0)  # let allocations settle
            points.append(((step + 1) * per_step, cluster.rss()))
        release.set()
    return points


def slope(points: list[tuple[int, int]]) -> float:
    """Least-squares bytes per device."""
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    covariance = sum((x - mean_x) * (y - mean_y) for x, y in points)
    variance = sum((x - mean_x) ** 2 for x, _ in points)
    return covariance / variance if variance else float("nan")


def knee(levels: list[Level]) -> int | None:
    """The highest concurrency whose p95 ≤ 100 ms with no lost turn (levels in rising order)."""
    best = None
    for level in levels:
        if level.lost_turns or not level.device_net_ms or percentiles(level.device_net_ms)["p95"] > KNEE_P95_MS:
            break
        best = level.sessions
    return best


def report(results: dict[int, list[Level]], idle: dict[int, float]) -> str:
    rows = []
    for workers, levels in results.items():
        for level in levels:
            p = percentiles(level.device_net_ms) if level.device_net_ms else {"p50": float("nan"), "p95": float("nan"), "max": float("nan")}
            rows.append([workers, level.sessions, len(level.device_net_ms), level.lost_turns,
                         f"{p['p50']:.1f}", f"{p['p95']:.1f}", f"{p['max']:.1f}", f"{level.server_cpu_percent:.0f}%"])
    out = [table(["workers", "talking devices", "turns", "lost", "p50 ms", "p95 ms", "max ms", "server CPU"], rows)]
    for workers, levels in results.items():
        found = knee(levels)
        out.append(f"knee with {workers} worker(s): {found if found is not None else 'below the lowest level'} talking devices "
                   f"(p95 ≤ {KNEE_P95_MS:g} ms, no lost turn)")
    for workers, per_device in idle.items():
        out.append(f"idle, {workers} worker(s): {per_device / 1024:.1f} KiB per connected device → "
                   f"{(1 << 30) / per_device:,.0f} idle connections per GB")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", nargs=2, metavar=("WORKERS", "READY_DIR"), help=argparse.SUPPRESS)
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    parser.add_argument("--sessions", default="25,50,100,150,200", help="comma-separated talking-device levels (rising)")
    parser.add_argument("--samples", type=int, default=150, help="turns per level at least")
    parser.add_argument("--min-turns", type=int, default=5, help="turns per device at least")
    parser.add_argument("--max-seconds", type=float, default=240.0, help="time limit per level")
    parser.add_argument("--idle", type=int, default=1000, help="quiet devices for the memory slope (0: skip)")
    parser.add_argument("--output", default="workers.json", help="raw figures, under bench/results/")
    args = parser.parse_args()
    if args.serve:
        supervise(int(args.serve[0]), args.serve[1])
        return
    raise_fd_limit(16384)
    register_phrases([PHRASE])
    uplink = Uplink.build(1)
    results: dict[int, list[Level]] = {}
    idle: dict[int, float] = {}
    for workers in (int(w) for w in args.workers.split(",")):
        with Cluster(workers) as cluster:
            results[workers] = []
            for sessions in (int(s) for s in args.sessions.split(",")):
                print(f"... {workers} worker(s), {sessions} talking device(s)", flush=True)
                level = run_level(cluster, sessions, args, uplink)
                results[workers].append(level)
                if knee(results[workers]) != sessions:
                    break  # past the knee: higher levels only take longer
            if args.idle:
                print(f"... {workers} worker(s), {args.idle} idle devices", flush=True)
                points = trio.run(hold_idle, cluster.url, args.idle, cluster, 5)
                idle[workers] = slope(points)
    print(f"\n{machine()}; load average before: {os.getloadavg()}\n")
    print(report(results, idle))
    raw = figure_path(args.output)
    raw.write_text(json.dumps({"levels": {w: [level.__dict__ for level in levels] for w, levels in results.items()},
                               "idle_bytes_per_device": idle}))
    print(f"\nraw figures: {raw}")


if __name__ == "__main__":
    main()

"""Idle devices: what a connected device that says nothing costs, and whether 1,000 of them hold.

A real server runs in its own process (default config: keepalive every 45 s of quiet, idle goodbye
after 300 s, at most 1,000 sessions) with the instant test-double backends. Simulated devices (this
process) connect in batches as the firmware does (handshake headers, hello with MCP; each answers
the server's ``initialize`` and ``tools/list`` through a simulated device MCP server) and then only
read. Measured from the server process (psutil):

* **memory**: resident set size at each step of connected devices; the slope is the cost of one;
* **CPU**: CPU time of the server process over a window with none connected, then with all of
  them, so the difference per device is what an idle one costs (keepalives included when the
  window is longer than the keepalive interval);
* **holding**: after the window every device must still be connected, have received at least one
  keepalive, and answer a WebSocket ping; then one of them talks a turn, to show the server still
  answers promptly with the others connected. Finally all disconnect and the sessions must end;
  a second cycle connects and disconnects them all again, so a leak would show as memory growing.

Run from the repository root: ``python -m bench.idle [--devices 1000] [--window 60]``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import trio
from trio_websocket import ConnectionClosed, HandshakeError

from bench.common import (
    Device,
    MachineLoad,
    ServerProcess,
    ServerSpec,
    end_of_speech_packet,
    figure_path,
    save_figure,
    frames,
    machine,
    open_device,
    opus_packets,
    percentiles,
    pin,
    raise_fd_limit,
    register_phrases,
    table,
    wait_for_quiet,
)

PHRASE = "are you still there"
BATCH = 50
#: The server's default idle timeout: the whole hold must end well before it.
IDLE_TIMEOUT = 300.0
TARGET_CPU_PERCENT = 0.1
TARGET_MEMORY_MB = 2.0


@dataclass
class Result:
    steps: list[dict[str, Any]] = field(default_factory=list)
    baseline_cpu_percent: float = math.nan
    loaded_cpu_percent: float = math.nan
    others_cpu_percent: float = math.nan
    window: float = 0.0
    baseline_window: float = 0.0
    connect_failures: int = 0
    connect_seconds: list[float] = field(default_factory=list)
    still_connected: int = 0
    with_keepalive: int = 0
    keepalives: list[int] = field(default_factory=list)
    pings_answered: int = 0
    live_sessions: int = 0
    turn_ms: float = math.nan
    turn_heard: str | None = None
    live_after_disconnect: int = -1
    rss_after_disconnect: int = 0
    #: Later connect/disconnect cycles (a leak would show as RSS growing cycle after cycle).
    cycles: list[dict[str, Any]] = field(default_factory=list)
    per_device_cpu_percent: float = math.nan
    per_device_kb: float = math.nan


async def measure_cpu(server: ServerProcess, seconds: float) -> tuple[float, float]:
    """Server CPU over ``seconds`` (% of a core) and other processes' meanwhile."""
    before, start = server.cpu_seconds(), time.monotonic()
    with MachineLoad(server.process.pid) as load:
        await trio.sleep(seconds)
    return 100 * (server.cpu_seconds() - before) / (time.monotonic() - start), load.others_percent


async def hold_device(url: str, index: int, release: trio.Event, devices: list[Device], *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    async with open_device(url, index) as device:
        devices.append(device)
        task_status.started()
        await release.wait()


async def connect_batch(nursery: trio.Nursery, url: str, indices: range, release: trio.Event, devices: list[Device], result: Result) -> None:
    async def one(index: int) -> None:
        started = trio.current_time()
        try:
            with trio.fail_after(30):
                await nursery.start(hold_device, url, index, release, devices)
        except (HandshakeError, ConnectionClosed, OSError, TimeoutError):
            result.connect_failures += 1
            return
        result.connect_seconds.append(trio.current_time() - started)

    async with trio.open_nursery() as batch:
        for index in indices:
            batch.start_soon(one, index)


async def talk_once(device: Device) -> tuple[float, str | None]:
    """One turn from an idle device; device-side ms from the end-of-speech packet to first audio."""
    from xiaozhi_trio.plugins.testing.fakes.backends import speech

    packets = opus_packets(speech(PHRASE, 0.6)) + opus_packets(np.zeros(3 * 16000, dtype=np.float32))
    end = end_of_speech_packet(packets)
    heard, sent = await device.say(frames(packets, device.client.protocol_version), timeout=20)
    if heard.first_audio_at is None or len(sent) <= end:
        return math.nan, heard.stt
    return (heard.first_audio_at - sent[end]) * 1000, heard.stt


async def connect_up_to(nursery: trio.Nursery, server: ServerProcess, count: int, release: trio.Event, devices: list[Device], result: Result) -> None:
    """Connect devices in batches until ``count`` are connected or have failed."""
    for start in range(len(devices) + result.connect_failures, count, BATCH):
        await connect_batch(nursery, server.url, range(start + 1, min(start + BATCH, count) + 1), release, devices, result)


async def sessions_end(server: ServerProcess) -> int:
    """Wait (at most 15 s) until the server has no session left; returns how many are left."""
    with trio.move_on_after(15):
        while (live := (await trio.to_thread.run_sync(server.request, "stats"))["live"]) > 0:
            await trio.sleep(0.5)
    return live


async def run(server: ServerProcess, args: argparse.Namespace, result: Result) -> None:
    steps = sorted({s for s in (10, 100, 250, 500, args.devices) if s <= args.devices})
    await trio.sleep(2)
    result.steps.append({"devices": 0, "rss": server.rss()})
    result.baseline_window = args.baseline_window
    result.baseline_cpu_percent, _ = await measure_cpu(server, args.baseline_window)
    devices: list[Device] = []
    release = trio.Event()
    async with trio.open_nursery() as nursery:
        first_connected = trio.current_time()
        for step in steps:
            await connect_up_to(nursery, server, step, release, devices, result)
            await trio.sleep(args.settle)
            result.steps.append({"devices": len(devices), "rss": server.rss()})
            print(f"    {len(devices)} connected, server RSS {server.rss() / 2**20:.1f} MiB", flush=True)
        result.window = args.window
        result.loaded_cpu_percent, result.others_cpu_percent = await measure_cpu(server, args.window)
        # Every device must have had a keepalive by now (one per keepalive interval of quiet).
        with trio.move_on_after(max(0.0, first_connected + IDLE_TIMEOUT - 60 - trio.current_time())):
            while any(d.keepalives == 0 and not d.closed.is_set() for d in devices):
                await trio.sleep(1)
        result.still_connected = sum(not d.closed.is_set() for d in devices)
        result.keepalives = [d.keepalives for d in devices]
        result.with_keepalive = sum(d.keepalives > 0 for d in devices)

        async def ping(device: Device) -> None:
            with trio.move_on_after(10):
                await device.client.ws.ping()
                result.pings_answered += 1

        async with trio.open_nursery() as pings:
            for device in devices:
                pings.start_soon(ping, device)
        result.live_sessions = (await trio.to_thread.run_sync(server.request, "stats"))["live"]
        if devices:
            result.turn_ms, result.turn_heard = await talk_once(devices[0])
        release.set()
    # The devices are gone: every session must end and give its memory back.
    result.live_after_disconnect = await sessions_end(server)
    await trio.sleep(args.settle)
    result.rss_after_disconnect = server.rss()
    for _ in range(args.cycles - 1):
        devices, release, failures = [], trio.Event(), result.connect_failures
        async with trio.open_nursery() as nursery:
            await connect_up_to(nursery, server, args.devices + failures, release, devices, result)
            await trio.sleep(args.settle)
            connected_rss = server.rss()
            release.set()
        left = await sessions_end(server)
        await trio.sleep(args.settle)
        result.cycles.append({"connected": len(devices), "rss_connected": connected_rss, "sessions_left": left, "rss_after": server.rss()})
        print(f"    again: {len(devices)} connected, server RSS {connected_rss / 2**20:.1f} MiB, {server.rss() / 2**20:.1f} MiB after", flush=True)


def report(result: Result, devices: int) -> str:
    counts = np.array([s["devices"] for s in result.steps], dtype=float)
    rss = np.array([s["rss"] for s in result.steps], dtype=float)
    slope = float(np.polyfit(counts, rss, 1)[0]) if len(counts) > 1 else math.nan
    result.per_device_kb = slope / 1024
    connected = int(counts[-1]) if len(counts) else 0
    result.per_device_cpu_percent = (result.loaded_cpu_percent - result.baseline_cpu_percent) / connected if connected else math.nan
    memory_rows = [[int(c), r / 2**20, (r - rss[0]) / c / 1024 if c else math.nan] for c, r in zip(counts, rss)]
    connect = percentiles([s * 1000 for s in result.connect_seconds])
    keepalives = percentiles(result.keepalives)
    lines = [
        "Server memory by connected idle devices",
        table(["devices", "server RSS MiB", "KiB per device (vs none)"], memory_rows),
        f"slope (least squares): {result.per_device_kb:.1f} KiB per idle device (target < {TARGET_MEMORY_MB:g} MB)",
        "",
        "Server CPU, % of one core",
        table(
            ["devices", "window s", "server CPU %", "per device %", "other processes CPU %"],
            [
                [0, result.baseline_window, f"{result.baseline_cpu_percent:.3f}", "–", "–"],
                [connected, result.window, f"{result.loaded_cpu_percent:.3f}", f"{result.per_device_cpu_percent:.5f}", result.others_cpu_percent],
            ],
        ),
        "",
        "Holding",
        table(
            ["asked", "connected", "failed", "connect+hello p50 / p99 ms", "still connected", "≥ 1 keepalive", "keepalives p50 / max", "pings answered", "server sessions", "sessions after disconnect", "RSS after disconnect MiB"],
            [
                [
                    devices,
                    connected,
                    result.connect_failures,
                    f"{connect['p50']:.0f} / {connect['p99']:.0f}",
                    result.still_connected,
                    result.with_keepalive,
                    f"{keepalives['p50']:.0f} / {keepalives['max']:.0f}",
                    result.pings_answered,
                    result.live_sessions,
                    result.live_after_disconnect,
                    result.rss_after_disconnect / 2**20,
                ]
            ],
        ),
        *[
            f"cycle {i + 2}: {c['connected']} connected again, RSS {c['rss_connected'] / 2**20:.1f} MiB; "
            f"all gone: {c['sessions_left']} sessions left, RSS {c['rss_after'] / 2**20:.1f} MiB"
            for i, c in enumerate(result.cycles)
        ],
        f"one turn with {connected - 1} others idle: {result.turn_ms:.1f} ms from the end-of-speech packet to first audio (heard {result.turn_heard!r})",
        "",
    ]
    held = connected == devices and result.still_connected == devices and result.with_keepalive == devices and result.pings_answered == devices and result.live_sessions == devices
    lines.append(f"idle CPU per device {result.per_device_cpu_percent:.5f} % of a core (target < {TARGET_CPU_PERCENT:g} %): {'met' if result.per_device_cpu_percent < TARGET_CPU_PERCENT else 'MISSED'}")
    lines.append(f"memory per device {result.per_device_kb / 1024:.3f} MB (target < {TARGET_MEMORY_MB:g} MB): {'met' if result.per_device_kb / 1024 < TARGET_MEMORY_MB else 'MISSED'}")
    lines.append(f"{devices} idle connections held: {'met' if held else 'MISSED'}")
    return "\n".join(lines)


def plot(result: Result, name: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    counts = [s["devices"] for s in result.steps]
    ax.plot(counts, [s["rss"] / 2**20 for s in result.steps], marker="o")
    ax.set_xlabel("connected idle devices")
    ax.set_ylabel("server RSS, MiB")
    ax.set_title(f"Server memory: {result.per_device_kb:.0f} KiB per idle device")
    ax.grid(True, alpha=0.3)
    return save_figure(fig, name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=1000, help="idle devices to connect (the default config allows 1,000)")
    parser.add_argument("--window", type=float, default=60.0, help="seconds of CPU measurement with all devices connected")
    parser.add_argument("--baseline-window", type=float, default=30.0, help="seconds of CPU measurement with none")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds after each step before reading memory")
    parser.add_argument("--cycles", type=int, default=2, help="connect/disconnect cycles (later ones only check memory comes back)")
    parser.add_argument("--pin", action="store_true", help="server on one core, devices on the other")
    parser.add_argument("--quiet-wait", type=float, default=60.0, help="seconds to wait at most for other work on the machine to calm down")
    parser.add_argument("--plot", default="idle.png", help="file name under bench/results/")
    args = parser.parse_args()
    if args.window > IDLE_TIMEOUT - 120:
        parser.error(f"--window must leave the hold well inside the server's {IDLE_TIMEOUT:g} s idle timeout")
    raise_fd_limit(args.devices + 1024)
    if args.pin:
        pin(1)
    register_phrases([PHRASE])
    result = Result()
    with ServerProcess(ServerSpec(phrases=(PHRASE,), core=0 if args.pin else None)) as server:
        wait_for_quiet(args.quiet_wait)
        trio.run(run, server, args, result)
    print(f"\n{machine()}; server {'pinned to one core, devices on the other' if args.pin else 'and devices sharing all cores'}\n")
    print(report(result, args.devices))
    print(f"\nplot: {plot(result, args.plot)}")
    figure_path(args.plot.rsplit(".", 1)[0] + ".json").write_text(json.dumps(result.__dict__))


if __name__ == "__main__":
    main()

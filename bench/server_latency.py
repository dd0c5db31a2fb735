"""Server-added latency per turn: end of the user's speech → first downlink audio packet.

A real server runs in its own process with the instant test-double backends (energy VAD, pitch
recognizer, echo agent, tone synthesizer), so whatever time a turn takes is the server's own:
uplink framing and Opus decoding, VAD, the session's channels, the turn's stages, resampling,
Opus encoding in the worker pool, pacing and the WebSocket write. N simulated devices (this
process) talk at the same time over loopback, each turn as the firmware does in ``auto`` mode: stream
the microphone in real time (speech, then silence) until ``tts start``, read the reply to
``tts stop``, pause, and ``listen start`` again.

Two figures per turn, each from one process's clock:

* **server-side**: ``SpeechEndDetected.at`` → ``FirstAudio.at`` (session events, observed in the
  server). Starts when the VAD has decided, so it leaves out the time an uplink packet waits in
  the socket and queues before the VAD sees it.
* **device-side**: sending the uplink packet that completes the VAD's silence window → receiving
  the first audio packet. The benchmark runs the same decoder and energy VAD on the same packets
  to find that packet, so the end-of-speech window (300 ms of silence in the fake VAD, and up to a
  frame of quantisation) is excluded exactly; everything else (loopback, both WebSocket stacks,
  queues, the driver's own scheduling) is included. The gross figure from the last voiced packet
  is shown for reference; it contains that window.

Targets (issue 2): p95 ≤ 30 ms with one session and ≤ 100 ms with 50 talking sessions, on 2 cores.

Run from the repository root: ``python -m bench.server_latency [--sessions 1,10,25,50] [--pin]``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import trio

from bench.common import (
    FRAME,
    LoopLag,
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

PHRASE = "what time is it"
ANSWER = "It is a quarter past nine. Anything else?"
SPEECH_SECONDS = 0.6
#: Microphone silence streamed after the speech at most (the reply starts long before).
SILENCE_SECONDS = 3.0
TURN_TIMEOUT = 20.0
TARGETS_MS = {1: 30.0, 50: 100.0}


@dataclass
class Level:
    """Everything measured at one concurrency."""

    sessions: int
    device_net_ms: list[float] = field(default_factory=list)
    device_gross_ms: list[float] = field(default_factory=list)
    server_ms: list[float] = field(default_factory=list)
    stages_ms: dict[str, list[float]] = field(default_factory=dict)
    lost_turns: int = 0
    stray_packets: int = 0
    server_cpu_percent: float = math.nan
    #: CPU used meanwhile by other processes on the machine (% of a core).
    others_cpu_percent: float = math.nan
    driver_lag_p99_ms: float = math.nan
    seconds: float = 0.0
    server_errors: dict[str, int] = field(default_factory=dict)
    #: Worker-pool calls by function: (wait for a thread, run, hop back) in seconds.
    worker_calls: dict[str, list[list[float]]] = field(default_factory=dict)


@dataclass(frozen=True)
class Uplink:
    """One turn's microphone stream, framed, and where in it speech ends."""

    frames: list[bytes]
    last_voiced: int
    end_of_speech: int

    @classmethod
    def build(cls, protocol_version: int) -> Uplink:
        from xiaozhi_trio.plugins.testing.fakes.backends import speech

        voiced = opus_packets(speech(PHRASE, SPEECH_SECONDS))
        silence = opus_packets(np.zeros(int(SILENCE_SECONDS * 16000), dtype=np.float32))
        packets = voiced + silence
        return cls(frames(packets, protocol_version), len(voiced) - 1, end_of_speech_packet(packets))


async def drive(url: str, level: Level, uplink: Uplink, turns: int, max_seconds: float) -> None:
    """``level.sessions`` devices, each saying ``turns`` turns (bounded by ``max_seconds``)."""
    rng = random.Random(level.sessions)
    # One turn takes about this long; devices start spread across it so they do not talk in step.
    period = (uplink.end_of_speech + 1) * FRAME + 1.5
    lag = LoopLag()

    async def device(index: int) -> None:
        await trio.sleep(period * index / level.sessions)
        async with open_device(url, index + 1) as dev:
            for _ in range(turns):
                heard, sent = await dev.say(uplink.frames, timeout=TURN_TIMEOUT)
                first = heard.first_audio_at
                if not heard.done.is_set() or first is None or len(sent) <= uplink.end_of_speech or heard.stt != PHRASE:
                    level.lost_turns += 1
                    continue
                level.device_net_ms.append((first - sent[uplink.end_of_speech]) * 1000)
                level.device_gross_ms.append((first - sent[uplink.last_voiced]) * 1000)
                # The firmware plays out its queue before listening again; then a user thinks.
                await trio.sleep(rng.uniform(0.2, 0.6))
            level.stray_packets += dev.stray_packets

    started = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lag.run)
        with trio.move_on_after(max_seconds):
            async with trio.open_nursery() as devices:
                for index in range(level.sessions):
                    devices.start_soon(device, index)
        nursery.cancel_scope.cancel()
    level.seconds = trio.current_time() - started
    level.driver_lag_p99_ms = percentiles(lag.samples)["p99"] * 1000


def run_level(sessions: int, args: argparse.Namespace, uplink: Uplink) -> Level:
    level = Level(sessions)
    turns = max(args.min_turns, math.ceil(args.samples / sessions))
    spec = ServerSpec(phrases=(PHRASE,), answers={PHRASE: ANSWER}, core=0 if args.pin else None)
    with ServerProcess(spec) as server:
        wait_for_quiet(args.quiet_wait)
        cpu_before, wall_before = server.cpu_seconds(), time.monotonic()
        with MachineLoad(server.process.pid) as load:
            trio.run(drive, server.url, level, uplink, turns, args.max_seconds)
        cpu_after, wall_after = server.cpu_seconds(), time.monotonic()
        stats = server.request("stats")
    level.others_cpu_percent = load.others_percent
    level.server_cpu_percent = 100 * (cpu_after - cpu_before) / (wall_after - wall_before)
    level.server_errors = stats["errors"]
    level.worker_calls = stats["worker_calls"]
    for turn in stats["turns"]:
        if turn["outcome"] != "completed":
            continue
        for stage, seconds in turn["stages"].items():
            level.stages_ms.setdefault(stage, []).append(seconds * 1000)
    level.server_ms = level.stages_ms.get("speech_end_to_first_audio", [])
    return level


def report(levels: list[Level]) -> str:
    out = []

    def rows(pick: Any) -> list[list[object]]:
        result = []
        for level in levels:
            p = percentiles(pick(level))
            result.append([level.sessions, int(p["n"]), p["p50"], p["p95"], p["p99"], p["max"]])
        return result

    head = ["sessions", "turns", "p50 ms", "p95 ms", "p99 ms", "max ms"]
    out.append("Device-side: end-of-speech packet sent → first audio packet received")
    out.append(table(head, rows(lambda lv: lv.device_net_ms)))
    out.append("\nServer-side: SpeechEndDetected → FirstAudio (session events)")
    out.append(table(head, rows(lambda lv: lv.server_ms)))
    out.append("\nFor reference, device-side from the last voiced packet (includes the VAD's 300 ms silence window)")
    out.append(table(head, rows(lambda lv: lv.device_gross_ms)))
    stages = ["speech_end_to_transcript", "transcript_to_first_text", "first_text_to_first_sentence", "first_sentence_to_first_audio"]
    out.append("\nServer-side stages, p50 / p95 ms")
    stage_rows = []
    for level in levels:
        cells: list[object] = [level.sessions]
        for stage in stages:
            p = percentiles(level.stages_ms.get(stage, []))
            cells.append(f"{p['p50']:.1f} / {p['p95']:.1f}")
        stage_rows.append(cells)
    out.append(table(["sessions", "→ transcript", "→ first text", "→ first sentence", "→ first audio"], stage_rows))
    out.append("\nWorker pool calls (the Opus encoder): wait for a thread / run / hop back to the event loop, p50 and p99 ms")
    pool_rows = []
    for level in levels:
        for name, calls in sorted(level.worker_calls.items()):
            parts = np.asarray(calls, dtype=float).reshape(-1, 3) * 1000
            cells: list[object] = [level.sessions, name, len(parts)]
            for column in range(3):
                p = percentiles(parts[:, column])
                cells.append(f"{p['p50']:.2f} / {p['p99']:.2f}")
            pool_rows.append(cells)
    out.append(table(["sessions", "call", "calls", "wait", "run", "hop back"], pool_rows))
    out.append("\nLoad (CPU in % of one core; the machine has two)")
    out.append(
        table(
            ["sessions", "seconds", "lost turns", "stray packets", "server CPU %", "other processes CPU %", "driver loop lag p99 ms", "server errors"],
            [
                [lv.sessions, lv.seconds, lv.lost_turns, lv.stray_packets, lv.server_cpu_percent, lv.others_cpu_percent, lv.driver_lag_p99_ms, lv.server_errors or "none"]
                for lv in levels
            ],
        )
    )
    verdicts = []
    for level in levels:
        target = TARGETS_MS.get(level.sessions)
        if target is not None:
            device_p95 = percentiles(level.device_net_ms)["p95"]
            server_p95 = percentiles(level.server_ms)["p95"]
            ok = device_p95 <= target and server_p95 <= target
            verdicts.append(
                f"{level.sessions} session(s): p95 device-side {device_p95:.1f} ms, server-side {server_p95:.1f} ms, target ≤ {target:g} ms: {'met' if ok else 'MISSED'}"
            )
    out.append("\n" + "\n".join(verdicts))
    return "\n".join(out)


def plot(levels: list[Level], name: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, (title, pick) in zip(
        axes,
        [("device-side: end-of-speech packet → first audio", lambda lv: lv.device_net_ms), ("server-side: SpeechEndDetected → FirstAudio", lambda lv: lv.server_ms)],
    ):
        for level in levels:
            values = np.sort(np.asarray(pick(level)))
            if len(values):
                ax.plot(values, np.arange(1, len(values) + 1) / len(values), label=f"{level.sessions} session{'s' if level.sessions > 1 else ''}")
        for target in TARGETS_MS.values():
            ax.axvline(target, color="grey", linestyle=":", linewidth=1)
        ax.axhline(0.95, color="grey", linestyle="--", linewidth=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("ms (log scale)")
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("fraction of turns")
    axes[0].legend()
    fig.suptitle("Server-added turn latency, instant backends (dotted: 30 / 100 ms targets; dashed: p95)")
    return save_figure(fig, name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", default="1,10,25,50", help="comma-separated concurrency levels")
    parser.add_argument("--samples", type=int, default=150, help="turns per level at least (spread over the sessions)")
    parser.add_argument("--min-turns", type=int, default=20, help="turns per session at least")
    parser.add_argument("--max-seconds", type=float, default=300.0, help="time limit per level")
    parser.add_argument("--pin", action="store_true", help="server on one core, devices on the other")
    parser.add_argument("--quiet-wait", type=float, default=60.0, help="seconds to wait at most for other work on the machine to calm down before each level")
    parser.add_argument("--protocol-version", type=int, default=1, choices=(1, 2, 3))
    parser.add_argument("--plot", default="server_latency.png", help="file name under bench/results/")
    args = parser.parse_args()
    raise_fd_limit(4096)
    if args.pin:
        pin(1)
    register_phrases([PHRASE])
    uplink = Uplink.build(args.protocol_version)
    levels = []
    for sessions in (int(s) for s in args.sessions.split(",")):
        print(f"... {sessions} session(s)", flush=True)
        levels.append(run_level(sessions, args, uplink))
    print(f"\n{machine()}; server {'pinned to one core, devices on the other' if args.pin else 'and devices sharing all cores'}; "
          f"speech {SPEECH_SECONDS:g} s, end of speech at uplink packet {uplink.end_of_speech} (last voiced {uplink.last_voiced})\n")
    print(report(levels))
    print(f"\nplot: {plot(levels, args.plot)}")
    raw = figure_path(args.plot.rsplit(".", 1)[0] + ".json")
    raw.write_text(json.dumps([level.__dict__ for level in levels]))


if __name__ == "__main__":
    main()

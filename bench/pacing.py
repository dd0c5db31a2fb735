"""Downlink pacing: does a 30 s reply reach the device steadily, without overflowing its buffer?

A real server runs in its own process with the instant test-double backends; the fake agent
answers with ~30 s of text, which the tone synthesizer turns into ~30 s of audio as fast as it is
asked, so the paced sender alone decides when packets leave. Simulated devices (this process) ask
for such a reply three times in a row and timestamp every downlink packet as it arrives.

Per reply, at the device:

* **gaps** between consecutive packets: with 60 ms frames the steady state is one packet per 60 ms;
  a longer gap is the sender (or the network, or the device's own loop) running late.
* **modelled device queue**: the firmware decodes packets into a queue of about 40 frames and plays
  them in real time from the first one. Replaying the arrival times through that model gives the
  queue's depth after each arrival (the server's lead) and any underrun (the queue ran dry before
  the next packet came: an audible click). The lead must stay under the 40-frame buffer; by design
  it stays near the configured ``downlink_lead_ms``.

Run from the repository root: ``python -m bench.pacing [--sessions 1,25] [--replies 3]``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass, field

import numpy as np
import trio

from bench.common import (
    FRAME,
    LoopLag,
    MachineLoad,
    ServerProcess,
    ServerSpec,
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

PHRASE = "tell me a long story"
#: 76 characters; the fake synthesizer speaks 20 ms per character, so 20 of them last ~30 s.
SENTENCE = "This is one part of a long reply that keeps the little speaker busy for now."
REPLY_SENTENCES = 20
#: The firmware's playback queue, in frames.
DEVICE_BUFFER_FRAMES = 40
#: The server's configured lead (``[audio] downlink_lead_ms``, default).
LEAD_MS = 180


@dataclass
class Playback:
    """One reply replayed through the device's queue model."""

    packets: int
    gaps_ms: list[float]
    max_lead_ms: float
    underruns: int
    starved_ms: float
    #: First packet → last packet, against the audio's own length.
    delivery_seconds: float
    leads_ms: list[float] = field(default_factory=list)
    #: Packet indices that arrived after the queue had run dry.
    underrun_at: list[int] = field(default_factory=list)

    @property
    def min_margin_ms(self) -> float:
        """The least audio still queued when a packet arrived once the opening burst was in
        (negative: the queue had run dry): the margin left against late packets."""
        burst = round(LEAD_MS / (FRAME * 1000))
        return min((self.leads_ms[i - 1] - self.gaps_ms[i - 1] for i in range(burst, self.packets)), default=math.nan)

    @classmethod
    def model(cls, times: list[float]) -> Playback:
        played_out: float | None = None
        underruns, starved, leads, where = 0, 0.0, [], []
        for index, t in enumerate(times):
            if played_out is None or t >= played_out:
                if played_out is not None and t > played_out:
                    underruns += 1
                    where.append(index)
                    starved += t - played_out
                played_out = t + FRAME
            else:
                played_out += FRAME
            leads.append((played_out - t) * 1000)
        gaps = list(np.diff(times) * 1000) if len(times) > 1 else []
        return cls(len(times), gaps, max(leads, default=0.0), underruns, starved * 1000, times[-1] - times[0] if times else 0.0, leads, where)


@dataclass
class Level:
    sessions: int
    replies: list[Playback] = field(default_factory=list)
    failed: int = 0
    stray_packets: int = 0
    server_cpu_percent: float = math.nan
    others_cpu_percent: float = math.nan
    driver_lag_p99_ms: float = math.nan


async def drive(url: str, level: Level, uplink: list[bytes], args: argparse.Namespace) -> None:
    lag = LoopLag()

    async def device(index: int) -> None:
        await trio.sleep(args.spread * index / level.sessions)
        async with open_device(url, index + 1) as dev:
            for _ in range(args.replies):
                heard, _ = await dev.say(uplink, timeout=args.timeout)
                if not heard.done.is_set() or not heard.packet_times:
                    level.failed += 1
                    continue
                level.replies.append(Playback.model(heard.packet_times))
                await trio.sleep(0.3)  # the firmware plays out its queue, then listens again
            level.stray_packets += dev.stray_packets

    async with trio.open_nursery() as nursery:
        nursery.start_soon(lag.run)
        async with trio.open_nursery() as devices:
            for index in range(level.sessions):
                devices.start_soon(device, index)
        nursery.cancel_scope.cancel()
    level.driver_lag_p99_ms = percentiles(lag.samples)["p99"] * 1000


def run_level(sessions: int, args: argparse.Namespace, uplink: list[bytes]) -> Level:
    level = Level(sessions)
    answer = " ".join([SENTENCE] * REPLY_SENTENCES)
    spec = ServerSpec(phrases=(PHRASE,), answers={PHRASE: answer}, core=0 if args.pin else None, audio={"downlink_lead_ms": LEAD_MS})
    with ServerProcess(spec) as server:
        wait_for_quiet(args.quiet_wait)
        cpu_before, wall_before = server.cpu_seconds(), time.monotonic()
        with MachineLoad(server.process.pid) as load:
            trio.run(drive, server.url, level, uplink, args)
        cpu_after, wall_after = server.cpu_seconds(), time.monotonic()
    level.server_cpu_percent = 100 * (cpu_after - cpu_before) / (wall_after - wall_before)
    level.others_cpu_percent = load.others_percent
    return level


def report(levels: list[Level]) -> str:
    rows = []
    for level in levels:
        gaps = [g for reply in level.replies for g in reply.gaps_ms]
        p = percentiles(gaps, (50, 99, 99.9))
        audio = [reply.packets * FRAME for reply in level.replies]
        delivery = [reply.delivery_seconds for reply in level.replies]
        late = sum(1 for g in gaps if g > FRAME * 1000 + 10)
        rows.append(
            [
                level.sessions,
                f"{len(level.replies)} (+{level.failed} failed)" if level.failed else len(level.replies),
                f"{np.mean(audio):.1f}" if audio else "–",
                f"{np.mean(delivery):.2f}" if delivery else "–",
                p["p50"],
                p["p99"],
                p["p99.9"],
                p["max"],
                f"{late} of {len(gaps)}",
                max((r.max_lead_ms for r in level.replies), default=math.nan),
                min((r.min_margin_ms for r in level.replies), default=math.nan),
                f"{max((r.max_lead_ms for r in level.replies), default=0) / (FRAME * 1000):.1f} / {DEVICE_BUFFER_FRAMES}",
                sum(r.underruns for r in level.replies),
                f"{sum(r.starved_ms for r in level.replies):.0f}",
                level.stray_packets,
            ]
        )
    head = [
        "sessions",
        "replies",
        "audio s",
        "delivered in s",
        "gap p50 ms",
        "gap p99 ms",
        "gap p99.9 ms",
        "max gap ms",
        "gaps > 70 ms",
        "max lead ms",
        "min queue at an arrival ms (after the burst)",
        "max lead frames / buffer",
        "underruns",
        "starved ms",
        "stray packets",
    ]
    load = table(
        ["sessions", "server CPU %", "other processes CPU %", "driver loop lag p99 ms"],
        [[lv.sessions, lv.server_cpu_percent, lv.others_cpu_percent, lv.driver_lag_p99_ms] for lv in levels],
    )
    verdicts = []
    for level in levels:
        max_lead = max((r.max_lead_ms for r in level.replies), default=math.inf)
        underruns = sum(r.underruns for r in level.replies)
        ok = not level.failed and max_lead <= DEVICE_BUFFER_FRAMES * FRAME * 1000 and underruns == 0
        verdicts.append(
            f"{level.sessions} session(s): lead ≤ {max_lead:.0f} ms (configured {LEAD_MS} ms, buffer {DEVICE_BUFFER_FRAMES * FRAME * 1000:.0f} ms), "
            f"{underruns} underruns: {'met' if ok else 'MISSED'}"
        )
        for reply in level.replies:
            for index in reply.underrun_at:
                gap, queued = reply.gaps_ms[index - 1], reply.leads_ms[index - 1]
                verdicts.append(f"  underrun at packet {index} of {reply.packets}: it came {gap:.0f} ms after the previous one, with {queued:.0f} ms queued ({gap - queued:.0f} ms of silence)")
    return "\n".join(
        [
            "Downlink packets at the device (60 ms frames; gaps between consecutive packets; lead = modelled queue depth after each arrival)",
            table(head, rows),
            "\nLoad (CPU in % of one core; the machine has two)",
            load,
            "",
            *verdicts,
        ]
    )


def plot(levels: list[Level], name: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (gaps_ax, lead_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    bins = np.arange(0, 301, 5)
    for level in levels:
        gaps = [g for reply in level.replies for g in reply.gaps_ms]
        if gaps:
            gaps_ax.hist(np.clip(gaps, 0, 300), bins=bins, histtype="step", label=f"{level.sessions} session{'s' if level.sessions > 1 else ''}", log=True)
        # The reply whose queue ran lowest once playing (after its opening burst) is the one to look at.
        worst = min(level.replies, key=lambda r: min(r.leads_ms[3:], default=math.inf), default=None)
        if worst is not None:
            lead_ax.plot(np.arange(len(worst.leads_ms)) * FRAME, worst.leads_ms, linewidth=0.8, label=f"{level.sessions} session{'s' if level.sessions > 1 else ''} (the reply whose queue ran lowest)")
    gaps_ax.axvline(FRAME * 1000, color="grey", linestyle=":")
    gaps_ax.set_xlabel("gap between consecutive packets at the device, ms")
    gaps_ax.set_ylabel("packets")
    gaps_ax.legend()
    lead_ax.axhline(LEAD_MS, color="grey", linestyle=":", label=f"configured lead {LEAD_MS} ms")
    lead_ax.axhline(DEVICE_BUFFER_FRAMES * FRAME * 1000, color="red", linestyle="--", label="device buffer (40 frames)")
    lead_ax.set_yscale("log")
    lead_ax.set_xlabel("audio position, s")
    lead_ax.set_ylabel("modelled device queue after each arrival, ms")
    lead_ax.legend(fontsize=8)
    fig.suptitle("Downlink pacing of a 30 s reply")
    return save_figure(fig, name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", default="1,25", help="comma-separated concurrency levels")
    parser.add_argument("--spread", type=float, default=2.0, help="seconds over which the devices start talking")
    parser.add_argument("--replies", type=int, default=3, help="30 s replies each device asks for, one after the other")
    parser.add_argument("--timeout", type=float, default=90.0, help="seconds a device waits for its whole reply")
    parser.add_argument("--pin", action="store_true", help="server on one core, devices on the other")
    parser.add_argument("--quiet-wait", type=float, default=60.0, help="seconds to wait at most for other work on the machine to calm down")
    parser.add_argument("--plot", default="pacing.png", help="file name under bench/results/")
    args = parser.parse_args()
    raise_fd_limit(4096)
    if args.pin:
        pin(1)
    register_phrases([PHRASE])
    from xiaozhi_trio.plugins.testing.fakes.backends import speech

    packets = opus_packets(speech(PHRASE, 0.6)) + opus_packets(np.zeros(3 * 16000, dtype=np.float32))
    uplink = frames(packets, 1)
    levels = []
    for sessions in (int(s) for s in args.sessions.split(",")):
        print(f"... {sessions} session(s)", flush=True)
        levels.append(run_level(sessions, args, uplink))
    print(f"\n{machine()}; server {'pinned to one core, devices on the other' if args.pin else 'and devices sharing all cores'}\n")
    print(report(levels))
    print(f"\nplot: {plot(levels, args.plot)}")
    summary = [
        {
            "sessions": lv.sessions,
            "gaps_ms": [g for r in lv.replies for g in r.gaps_ms],
            "max_lead_ms": [r.max_lead_ms for r in lv.replies],
            "underruns": [r.underruns for r in lv.replies],
            "server_cpu_percent": lv.server_cpu_percent,
        }
        for lv in levels
    ]
    figure_path(args.plot.rsplit(".", 1)[0] + ".json").write_text(json.dumps(summary))


if __name__ == "__main__":
    main()

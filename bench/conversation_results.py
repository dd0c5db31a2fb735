"""What ``bench/conversations.py`` measured: one turn's and one level's figures, the issue's goals
and the knee, and the tables and plot made of saved levels (``bench/results/<name>_<N>.json``)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import percentiles, save_figure, table
from xiaozhi_trio.plugins.testing.playback import Playback

#: Turns per device (the default of ``--turns``).
TURNS = 3
#: Goals (issue 9).
FIRST_AUDIO_P95 = 2.0
STT_P95 = 0.8
RSS_LIMIT_MIB = 1024.0


@dataclass
class TurnResult:
    device: int
    turn: int
    story: bool
    #: None when the turn was lost (see ``lost``).
    to_stt: float | None = None
    to_first_audio: float | None = None
    stt: str | None = None
    playback: dict[str, Any] | None = None
    lost: str = ""


@dataclass
class Level:
    devices: int
    seed: int
    turns: list[TurnResult] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    rss_before: float = math.nan
    rss_peak: float = math.nan
    rss_after: float = math.nan
    server_cpu_seconds: float = math.nan
    seconds: float = math.nan
    others_cpu_percent: float = math.nan
    load_before: tuple[float, float, float] = (math.nan, math.nan, math.nan)
    load_after: tuple[float, float, float] = (math.nan, math.nan, math.nan)
    server: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    # ---- figures ----

    def answered(self) -> list[TurnResult]:
        return [t for t in self.turns if not t.lost]

    def lost(self) -> int:
        planned = self.devices * self.settings.get("turns", TURNS)
        return planned - len(self.answered())

    def first_audio(self) -> dict[str, float]:
        return percentiles([t.to_first_audio for t in self.answered() if t.to_first_audio is not None])

    def stt(self) -> dict[str, float]:
        return percentiles([t.to_stt for t in self.answered() if t.to_stt is not None])

    def playbacks(self) -> list[Playback]:
        return [Playback(**{**t.playback, "late_packets": tuple(t.playback["late_packets"])}) for t in self.answered() if t.playback]

    def underruns(self) -> int:
        return sum(p.underruns for p in self.playbacks())

    def silence(self) -> float:
        return sum(p.silence for p in self.playbacks())

    def least_queued(self) -> float:
        values = [p.least_queued for p in self.playbacks() if not math.isnan(p.least_queued)]
        return min(values) if values else math.nan

    def cpu_per_turn(self) -> float:
        answered = len(self.answered())
        return self.server_cpu_seconds / answered if answered else math.nan

    def goals(self) -> dict[str, bool]:
        """Which of issue 9's goals this level held."""
        return {
            "first audio p95": self.first_audio()["p95"] <= FIRST_AUDIO_P95,
            "stt p95": self.stt()["p95"] <= STT_P95,
            "no underrun": self.underruns() == 0,
            "RSS": self.rss_peak <= RSS_LIMIT_MIB,
            "no lost turn": self.lost() == 0 and not self.failures,
        }


def knee(levels: Sequence[Level], goals: Sequence[str] | None = None) -> int:
    """The largest N that held ``goals`` (default: all) with every smaller N measured holding
    them too; 0 when the smallest did not."""
    best = 0
    for level in sorted(levels, key=lambda lv: lv.devices):
        held = level.goals()
        if not all(held[g] for g in (goals or held)):
            break
        best = level.devices
    return best


def _s(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:.2f}"


def report(levels: Sequence[Level]) -> str:
    levels = sorted(levels, key=lambda lv: lv.devices)
    out = ["End of speech → first reply audio and → stt (s, device side); playback; memory; CPU"]
    rows = []
    for lv in levels:
        a, s = lv.first_audio(), lv.stt()
        rows.append([
            lv.devices, len(lv.answered()), lv.lost(),
            f"{_s(a['p50'])} / {_s(a['p95'])} / {_s(a['max'])}",
            f"{_s(s['p50'])} / {_s(s['p95'])} / {_s(s['max'])}",
            lv.underruns(), f"{lv.silence():.2f}", f"{1000 * lv.least_queued():.0f}",
            f"{lv.rss_before:.0f} / {lv.rss_peak:.0f} / {lv.rss_after:.0f}",
            f"{lv.cpu_per_turn():.2f}", f"{lv.others_cpu_percent:.0f}",
        ])
    out.append(table(
        ["devices", "turns", "lost", "→ audio p50 / p95 / max", "→ stt p50 / p95 / max", "underruns", "silence s",
         "least queued ms", "RSS MiB before / peak / after", "CPU s/turn", "others %"],
        rows,
    ))
    out.append("\nWorker-pool queue waits by kind of work, p50 / p95 / max ms (late: start after the deadline, p95 ms)")
    kinds = sorted({k for lv in levels for k in lv.server.get("waits", {})})
    wait_rows = []
    for lv in levels:
        row: list[object] = [lv.devices]
        for kind in kinds:
            w = percentiles([1000 * x for x in lv.server.get("waits", {}).get(kind, [])])
            late = percentiles([1000 * x for x in lv.server.get("late", {}).get(kind, [])])
            row.append("–" if not w["n"] else f"{w['p50']:.0f} / {w['p95']:.0f} / {w['max']:.0f} (late {late['p95']:.0f}, n {int(w['n'])})")
        row.append(lv.server.get("saturation_episodes", "–"))
        wait_rows.append(row)
    out.append(table(["devices", *kinds, "saturated episodes"], wait_rows))
    out.append("\nServer stages (s, p50 / p95), from the VAD's or turn detector's decision; event-loop lag")
    stages = ("speech_end_to_transcript", "transcript_to_first_text", "first_text_to_first_sentence", "first_sentence_to_first_audio")
    stage_rows = []
    for lv in levels:
        by_stage: dict[str, list[float]] = {}
        for turn in lv.server.get("turns", []):
            if turn["outcome"] == "completed":
                for stage, seconds in turn["stages"].items():
                    by_stage.setdefault(stage, []).append(seconds)
        cells = [f"{_s(percentiles(by_stage.get(st, []))['p50'])} / {_s(percentiles(by_stage.get(st, []))['p95'])}" for st in stages]
        lag = lv.server.get("loop_lag", {})
        stage_rows.append([lv.devices, *cells, f"{1000 * lag.get('p99', math.nan):.0f}", f"{1000 * lag.get('max', math.nan):.0f}"])
    out.append(table(["devices", "→ transcript", "→ agent text", "→ sentence", "→ first audio", "loop lag p99 ms", "max ms"], stage_rows))
    out.append("\nRuns")
    out.append(table(
        ["devices", "seconds", "load avg before", "load avg after", "stories / shorts", "turn detector", "errors", "device failures"],
        [[lv.devices, f"{lv.seconds:.0f}", " ".join(f"{x:.2f}" for x in lv.load_before), " ".join(f"{x:.2f}" for x in lv.load_after),
          f"{lv.server.get('stories', '–')} / {lv.server.get('shorts', '–')}", lv.server.get("turn_detector", "–"),
          lv.server.get("errors") or "none", len(lv.failures)] for lv in levels],
    ))
    out.append("\nGoals held (first audio p95 ≤ 2.0 s, stt p95 ≤ 0.8 s, no underrun, RSS ≤ 1 GiB, no lost turn)")
    out.append(table(["devices", *levels[0].goals()], [[lv.devices, *("yes" if ok else "NO" for ok in lv.goals().values())] for lv in levels]) if levels else "")
    all_goals = knee(levels)
    if all_goals:
        out.append(f"\nKnee (all goals): {all_goals} devices")
    elif levels:
        out.append(f"\nKnee (all goals): none (the smallest level measured, {levels[0].devices} devices, misses a goal)")
    for goal in levels[0].goals() if levels else ():
        out.append(f"  holding '{goal}' alone: {knee(levels, [goal]) or 'none'}")
    return "\n".join(out)


def plot(levels: Sequence[Level], name: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = sorted(levels, key=lambda lv: lv.devices)
    n = [lv.devices for lv in levels]
    fig, (ax, mem) = plt.subplots(1, 2, figsize=(11, 4.5), gridspec_kw={"width_ratios": [3, 2]})
    ax.plot(n, [lv.first_audio()["p50"] for lv in levels], "o-", label="→ first audio, p50")
    ax.plot(n, [lv.first_audio()["p95"] for lv in levels], "s-", label="→ first audio, p95")
    ax.plot(n, [lv.stt()["p95"] for lv in levels], "^--", label="→ stt, p95")
    ax.axhline(FIRST_AUDIO_P95, color="tab:orange", linestyle=":", label=f"goal: first audio p95 ≤ {FIRST_AUDIO_P95:g} s")
    ax.axhline(STT_P95, color="tab:green", linestyle=":", label=f"goal: stt p95 ≤ {STT_P95:g} s")
    for lv in levels:
        if lv.underruns():
            ax.annotate(f"{lv.underruns()} underruns", (lv.devices, lv.first_audio()["p95"]), textcoords="offset points", xytext=(4, 6), fontsize=8)
    ax.set_xlabel("devices in conversation")
    ax.set_ylabel("seconds after the end of speech")
    ax.set_xticks(n)
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    mem.plot(n, [lv.rss_peak for lv in levels], "o-", label="peak")
    mem.plot(n, [lv.rss_before for lv in levels], "s--", label="before (after warm-up)")
    mem.plot(n, [lv.rss_after for lv in levels], "^:", label="after")
    mem.axhline(RSS_LIMIT_MIB, color="red", linestyle=":", label="goal: 1 GiB")
    mem.set_xlabel("devices in conversation")
    mem.set_ylabel("server RSS (MiB)")
    mem.set_xticks(n)
    mem.grid(True, alpha=0.3)
    mem.legend(fontsize=8)
    cores = len(os.sched_getaffinity(0))
    fig.suptitle(f"Conversations, 3 turns each: Silero + Moonshine base-en + Piper joe, agent double (first text 0.3 s), {cores} cores", fontsize=10)
    return save_figure(fig, name)


def load_levels(paths: Sequence[Path]) -> list[Level]:
    """Levels saved by earlier runs (the newest file per N wins)."""
    by_n: dict[int, Level] = {}
    for path in sorted(paths, key=lambda p: p.stat().st_mtime):
        data = json.loads(path.read_text())
        data["turns"] = [TurnResult(**t) for t in data["turns"]]
        data["load_before"], data["load_after"] = tuple(data["load_before"]), tuple(data["load_after"])
        level = Level(**data)
        by_n[level.devices] = level
    return [by_n[n] for n in sorted(by_n)]

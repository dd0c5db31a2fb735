"""How many devices can speak at once before the reply is late: end of speech → first reply audio
with the real speech models, against the number of sessions talking at the same moment.

The server runs in its own process as ``serve`` would build it: the built-in ``silero`` VAD,
``sherpa-onnx`` ASR (Moonshine base-en) and TTS (Piper "joe"), the worker pool sized to the
machine's cores, and an instant scripted agent (the test double), so every second of a turn is
spent on speech, the codec and the server itself. N simulated devices (this process) connect on
loopback and, round after round, all say a 2–3 s question (espeak-ng, real Opus, paced in real
time) so that their speech ends at the same moment, the hardest case for the recognizer; each
then streams silence until ``tts start`` and reads the reply to ``tts stop``.

Figures per turn, each from one process's clock:

* **device**: end of the spoken question (the capture time of its last voiced sample) → first
  reply audio packet received. This is what a user hears, and it includes the VAD's end-of-turn
  silence (``min_silence_ms``, 500 ms by default) before the server can know the question is over.
* **device, after the VAD**: from sending the packet with which the silero VAD declares the end
  (found by running the same VAD on the same packets here) → first audio.
* **server**: ``SpeechEndDetected`` → ``FirstAudio`` (session events from an observer in the server
  process), with its stages (→ transcript → first sentence → first audio).

Memory: the server's resident memory after one warm-up turn with no session (baseline), with N
devices connected and idle, and its peak while they talk; the models are loaded once and shared.

Levels N = 1, 2, 4, 6, 8, 12, 16, ... stop at the first whose device p95 passes 1.5 s, or at 32.
``--profile N`` samples the server with py-spy during level N and reports where its CPU time goes.

Needs espeak-ng. Run from the repository root: ``python -m bench.speech_concurrency`` (about ten
minutes; ``--levels 1,2,4,6,8 --keep-going`` measures every level; ``--report FILE`` prints the
figures of a saved ``bench/results/speech_concurrency.json`` again).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import signal
import subprocess
import tempfile
from collections import Counter
from collections.abc import Callable
from contextlib import AsyncExitStack, ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import trio
from xiaozhi_trio.pipeline.audio.opus import OpusDecoder
from xiaozhi_trio.pipeline.messages import SpeechEnded

from bench.common import (
    LoopLag,
    MachineLoad,
    TurnRecorder,
    figure_path,
    frames,
    machine,
    open_device,
    opus_packets,
    ServedApp,
    ServerProcess,
    percentiles,
    save_figure,
    table,
    wait_for_quiet,
)
from xiaozhi_trio.plugins.testing.speech import spoken
from xiaozhi_trio.plugins.testing.wer import word_error_rate
from xiaozhi_trio.plugins.testing.fakes.backends import FakeAgent

QUESTIONS = (
    "What is the weather like in Beijing today?",
    "Remind me to call my mother tomorrow morning.",
    "Can you tell me a short story about a friendly dragon?",
    "How many people live in the city of Shanghai?",
    "Please remind me to buy milk on the way home tonight.",
    "What will the weather be like in Beijing tomorrow?",
)
#: The scripted agent's answer to every question (first sentence about 3 s of speech).
ANSWER = "It will be sunny and warm, with a high of twenty five degrees. Have a lovely day!"
LEVELS = (1, 2, 4, 6, 8, 12, 16, 20, 24, 28, 32)
LIMIT_SECONDS = 1.5
SILENCE_SECONDS = 4.0
TURN_TIMEOUT = 30.0
RATE = 16000
FRAME = 0.06



def speech_server(data_dir: Path, tables: dict[str, dict[str, Any]] | None = None) -> ServerProcess:
    """A server process with the real speech models (``tables`` replace whole config tables)."""
    return ServerProcess((str(data_dir), tables or {}), build_speech_app)


# ------------------------------------------------------------------------------------------------
# The server process
# ------------------------------------------------------------------------------------------------


def real_speech_app(data_dir: str, tables: dict[str, dict[str, Any]] | None, agent: Any, *observers: Any) -> Any:
    """The ``App`` as ``serve`` builds it with no config but the agent: the ``silero`` VAD,
    ``sherpa-onnx`` ASR and TTS (their default models), the worker pool sized to the cores, the
    plugins installed as entry points; ``agent`` is the test-double agent, ``observers`` extra
    plugins, ``tables`` more config (keys added to the tables above; runs in the server process).
    No limit of talking devices: the benchmarks measure what lies beyond it."""
    logging.basicConfig(level="WARNING", format="server %(levelname)s %(name)s: %(message)s")
    from xiaozhi_trio.pipeline.app import App
    from xiaozhi_trio.pipeline.config import parse_config
    from xiaozhi_trio.pipeline.registry import Plugins
    from xiaozhi_trio.plugins.testing.fakes.backends import FakeBackends

    kinds = {"vad": "silero", "asr": "sherpa-onnx", "agent": "fake", "tts": "sherpa-onnx"}
    tables = dict(tables or {})
    server = {"data_dir": data_dir, "max_talking_sessions": 0, **tables.pop("server", {})}
    backends = {kind: {"backend": backend, **tables.pop(kind, {})} for kind, backend in kinds.items()}
    config = parse_config({"server": server, **backends, **tables})
    return App.build(config, Plugins(entry_points=True, extra=[FakeBackends(agent=agent), *observers]))


class FixedAnswer(FakeAgent):
    """The instant test-double agent, saying ``ANSWER`` whatever it was asked."""

    def answer_for(self, text: str) -> str:
        return ANSWER


def build_speech_app(argument: tuple[str, dict[str, dict[str, Any]]], resources: ExitStack) -> ServedApp:
    """The app with the real speech backends and the fixed agent (runs in the server process).

    ``argument`` is the data folder and config tables that replace whole tables
    (``{"turn": {...}}``). Commands: ``stats``, ``turns`` (those finished since the last call),
    ``asr parallel`` / ``asr serial`` (the recognizer's own batcher, or one decoding a single
    utterance at a time), ``reset``."""
    data_dir, tables = argument
    from xiaozhi_trio.plugins.speech.batching import Batcher

    recorder = TurnRecorder()
    app = real_speech_app(data_dir, tables, FixedAnswer(), recorder)
    lag = LoopLag()
    batchers = {"parallel": app.asr.batcher, "serial": Batcher(app.asr.decode_batch, app.workers, max_batch=1, parallel=1)}

    def stats() -> dict[str, Any]:
        sizes = [size for b in batchers.values() for size in b.stats.sizes]
        return {"errors": dict(recorder.errors), "loop_lag": percentiles(lag.samples, (50, 99)), "batches": sizes}

    def turns() -> list[dict[str, Any]]:
        finished, recorder.turns = recorder.turns, []
        return finished

    def decode_with(name: str) -> Callable[[], None]:
        def switch() -> None:
            app.asr.batcher = batchers[name]
        return switch

    def reset() -> None:
        recorder.reset()
        lag.samples.clear()
        for b in batchers.values():
            b.stats.sizes.clear()

    commands = {"stats": stats, "turns": turns, "reset": reset, **{f"asr {n}": decode_with(n) for n in batchers}}
    return ServedApp(app, commands, tasks=(lag.run,))


# ------------------------------------------------------------------------------------------------
# Profiling the server with py-spy (pip install py-spy)
# ------------------------------------------------------------------------------------------------

#: What a sampled stack is doing, by the first pattern (in this order) found in it.
WORK = (
    ("ASR decode", r"decode_batch|_decode_pieces|feed_online"),
    ("TTS synthesis", r"\bgenerate \(.*tts\.py|phoneme_sentences"),
    ("VAD", r"is_speech|speech/vad\.py"),
    ("Opus", r"audio/opus\.py"),
    ("resampling", r"resample"),
    ("WebSocket and protocol", r"wsproto|trio_websocket|framing\.py"),
    ("trio scheduling", r"trio/_core"),
)


def start_profiler(pid: int, path: Path) -> subprocess.Popen[bytes]:
    command = ["py-spy", "record", "--pid", str(pid), "--rate", "100", "--format", "raw", "--threads", "--nonblocking", "--output", str(path)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_profiler(profiler: subprocess.Popen[bytes]) -> Path:
    profiler.send_signal(signal.SIGINT)
    try:
        profiler.wait(60)
    except subprocess.TimeoutExpired:
        profiler.kill()
    return Path(profiler.args[-1])  # type: ignore[index]


def profile_summary(path: Path) -> dict[str, Any]:
    """Shares (%) of the sampled busy time by thread (event loop or worker) and by kind of work.

    The event loop's wait in epoll is left out: py-spy counts a thread blocked in C as busy."""
    threads: Counter[str] = Counter()
    work: Counter[str] = Counter()
    waiting = 0
    for line in path.read_text().splitlines() if path.exists() else []:
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        if "EpollIOManager.get_events" in stack or "_epoll_wait" in stack:
            waiting += int(count)
            continue
        thread = "event loop" if "): MainThread;" in stack else "worker threads" if "_thread_cache" in stack else "other threads"
        threads[thread] += int(count)
        work[next((name for name, pattern in WORK if re.search(pattern, stack)), "other")] += int(count)
    total = sum(threads.values())

    def share(counter: Counter[str]) -> dict[str, float]:
        return {key: round(100 * value / total, 1) for key, value in counter.items()} if total else {}

    return {"samples": total, "epoll_samples": waiting, "threads": share(threads), "work": share(work), "file": str(path)}


# ------------------------------------------------------------------------------------------------
# The devices
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Question:
    """One question's uplink: framed Opus (speech, then silence) and where its speech ends."""

    text: str
    frames: list[bytes]
    voiced_frames: int
    #: Seconds between the last voiced sample and the end of the last voiced frame.
    tail: float
    #: Index of the packet after which the silero VAD declares the end of speech.
    vad_end: int


def build_questions(models_dir: Path) -> list[Question]:
    from xiaozhi_trio.plugins.speech.models.locate import locate_model
    from xiaozhi_trio.plugins.speech.vad import SileroVad, VadOptions

    vad = SileroVad(locate_model("silero-vad", models_dir), VadOptions())
    questions = []
    for text in QUESTIONS:
        speech = spoken(text)
        voiced = opus_packets(speech)
        packets = voiced + opus_packets(np.zeros(int(SILENCE_SECONDS * RATE), np.float32))
        decoder, stream = OpusDecoder(RATE), vad.open_stream()
        ends = [i for i, p in enumerate(packets) if any(isinstance(e, SpeechEnded) for e in stream.feed(decoder.decode(p)))]
        if not ends:
            raise RuntimeError(f"the VAD never hears the end of {text!r}")
        tail = len(voiced) * FRAME - len(speech) / RATE
        questions.append(Question(text, frames(packets, 1), len(voiced), tail, ends[0]))
    return questions


@dataclass
class Level:
    sessions: int
    #: How the server decoded utterances: "parallel" (its own batcher) or "serial" (one at a time).
    asr: str = "parallel"
    device: list[float] = field(default_factory=list)
    device_after_vad: list[float] = field(default_factory=list)
    server: list[float] = field(default_factory=list)
    stages: dict[str, list[float]] = field(default_factory=dict)
    wer: list[float] = field(default_factory=list)
    lost: int = 0
    rounds: int = 0
    rss_base: float = math.nan
    rss_idle: float = math.nan
    rss_talking: float = math.nan
    server_cpu_percent: float = math.nan
    others_cpu_percent: float = math.nan
    loop_lag: dict[str, float] = field(default_factory=dict)
    batches: list[int] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    profile: dict[str, Any] = field(default_factory=dict)


async def turn(device: Any, question: Question, start: float, level: Level) -> None:
    await trio.sleep_until(start)
    heard, sent = await device.say(question.frames, timeout=TURN_TIMEOUT)
    first = heard.first_audio_at
    if not heard.done.is_set() or first is None or len(sent) < question.voiced_frames:
        level.lost += 1
        return
    level.device.append(first - (sent[question.voiced_frames - 1] - question.tail))
    if question.vad_end < len(sent):
        level.device_after_vad.append(first - sent[question.vad_end])
    level.wer.append(word_error_rate(question.text, heard.stt or ""))


async def sample_rss(server: ServerProcess, into: list[int]) -> None:
    while True:
        into.append(server.rss())
        await trio.sleep(0.2)


async def drive(server: ServerProcess, levels: list[Level], questions: list[Question], rounds: int, max_seconds: float) -> None:
    """Warm up, measure the baseline, connect the devices, then ``rounds`` rounds per level in
    turn (the levels differ only in how the server decodes, so their rounds alternate)."""
    # Warm-up: the first decode and synthesis set up onnxruntime's buffers; then the baseline.
    async with open_device(server.url, 10_000) as device:
        await turn(device, questions[0], trio.current_time(), Level(0))
    await trio.sleep(1.0)
    await trio.to_thread.run_sync(server.request, "reset")
    await trio.to_thread.run_sync(server.request, "turns")
    base = server.rss() / 2**20
    longest = max(q.voiced_frames for q in questions)
    async with AsyncExitStack() as stack:
        devices = [await stack.enter_async_context(open_device(server.url, i + 1)) for i in range(levels[0].sessions)]
        await trio.sleep(1.0)
        idle = server.rss() / 2**20
        samples: list[int] = []
        cpu_before, wall_before = server.cpu_seconds(), trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sample_rss, server, samples)
            with trio.move_on_after(max_seconds):
                for index in range(rounds * len(levels)):
                    level = levels[index % len(levels)]
                    await trio.to_thread.run_sync(server.request, f"asr {level.asr}")
                    t0 = trio.current_time() + 0.2
                    async with trio.open_nursery() as speakers:
                        for number, device in enumerate(devices):
                            question = questions[number % len(questions)]
                            # Every question ends at the same moment.
                            start = t0 + (longest - question.voiced_frames) * FRAME
                            speakers.start_soon(turn, device, question, start, level)
                    level.rounds += 1
                    await trio.sleep(0.8)  # the firmware plays out its queue, the user thinks
                    for summary in await trio.to_thread.run_sync(server.request, "turns"):
                        if summary["outcome"] == "completed":
                            for stage, seconds in summary["stages"].items():
                                level.stages.setdefault(stage, []).append(seconds)
            nursery.cancel_scope.cancel()
        cpu = 100 * (server.cpu_seconds() - cpu_before) / (trio.current_time() - wall_before)
    for level in levels:
        level.rss_base, level.rss_idle, level.rss_talking = base, idle, max(samples) / 2**20
        level.server_cpu_percent = cpu
        level.server = level.stages.get("speech_end_to_first_audio", [])


def run_level(sessions: int, args: argparse.Namespace, questions: list[Question], data_dir: Path) -> list[Level]:
    """One server process for ``sessions`` devices; a Level per way of decoding in ``args.asr``."""
    levels = [Level(sessions, asr=asr) for asr in (("parallel", "serial") if args.asr == "both" else (args.asr,))]
    rounds = min(args.max_rounds, max(args.min_rounds, math.ceil(args.samples / sessions)))
    with speech_server(data_dir) as server:
        wait_for_quiet(args.quiet_wait)
        profiler = start_profiler(server.process.pid, figure_path(f"speech_concurrency_profile_{sessions}.txt")) if sessions in args.profile else None
        with MachineLoad(server.process.pid) as load:
            trio.run(drive, server, levels, questions, rounds, args.max_seconds)
        profile = profile_summary(stop_profiler(profiler)) if profiler is not None else {}
        stats = server.request("stats")
    for level in levels:
        level.others_cpu_percent = load.others_percent
        level.loop_lag, level.batches, level.errors, level.profile = stats["loop_lag"], stats["batches"], stats["errors"], profile
    return levels


def memory_summary(levels: list[Level]) -> str:
    """Memory per extra session: the slope of (memory − baseline) against N. Talking, the slope
    is taken from N = 2 on: onnxruntime keeps an arena per decode running at once, a fixed cost
    that the second simultaneous decode adds once, whatever the number of sessions."""
    if len(levels) < 2:
        return ""
    n = np.array([lv.sessions for lv in levels], float)
    idle = np.polyfit(n, [lv.rss_idle - lv.rss_base for lv in levels], 1)[0]
    later = [lv for lv in levels if lv.sessions >= 2]
    line = f"\nMemory per extra session (slope over the levels): idle {idle:.2f} MiB"
    if len(later) >= 2:
        talking = np.polyfit([lv.sessions for lv in later], [lv.rss_talking - lv.rss_base for lv in later], 1)
        line += f", talking {talking[0]:.2f} MiB (from N = 2 on, above a fixed {talking[1]:.0f} MiB)"
    return line


def label(level: Level) -> str:
    return f"{level.sessions}" + ("" if level.asr == "parallel" else f" ({level.asr} ASR)")


def report(levels: list[Level]) -> str:
    def p(values: list[float]) -> dict[str, float]:
        return percentiles(values)

    head = ["sessions", "turns", "lost", "p50 s", "p95 s", "max s", "after VAD p95 s", "server p50 s", "server p95 s"]
    rows = []
    for lv in levels:
        d, a, s = p(lv.device), p(lv.device_after_vad), p(lv.server)
        rows.append([label(lv), int(d["n"]), lv.lost, f"{d['p50']:.2f}", f"{d['p95']:.2f}", f"{d['max']:.2f}", f"{a['p95']:.2f}", f"{s['p50']:.2f}", f"{s['p95']:.2f}"])
    out = ["End of speech → first reply audio (device), after the VAD's decision, and in the server", table(head, rows)]
    stages = ["speech_end_to_transcript", "transcript_to_first_text", "first_text_to_first_sentence", "first_sentence_to_first_audio"]
    out.append("\nServer stages, p50 / p95 s; ASR batch sizes; server event-loop lag")
    out.append(
        table(
            ["sessions", "→ transcript", "→ agent text", "→ sentence", "→ first audio", "mean batch", "loop lag p99 ms", "loop lag max ms", "stt WER"],
            [
                [label(lv)]
                + [f"{p(lv.stages.get(st, []))['p50']:.2f} / {p(lv.stages.get(st, []))['p95']:.2f}" for st in stages]
                + [f"{np.mean(lv.batches):.2f}" if lv.batches else "–", lv.loop_lag.get("p99", math.nan) * 1000, lv.loop_lag.get("max", math.nan) * 1000, f"{np.mean(lv.wer):.3f}" if lv.wer else "–"]
                for lv in levels
            ],
        )
    )
    out.append("\nServer memory (MiB) and CPU (% of one core; the machine has two)")
    out.append(
        table(
            ["sessions", "baseline", "idle", "talking peak", "per session idle", "per session talking", "server CPU %", "others CPU %", "errors"],
            [
                [label(lv), lv.rss_base, lv.rss_idle, lv.rss_talking, (lv.rss_idle - lv.rss_base) / lv.sessions, (lv.rss_talking - lv.rss_base) / lv.sessions, lv.server_cpu_percent, lv.others_cpu_percent, lv.errors or "none"]
                for lv in levels
            ],
        )
    )
    for asr in dict.fromkeys(lv.asr for lv in levels):
        mode = [lv for lv in levels if lv.asr == asr]
        within = [lv.sessions for lv in mode if p(lv.device)["p95"] <= LIMIT_SECONDS]
        out.append(f"{asr} ASR: largest N with device p95 ≤ {LIMIT_SECONDS:g} s: {max(within) if within else 'none'}")
        if asr == levels[0].asr and (memory := memory_summary(mode)):
            out.append(memory)
    for lv in levels:
        if lv.profile and lv.asr == levels[0].asr:
            out.append(f"\nWhere the server's CPU went with {lv.sessions} sessions (py-spy, {lv.profile['samples']} samples of busy threads)")
            out.append(table(["thread", "share %"], sorted(lv.profile["threads"].items(), key=lambda kv: -kv[1])))
            out.append(table(["work", "share %"], sorted(lv.profile["work"].items(), key=lambda kv: -kv[1])))
    return "\n".join(out)


def plot(levels: list[Level], name: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.8))
    for asr in dict.fromkeys(lv.asr for lv in levels):
        mode = [lv for lv in levels if lv.asr == asr]
        n = [lv.sessions for lv in mode]
        prefix = "" if len({lv.asr for lv in levels}) == 1 else f"{asr} ASR, "
        style = "-" if asr == "parallel" else ":"
        ax.plot(n, [percentiles(lv.device)["p50"] for lv in mode], "o" + style, label=f"{prefix}p50, device (from end of speech)")
        ax.plot(n, [percentiles(lv.device)["p95"] for lv in mode], "s" + style, label=f"{prefix}p95, device (from end of speech)")
        ax.plot(n, [percentiles(lv.server)["p95"] for lv in mode], "^--", alpha=0.6, label=f"{prefix}p95, server (from the VAD's decision)")
    ax.axhline(LIMIT_SECONDS, color="red", linestyle=":", label=f"{LIMIT_SECONDS:g} s")
    ax.set_xlabel("sessions speaking at the same moment")
    ax.set_ylabel("end of speech → first reply audio (s)")
    ax.set_xticks(sorted({lv.sessions for lv in levels}))
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend()
    cores = len(os.sched_getaffinity(0))
    ax.set_title(f"Local speech (silero + Moonshine base-en + Piper joe), instant agent, {cores} cores", fontsize=10)
    return save_figure(fig, name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--levels", default=",".join(map(str, LEVELS)), help="session counts to try, in order")
    parser.add_argument("--samples", type=int, default=24, help="turns per level at least (in rounds of all sessions)")
    parser.add_argument("--min-rounds", type=int, default=3)
    parser.add_argument("--max-rounds", type=int, default=24)
    parser.add_argument("--max-seconds", type=float, default=300.0, help="time limit of a level's rounds")
    parser.add_argument("--quiet-wait", type=float, default=60.0, help="seconds to wait at most for other work to calm down before a level")
    parser.add_argument("--profile", default="", help="comma-separated levels to sample with py-spy")
    parser.add_argument("--keep-going", action="store_true", help="run every level, even past the limit")
    parser.add_argument("--asr", choices=("parallel", "serial", "both"), default="parallel", help="how the server decodes utterances that end together: its own batcher (one decode per CPU worker), one at a time, or both in alternate rounds")
    parser.add_argument("--report", type=Path, help="print the report and plot of a saved JSON file instead of running")
    args = parser.parse_args()
    args.profile = {int(s) for s in args.profile.split(",") if s}
    if args.report is not None:
        levels = [Level(**level) for level in json.loads(args.report.read_text())]
        print(report(levels))
        plot(levels, "speech_concurrency.png")
        return
    with tempfile.TemporaryDirectory(prefix="xiaozhi-bench-speech-") as tmp:
        data_dir = Path(tmp)
        questions = build_questions(data_dir / "models")
        print(f"{machine()}; questions {[round(q.voiced_frames * FRAME, 2) for q in questions]} s of speech", flush=True)
        levels: list[Level] = []
        for sessions in (int(s) for s in args.levels.split(",")):
            measured = run_level(sessions, args, questions, data_dir)
            levels.extend(measured)
            for level in measured:
                d = percentiles(level.device)
                print(f"... {label(level)}: {int(d['n'])} turns, p50 {d['p50']:.2f} s, p95 {d['p95']:.2f} s, lost {level.lost}", flush=True)
            d = percentiles(measured[0].device)
            if not args.keep_going and (d["p95"] > LIMIT_SECONDS or measured[0].lost):
                break
    print()
    print(report(levels))
    path = plot(levels, "speech_concurrency.png")
    figure_path("speech_concurrency.json").write_text(json.dumps([asdict(lv) for lv in levels]))
    print(f"\nplot: {path}")


if __name__ == "__main__":
    main()

"""Devices in conversation: how many a server with the default local models holds while every
reply stays prompt and smooth (issue 9's load bench and its knee).

A household or a classroom, simulated: N devices join at random moments (seeded) over a spread of
seconds and each holds a conversation of 3 turns, its questions alternating between one answered
in two sentences and a request for a long story (~30 s of speech), with a random pause to think
before each question.

* **The server** runs in its own process as ``serve`` builds it with no config but the agent: the
  ``silero`` VAD, Moonshine base-en and Piper "joe" on ``sherpa-onnx``, Smart Turn when it is
  installed in the default models folder, the worker pool sized to the cores. The agent is a test
  double that streams its text at a set rate (``--agent-rate`` characters a second) with its first
  text ``--agent-first`` seconds after the question: a story when the question asks for one, else
  two sentences. An observer there keeps each turn's stages, the pool's queue waits per kind of
  work and the session errors; the benchmark reads them over a pipe, and the server's CPU time and
  memory with ``psutil``.
* **The devices** run in this process, as the firmware does: hello with MCP, ``listen start``
  (auto mode), the microphone streamed as 60 ms Opus frames in real time (silence while the user
  thinks, then the question spoken by Piper or espeak-ng, then silence until ``tts start``), the
  reply decoded as it arrives (real Opus both ways) and played through a model of the device's
  queue (``xiaozhi_trio.plugins.testing.playback``), drained in real time from a reply's first
  packet.

Per turn, on the benchmark's clock: end of speech (the capture time of the question's last voiced
sample; a device sends a frame once it is captured) → ``stt`` and → the first reply audio packet;
per reply: underruns (the queue ran dry before the reply's next packet came), their silence, the
least audio queued when a packet arrived. Per level: the server's resident memory before (after a
warm-up turn), at its peak (sampled every 0.25 s) and after (the devices gone, a few seconds on),
CPU per answered turn, queue waits per kind of work, lost turns and errors, and the other
processes' CPU meanwhile.

The goals (issue 9): end of speech → first audio p95 ≤ 2.0 s (agent time included), → ``stt``
p95 ≤ 0.8 s, no underrun, peak RSS ≤ 1 GiB, no lost turn. The **knee** is the largest N measured
that holds them all, and so does every smaller N measured.

Each level runs in its own server process and writes ``bench/results/conversations_<N>.json``
(figures, goals, knee and report: ``bench/conversation_results.py``), so
levels can be measured one at a time (``--levels 10``) and reported together
(``--report``, which reads every saved level). Needs espeak-ng, matplotlib and psutil. Run from
the repository root: ``python -m bench.conversations`` (levels 10, 20, 30; about 2–3 minutes each).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import tomllib
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import trio
from trio_websocket import ConnectionClosed, HandshakeError

from bench.common import (
    FRAME,
    LoopLag,
    MachineLoad,
    RESULTS,
    ServedApp,
    ServerProcess,
    TurnRecorder,
    figure_path,
    frames,
    machine,
    open_device,
    opus_packets,
    percentiles,
    wait_for_quiet,
)
from bench.conversation_results import TURNS, Level, TurnResult, load_levels, plot, report
from bench.speech_concurrency import real_speech_app
from xiaozhi_trio.pipeline.audio.opus import OpusDecoder
from xiaozhi_trio.pipeline.backends import AgentRequest, AgentText
from xiaozhi_trio.pipeline.config import default_data_dir
from xiaozhi_trio.plugins.testing.fakes.backends import FakeAgent
from xiaozhi_trio.plugins.testing.playback import replay
from xiaozhi_trio.plugins.testing.turn_clips import speak

RATE = 16000
#: Questions answered in two sentences.
SHORT_QUESTIONS = (
    "What is the weather like in Shanghai today?",
    "Remind me to call my mother tomorrow morning.",
    "How far is the moon from the earth?",
    "Please set a timer for ten minutes.",
)
#: Questions that ask for a story (the agent double hears "story").
STORY_QUESTIONS = (
    "Can you tell me a long story about a friendly dragon?",
    "Please tell me a bedtime story about a brave little fox.",
)
SHORT_ANSWER = "It will be sunny and warm today, with a high of twenty five degrees. Have a lovely afternoon and enjoy the sunshine!"
#: About 30 s of speech in the Piper "joe" voice.
STORY = (
    "Once upon a time, in a valley between two tall mountains, there lived a small green dragon called Pip. "
    "Pip was not very good at breathing fire, so the other dragons laughed at him, and he often sat alone by the river. "
    "One cold winter night, the village at the bottom of the valley lost all its candles in a storm. "
    "Pip flew down, took a deep breath, and blew the tiny warm flame that was all he could make. "
    "It was just enough to light one candle, then another, and soon every window in the village was glowing. "
    "From that night on, nobody laughed at Pip again, and the children of the village called him their little lantern."
)
#: Seconds a user thinks before asking (drawn per turn; a few values, so the uplinks are encoded once).
THINK_SECONDS = (1.0, 1.5, 2.0, 2.5, 3.0)
#: Silence the microphone streams after a question until ``tts start``.
TAIL_SECONDS = 6.0
LEVELS = (10, 20, 30)
#: The models folder of a server run with no config, where ``models install`` puts Smart Turn.
DEFAULT_MODELS = default_data_dir() / "models"


# ------------------------------------------------------------------------------------------------
# The server process
# ------------------------------------------------------------------------------------------------


@dataclass
class StreamingAgent(FakeAgent):
    """The agent double: its first text ``first_delay`` s after the question, then the rest at
    ``chars_per_second``, word by word; a story when asked for one, else two sentences."""

    chars_per_second: float = 100.0
    stories: int = 0
    shorts: int = 0

    def answer_for(self, text: str) -> str:
        return STORY if "story" in text.lower() else SHORT_ANSWER

    async def respond(self, request: AgentRequest, send: trio.MemorySendChannel[AgentText]) -> None:
        answer = self.answer_for(request.text)
        if answer is STORY:
            self.stories += 1
        else:
            self.shorts += 1
        start = trio.current_time() + self.first_token_delay
        streamed = 0
        for index, word in enumerate(answer.split(" ")):
            piece = word if index == 0 else " " + word
            await trio.sleep_until(start + streamed / self.chars_per_second)
            await send.send(AgentText(piece))
            streamed += len(piece)
        self.completed += 1


@dataclass(frozen=True)
class ServerArgs:
    """What the server process is built from (picklable)."""

    data_dir: str
    tables: dict[str, dict[str, Any]]
    first_delay: float
    chars_per_second: float


class PoolObserver:
    """Keeps every worker-pool call's queue wait and lateness by kind of work, by wrapping the
    pool's hook for a call that starts (measurement only)."""

    def __init__(self, workers: Any) -> None:
        self.waits: dict[str, list[float]] = {}
        self.late: dict[str, list[float]] = {}
        started = workers._started

        def observed(job: Any, now: float) -> None:
            self.waits.setdefault(job.kind, []).append(now - job.submitted)
            self.late.setdefault(job.kind, []).append(max(0.0, now - max(job.urgency.due, job.submitted)))
            started(job, now)

        workers._started = observed

    def clear(self) -> None:
        self.waits.clear()
        self.late.clear()


def build_conversation_app(argument: ServerArgs, resources: ExitStack) -> ServedApp:
    """The server with the real speech models and the streaming agent double (server process).
    Commands: ``stats`` (everything since the last ``reset``), ``reset``."""
    recorder = TurnRecorder()
    agent = StreamingAgent(first_token_delay=argument.first_delay, chars_per_second=argument.chars_per_second)
    app = real_speech_app(argument.data_dir, argument.tables, agent, recorder)
    pool = PoolObserver(app.workers)
    lag = LoopLag()

    def stats() -> dict[str, Any]:
        return {
            **recorder.figures(),
            "waits": pool.waits,
            "late": pool.late,
            "saturation_episodes": app.workers.monitor.episodes,
            "stories": agent.stories,
            "shorts": agent.shorts,
            "turn_detector": type(app.turn).__name__ if app.turn is not None else "off",
            "worker_threads": app.workers.threads,
            "loop_lag": percentiles(lag.samples, (50, 99)),
        }

    def reset() -> None:
        recorder.reset()
        pool.clear()
        lag.samples.clear()
        agent.stories = agent.shorts = 0

    return ServedApp(app, {"stats": stats, "reset": reset}, tasks=(lag.run,))


def server_tables(models_dir: Path | None, settings: Sequence[str] = ()) -> dict[str, dict[str, Any]]:
    """Config tables beyond the agent: the default models folder when Smart Turn is installed
    there (as ``serve`` would find it), else none (the server goes on without Smart Turn); then
    each ``TABLE.KEY=VALUE`` of ``settings`` (the value read as TOML, else as a string)."""
    tables: dict[str, dict[str, Any]] = {"models": {"dir": str(models_dir)}} if models_dir is not None else {}
    for setting in settings:
        name, _, value = setting.partition("=")
        table, _, key = name.partition(".")
        if not (table and key and value):
            raise SystemExit(f"--set wants TABLE.KEY=VALUE, not {setting!r}")
        try:
            parsed = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            parsed = value
        tables.setdefault(table, {})[key] = parsed
    return tables


# ------------------------------------------------------------------------------------------------
# The devices
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Uplink:
    """A turn's microphone stream: silence while the user thinks, the question, then silence."""

    question: str
    frames: list[bytes]
    #: Index of the frame that holds the question's last voiced sample.
    last_voiced: int
    #: Seconds from that sample to the end of its frame.
    tail: float


class Uplinks:
    """Encodes each (question, thinking pause) once, in the voice asked for."""

    def __init__(self, voice: str) -> None:
        self.voice = voice
        self._speech: dict[str, np.ndarray] = {}
        self._made: dict[tuple[str, float], Uplink] = {}

    def get(self, question: str, think: float) -> Uplink:
        key = (question, think)
        if key not in self._made:
            speech = self._speech.setdefault(question, speak(question, self.voice))
            quiet = opus_packets(np.zeros(round(think * RATE), np.float32))
            voiced = opus_packets(speech)
            after = opus_packets(np.zeros(round(TAIL_SECONDS * RATE), np.float32))
            tail = len(voiced) * FRAME - len(speech) / RATE
            self._made[key] = Uplink(question, frames(quiet + voiced + after, 1), len(quiet) + len(voiced) - 1, tail)
        return self._made[key]


@dataclass(frozen=True)
class PlannedTurn:
    question: str
    story: bool
    think: float


@dataclass(frozen=True)
class Plan:
    """One device's conversation: when it joins and what it asks."""

    device: int
    start: float
    turns: tuple[PlannedTurn, ...]


def plan_conversations(devices: int, turns: int, spread: float, seed: int) -> list[Plan]:
    """Seeded: devices join at uniformly random moments within ``spread`` seconds; each alternates
    two-sentence questions and story requests (every other device starts with a story)."""
    rng = np.random.default_rng(seed)
    starts = np.sort(rng.uniform(0.0, spread, devices))
    plans = []
    for device, start in enumerate(starts):
        planned = []
        for turn in range(turns):
            story = (device + turn) % 2 == 1
            pool = STORY_QUESTIONS if story else SHORT_QUESTIONS
            planned.append(PlannedTurn(str(rng.choice(pool)), story, float(rng.choice(THINK_SECONDS))))
        plans.append(Plan(device + 1, float(start), tuple(planned)))
    return plans


def measure_turn(plan: Plan, index: int, uplink: Uplink, heard: Any, sent: Sequence[float], burst: int) -> TurnResult:
    """What one turn's timestamps mean (benchmark clock)."""
    result = TurnResult(plan.device, index, plan.turns[index].story, stt=heard.stt)
    if len(sent) <= uplink.last_voiced:
        result.lost = "reply before the question ended"
    elif not heard.done.is_set():
        result.lost = "no tts stop in time"
    elif heard.first_audio_at is None:
        result.lost = "no audio"
    elif heard.stt_at is None:
        result.lost = "no stt"
    if result.lost:
        return result
    speech_end = sent[uplink.last_voiced] - uplink.tail
    result.to_stt = heard.stt_at - speech_end
    result.to_first_audio = heard.first_audio_at - speech_end
    result.playback = asdict(replay(list(zip(heard.packet_times, heard.packet_seconds)), burst))
    return result


async def converse(url: str, plan: Plan, uplinks: Uplinks, t0: float, args: argparse.Namespace, into: list[TurnResult], failures: list[str]) -> None:
    """One device: join at its moment, ask its questions, play the replies."""
    await trio.sleep_until(t0 + plan.start)
    burst = max(1, round(args.lead_ms / (FRAME * 1000)))
    try:
        async with open_device(url, plan.device) as device:
            decoder = OpusDecoder(48000)  # Opus's own rate: each packet decodes to its exact length
            device.decode = lambda data: len(decoder.decode(data)) / 48000
            for index, planned in enumerate(plan.turns):
                uplink = uplinks.get(planned.question, planned.think)
                heard, sent = await device.say(uplink.frames, timeout=args.turn_timeout)
                into.append(measure_turn(plan, index, uplink, heard, sent, burst))
    except (OSError, HandshakeError, ConnectionClosed, trio.BrokenResourceError) as e:
        # Refused, reset or closed: one device's loss, counted (its unasked turns count as lost).
        failures.append(f"device {plan.device}: {type(e).__name__}: {e}")


async def sample_rss(server: ServerProcess, into: list[int]) -> None:
    while True:
        into.append(server.rss())
        await trio.sleep(0.25)


async def drive(server: ServerProcess, level: Level, plans: list[Plan], uplinks: Uplinks, args: argparse.Namespace) -> None:
    """Warm up with one turn, read the baseline, run every device's conversation, then let the
    server settle and read its memory again."""
    warm: list[TurnResult] = []
    warm_plan = Plan(10_000, 0.0, (PlannedTurn(SHORT_QUESTIONS[0], False, 1.0),))
    await converse(server.url, warm_plan, uplinks, trio.current_time(), args, warm, [])
    await trio.sleep(1.0)
    await trio.to_thread.run_sync(server.request, "reset")
    level.rss_before = server.rss() / 2**20
    samples: list[int] = []
    cpu, t0 = server.cpu_seconds(), trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sample_rss, server, samples)
        with trio.move_on_after(args.max_seconds):
            async with trio.open_nursery() as devices:
                for plan in plans:
                    devices.start_soon(converse, server.url, plan, uplinks, t0 + 0.5, args, level.turns, level.failures)
        level.server_cpu_seconds = server.cpu_seconds() - cpu
        level.seconds = trio.current_time() - t0
        await trio.sleep(args.settle)
        nursery.cancel_scope.cancel()
    level.rss_peak = max(samples) / 2**20 if samples else math.nan
    level.rss_after = server.rss() / 2**20


def run_level(devices: int, args: argparse.Namespace, uplinks: Uplinks, data_dir: Path) -> Level:
    """One server process, ``devices`` conversations."""
    plans = plan_conversations(devices, args.turns, args.spread, args.seed)
    for plan in plans:  # encode every uplink before the clock starts
        for planned in plan.turns:
            uplinks.get(planned.question, planned.think)
    models = DEFAULT_MODELS if (DEFAULT_MODELS / "smart-turn-v3.2").is_dir() else None
    level = Level(devices, args.seed, settings={
        "turns": args.turns, "spread": args.spread, "agent_first": args.agent_first, "agent_rate": args.agent_rate,
        "voice": args.voice, "lead_ms": args.lead_ms, "machine": machine(), "set": list(args.set),
    })
    server_args = ServerArgs(str(data_dir), server_tables(models, args.set), args.agent_first, args.agent_rate)
    with ServerProcess(server_args, build_conversation_app) as server:
        wait_for_quiet(args.quiet_wait)
        level.load_before = os.getloadavg()
        with MachineLoad(server.process.pid) as load:
            trio.run(drive, server, level, plans, uplinks, args)
        level.load_after = os.getloadavg()
        level.server = server.request("stats")
    level.others_cpu_percent = load.others_percent
    return level


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--levels", default=",".join(map(str, LEVELS)), help="device counts, one server process each")
    parser.add_argument("--turns", type=int, default=TURNS, help="turns per device")
    parser.add_argument("--spread", type=float, default=30.0, help="seconds over which the devices join")
    parser.add_argument("--seed", type=int, default=9)
    parser.add_argument("--agent-first", type=float, default=0.3, help="seconds from the question to the agent's first text")
    parser.add_argument("--agent-rate", type=float, default=100.0, help="characters a second the agent streams")
    parser.add_argument("--voice", default="piper", help='who asks: "piper" (the server\'s own voice) or an espeak-ng voice ("en-us")')
    parser.add_argument("--lead-ms", type=float, default=180.0, help="the server's downlink lead ([audio] downlink_lead_ms): its opening burst")
    parser.add_argument("--turn-timeout", type=float, default=90.0)
    parser.add_argument("--max-seconds", type=float, default=300.0, help="time limit of a level's conversations")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds after the last device leaves before RSS 'after'")
    parser.add_argument("--quiet-wait", type=float, default=30.0, help="seconds to wait at most for other work to calm down before a level")
    parser.add_argument("--set", action="append", default=[], metavar="TABLE.KEY=VALUE", help="a server config setting, e.g. workers.one_run_per_model=false (repeatable)")
    parser.add_argument("--name", default="conversations", help="results are saved as bench/results/<name>_<N>.json (and read back by --report)")
    parser.add_argument("--report", action="store_true", help="print the table and plot of every saved level instead of running")
    args = parser.parse_args()
    if args.report:
        levels = load_levels(sorted(RESULTS.glob(f"{args.name}_*.json")))
        print(report(levels))
        print(f"\nplot: {plot(levels, f'{args.name}.png')}")
        return
    uplinks = Uplinks(args.voice)
    levels = []
    with tempfile.TemporaryDirectory(prefix="xiaozhi-bench-conversations-") as tmp:
        print(machine(), flush=True)
        for devices in (int(s) for s in args.levels.split(",")):
            level = run_level(devices, args, uplinks, Path(tmp) / str(devices))
            figure_path(f"{args.name}_{devices}.json").write_text(json.dumps(asdict(level)))
            a = level.first_audio()
            print(f"... {devices} devices: {len(level.answered())} turns, first audio p95 {a['p95']:.2f} s, lost {level.lost()}, underruns {level.underruns()}", flush=True)
            levels.append(level)
    print()
    print(report(levels))
    print(f"\nplot: {plot(levels, f'{args.name}_run.png')}")


if __name__ == "__main__":
    main()

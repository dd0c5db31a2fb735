"""Turn-taking: how soon the server answers a finished question, and how often it cuts a user off
who only paused mid-sentence — with the Smart Turn detector and the turn policy, against today's
fixed VAD silence window.

Utterances (``tests/contracts/turn_clips.py``): complete questions and sentences broken off by a
400, 600 or 900 ms pause, in English (the project's Piper voice and espeak-ng) and Mandarin
(espeak-ng).

**Offline** (no server, audio time): the real Silero VAD and the listen stage's sans-IO core
(``UtteranceDetector`` with the ``TurnPolicy``) over each utterance in 60 ms uplink chunks, with
the real Smart Turn model answering each question at once. Reports, per voice and overall:

* incomplete utterances wrongly ended at their pause (the turn ended before the user spoke on),
  with the policy and with the plain VAD window (``[vad] min_silence_ms`` = 500 ms);
* complete questions: silence from the end of speech to the end of the turn (audio time);
* the detector's cost: CPU per call (features + inference, one thread), calls per utterance.

**Latency** (``--latency``): a server process as ``serve`` builds it — Silero, Moonshine, Piper —
with an instant scripted agent, once with ``[turn] backend = "off"`` (today) and once with Smart
Turn. One device asks each complete English question (real Opus, paced in real time) and reads the
reply. Per turn: end of speech (the capture time of the last voiced sample) → ``stt`` received
and → first reply audio packet; and the server's CPU seconds per turn. Targets (issue 8): →
``stt`` p50 ≤ 300 ms, p95 ≤ 450 ms; → first audio p50 ≤ 500 ms; false ends ≤ 5 %.

Needs espeak-ng and the model (``xiaozhi-trio models install smart-turn-v3.2``). Run from the
repository root: ``python -m bench.turn_taking [--latency] [--rounds 2]``. Timing runs belong on
a quiet machine (``flock /tmp/bench.lock …``).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import trio

from bench.common import figure_path, frames, machine, open_device, opus_packets, percentiles, save_figure, table
from bench.speech_concurrency import speech_server
from xiaozhi_trio.plugins.testing.turn_clips import Utterance, utterances
from xiaozhi_trio.pipeline.config import TurnPolicyConfig, default_data_dir
from xiaozhi_trio.pipeline.messages import ListenStart, PcmChunk, SpeechEnded
from xiaozhi_trio.pipeline.stages.listen import TurnQuestion, UtteranceDetector
from xiaozhi_trio.pipeline.stages.turn_policy import TurnTiming

RATE = 16000
CHUNK = 960  # one 60 ms uplink frame
LEAD = 0.3  # silence before each utterance
TAIL = 2.5  # silence after it
FRAME = 0.06
MODEL = default_data_dir() / "models" / "smart-turn-v3.2" / "smart-turn-v3.2-cpu.onnx"


# ------------------------------------------------------------------------------------------------
# Offline: the listen stage's core over each utterance
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Outcome:
    voice: str
    language: str
    complete: bool
    pause: float
    #: Audio time of each turn end, in seconds from the start of the utterance's speech.
    ends: list[float]
    speech_seconds: float
    calls: int = 0

    @property
    def false_end(self) -> bool:
        """An incomplete utterance whose turn ended before the user spoke on."""
        return not self.complete and bool(self.ends) and self.ends[0] < self.resume_at

    resume_at: float = 0.0

    @property
    def end_delay(self) -> float:
        """Silence from the end of speech to the first turn end (complete questions)."""
        return self.ends[0] - self.speech_seconds if self.ends else float("nan")


def run_detector(detector: UtteranceDetector, audio: np.ndarray, ask: Any) -> tuple[list[float], int]:
    """Feed ``audio`` in uplink chunks; answer questions at once with ``ask``; return turn-end times."""
    ends: list[float] = []
    calls = 0
    pending = list(detector.control(ListenStart("auto")))
    for start in range(0, len(audio), CHUNK):
        pending += detector.audio(PcmChunk(audio[start : start + CHUNK], RATE))
        now = min(start + CHUNK, len(audio)) / RATE
        while pending:
            output = pending.pop(0)
            if isinstance(output, TurnQuestion):
                calls += 1
                pending += detector.answer(output.ask, ask(output.audio.samples))
            elif isinstance(output, SpeechEnded):
                ends.append(now)
    return ends, calls


def offline(clips: list[Utterance], timings: dict[str, TurnTiming]) -> dict[str, Any]:
    from xiaozhi_trio.plugins.speech.models.locate import locate_model
    from xiaozhi_trio.plugins.speech.turn import SmartTurn, load_session
    from xiaozhi_trio.plugins.speech.vad import SileroVad, VadOptions
    from xiaozhi_trio.pipeline.workers import CpuWorkers

    tmp = tempfile.mkdtemp(prefix="xiaozhi-bench-turn-")  # the VAD opens streams from it throughout
    vad = SileroVad(locate_model("silero-vad", Path(tmp)), VadOptions())
    model = SmartTurn(load_session(MODEL), CpuWorkers(1))
    costs: list[float] = []

    answers: dict[bytes, float] = {}  # variants ask about the same audio: one model call each

    def ask(samples: np.ndarray) -> float:
        key = hashlib.sha1(samples.tobytes()).digest()
        if key not in answers:
            started = time.thread_time()
            answers[key] = model.probability(samples)
            costs.append(time.thread_time() - started)
        return answers[key]

    results: dict[str, list[Outcome]] = defaultdict(list)
    for clip in clips:
        audio = np.concatenate([np.zeros(round(LEAD * RATE), np.float32), clip.samples, np.zeros(round(TAIL * RATE), np.float32)])
        resume_at = LEAD + (clip.pause_at + clip.pause_samples) / RATE
        speech = LEAD + len(clip.samples) / RATE
        variants = {"vad window": UtteranceDetector(vad.open_stream)}
        for name, timing in timings.items():
            variants[name] = UtteranceDetector(vad.open_stream, turn=timing, turn_modes=("auto",))
        for name, detector in variants.items():
            ends, calls = run_detector(detector, audio, ask)
            results[name].append(
                Outcome(clip.voice, clip.language, clip.complete, clip.pause_samples / RATE, ends, speech, calls, resume_at)
            )
    return {"results": results, "cost_per_call": costs}


def offline_report(data: dict[str, Any]) -> str:
    results: dict[str, list[Outcome]] = data["results"]
    rows = []
    for name, outcomes in results.items():
        for voice in ("piper", "en-us", "cmn", "all"):
            chosen = [o for o in outcomes if voice in ("all", o.voice)]
            broken = [o for o in chosen if not o.complete]
            done = [o for o in chosen if o.complete]
            delays = [1000 * o.end_delay for o in done]
            d = percentiles(delays)
            calls = [o.calls for o in chosen]
            rows.append([
                name, voice,
                f"{sum(o.false_end for o in broken)}/{len(broken)}",
                100 * sum(o.false_end for o in broken) / max(1, len(broken)),
                d["p50"], d["p95"], d["max"],
                float(np.mean(calls)) if calls else float("nan"),
            ])
    cost = percentiles([1000 * c for c in data["cost_per_call"]])
    head = ["policy", "voice", "false ends", "false %", "end p50 ms", "end p95 ms", "end max ms", "calls/utt"]
    return (
        table(head, rows)
        + f"\n\nSmart Turn per call (features + inference, 1 thread, CPU ms): p50 {cost['p50']:.0f}, p95 {cost['p95']:.0f}, max {cost['max']:.0f} ({int(cost['n'])} calls)"
        + "\n('end' = silence from the end of a complete question's speech to the end of its turn, audio time)"
    )


# ------------------------------------------------------------------------------------------------
# Latency: the server with the real models
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Question:
    text: str
    voice: str
    frames: list[bytes]
    voiced_frames: int
    tail: float  # seconds between the last voiced sample and the end of its frame


def build_questions(clips: list[Utterance]) -> list[Question]:
    out = []
    for clip in clips:
        voiced = opus_packets(clip.samples)
        packets = voiced + opus_packets(np.zeros(int(4.0 * RATE), np.float32))
        out.append(Question(clip.text, clip.voice, frames(packets, 1), len(voiced), len(voiced) * FRAME - len(clip.samples) / RATE))
    return out


async def drive(url: str, questions: list[Question], rounds: int, into: dict[str, list[float]]) -> None:
    async with open_device(url, 1) as device:
        await device.say(questions[0].frames, timeout=30)  # warm-up: onnxruntime's first runs
        for _ in range(rounds):
            for question in questions:
                heard, sent = await device.say(question.frames, timeout=30)
                if not heard.done.is_set() or heard.stt_at is None or heard.first_audio_at is None or len(sent) < question.voiced_frames:
                    into["lost"].append(1.0)
                    continue
                end = sent[question.voiced_frames - 1] + FRAME - question.tail
                into["stt"].append(heard.stt_at - end)
                into["audio"].append(heard.first_audio_at - end)
                into["voice"].append(question.voice)
                await trio.sleep(0.8)


def latency(clips: list[Utterance], rounds: int) -> dict[str, dict[str, Any]]:
    questions = build_questions(clips)
    modes = {"vad window (today)": {"backend": "off"}, "smart turn": {"backend": "smart-turn", "model": str(MODEL)}}
    measured: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="xiaozhi-bench-turn-") as tmp:
        for name, turn in modes.items():
            into: dict[str, list[float]] = defaultdict(list)
            with speech_server(Path(tmp), {"turn": turn}) as server:
                cpu = server.cpu_seconds()
                trio.run(drive, server.url, questions, rounds, into)
                cpu = server.cpu_seconds() - cpu
            turns = len(into["stt"]) + 1  # the warm-up turn too
            measured[name] = {
                "stt": into["stt"], "audio": into["audio"], "voice": into["voice"], "lost": len(into["lost"]), "cpu_per_turn": cpu / turns,
            }
            print(f"... {name}: {len(into['stt'])} turns", flush=True)
    return measured


def latency_report(measured: dict[str, dict[str, Any]]) -> str:
    rows = []
    for name, m in measured.items():
        voices = m.get("voice") or ["?"] * len(m["stt"])
        for voice in ("all", *sorted(set(voices))):
            chosen = [i for i, v in enumerate(voices) if voice in ("all", v)]
            s = percentiles([1000 * m["stt"][i] for i in chosen])
            a = percentiles([1000 * m["audio"][i] for i in chosen])
            cpu = 1000 * m["cpu_per_turn"] if voice == "all" else float("nan")
            rows.append([name, voice, int(s["n"]), s["p50"], s["p95"], s["max"], a["p50"], a["p95"], a["max"], cpu, m["lost"]])
    head = ["end of turn", "voice", "turns", "→stt p50", "p95", "max", "→audio p50", "p95", "max", "CPU ms/turn", "lost"]
    return table(head, rows) + "\n(ms from the end of speech, device side)"


def plot(measured: dict[str, dict[str, Any]], name: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for label, m in measured.items():
        for key, style in (("stt", "-"), ("audio", "--")):
            values = np.sort(1000 * np.asarray(m[key]))
            if len(values):
                ax.step(values, np.arange(1, len(values) + 1) / len(values), style, where="post", label=f"{label}: → {key}")
    ax.set_xlabel("ms after the end of speech")
    ax.set_ylabel("share of turns")
    ax.set_title("Turn-taking latency (real models, instant agent)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency", action="store_true", help="also run the server latency comparison")
    parser.add_argument("--no-offline", action="store_true", help="skip the offline false-end and cost run")
    parser.add_argument("--rounds", type=int, default=1, help="rounds over the complete questions per server")
    parser.add_argument("--questions", type=int, default=0, help="use only the first N complete questions (0: all English ones)")
    parser.add_argument("--thresholds", default="", help="also try these thresholds (comma-separated), offline")
    parser.add_argument("--pauses", default="0.4,0.6,0.9", help="mid-sentence pause lengths, seconds")
    args = parser.parse_args()
    if not MODEL.is_file():
        raise SystemExit(f"{MODEL} is missing: run xiaozhi-trio models install smart-turn-v3.2")
    pauses = tuple(float(p) for p in args.pauses.split(","))
    clips = utterances(pauses)
    print(f"{machine()}; {len(clips)} utterances", flush=True)
    saved: dict[str, Any] = {}
    if not args.no_offline:
        default = TurnTiming.from_config(TurnPolicyConfig())
        timings = {"smart turn": default, "smart turn, ask once": dataclasses.replace(default, recheck=default.max_silence)}
        for threshold in args.thresholds.split(","):
            if threshold:
                timings[f"smart turn, threshold {threshold}"] = dataclasses.replace(default, threshold=float(threshold))
        data = offline(clips, timings)
        print(offline_report(data))
        saved["offline"] = {name: [dataclasses.asdict(o) for o in outs] for name, outs in data["results"].items()}
        saved["cost_per_call"] = data["cost_per_call"]
    if args.latency:
        complete = [c for c in clips if c.complete and c.language == "en"][: args.questions or None]
        measured = latency(complete, args.rounds)
        print(latency_report(measured))
        print(f"plot: {plot(measured, 'turn_taking_latency.png')}")
        saved["latency"] = measured
    figure_path("turn_taking.json").write_text(json.dumps(saved))


if __name__ == "__main__":
    main()

"""Turn-taking: how soon the server answers a finished question, and how often it cuts a user off
who only paused mid-sentence — with the Smart Turn detector and the turn policy, against today's
fixed VAD silence window.

Utterances (``plugins/testing/turn_clips.py``): complete questions and sentences broken off by a
400, 600 or 900 ms pause in three ways (``--kinds``: after a comma, between two words of a
sentence said in one go, after a filler), in English (the project's Piper voice and espeak-ng) and
Mandarin (espeak-ng). Piper's take 0 has no noise and is the same every run; ``--piper-takes
0,1,2,3`` adds takes sampled with the voice's noise (reported as ``piper-noise``).

**Offline** (no server, audio time): the real Silero VAD and the listen stage's sans-IO core
(``UtteranceDetector`` with the ``TurnPolicy``) over each utterance in 60 ms uplink chunks, with
the real Smart Turn model answering each question at once. Policies: the default, the plain VAD
window (``[vad] min_silence_ms`` = 500 ms), one threshold of 0.8 asked every 400 ms (the previous
default), 0.5 (pipecat's), and any given with ``--try``. Reports, per policy, voice and kind:

* incomplete utterances wrongly ended at their pause (the turn ended before the user spoke on);
* complete questions: silence from the end of speech to the end of the turn (audio time);
* detector calls per utterance and their CPU (features + inference, one thread);
* the detector's answer at the first pause, complete against broken-off utterances.

**Latency** (``--latency``): a server process as ``serve`` builds it — Silero, Moonshine, Piper —
with an instant scripted agent, once with ``[turn] backend = "off"`` (today) and once with Smart
Turn. One device asks each complete English question (real Opus, paced in real time) and reads the
reply. Per turn: end of speech (the capture time of the last voiced sample) → ``stt`` received
and → first reply audio packet; and the server's CPU seconds per turn. Targets (issue 8): →
``stt`` p50 ≤ 300 ms, p95 ≤ 450 ms; → first audio p50 ≤ 500 ms; false ends ≤ 5 %.

Needs espeak-ng and the model (``xiaozhi-trio models install smart-turn-v3.2``). Run from the
repository root: ``python -m bench.turn_taking [--latency] [--rounds 2] [--kinds word]
[--piper-takes 0,1,2,3] [--try "200:0.9,1000:0.5"]``. Timing runs belong on a quiet machine.
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
from xiaozhi_trio.plugins.testing import turn_clips
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
    kind: str
    pause: float
    #: Audio time of each turn end, in seconds from the start of the clip (lead-in included).
    ends: list[float]
    speech_seconds: float
    calls: int = 0
    resume_at: float = 0.0
    #: The detector's answer to the first question about the clip (NaN: never asked).
    first_probability: float = float("nan")

    @property
    def complete(self) -> bool:
        return self.kind == "complete"

    @property
    def false_end(self) -> bool:
        """An incomplete utterance whose turn ended before the user spoke on."""
        return not self.complete and bool(self.ends) and self.ends[0] < self.resume_at

    @property
    def end_delay(self) -> float:
        """Silence from the end of speech to the first turn end (complete questions)."""
        return self.ends[0] - self.speech_seconds if self.ends else float("nan")


def voice_of(clip: Utterance) -> str:
    """The voice as the report names it: Piper's sampled takes apart from its noiseless one."""
    return "piper-noise" if clip.voice == "piper" and clip.take else clip.voice


def run_detector(detector: UtteranceDetector, audio: np.ndarray, ask: Any) -> tuple[list[float], list[float]]:
    """Feed ``audio`` in uplink chunks; answer questions at once with ``ask``; return the turn-end
    times and the answers given."""
    ends: list[float] = []
    answers: list[float] = []
    pending = list(detector.control(ListenStart("auto")))
    for start in range(0, len(audio), CHUNK):
        pending += detector.audio(PcmChunk(audio[start : start + CHUNK], RATE))
        now = min(start + CHUNK, len(audio)) / RATE
        while pending:
            output = pending.pop(0)
            if isinstance(output, TurnQuestion):
                answers.append(ask(output.audio.samples))
                pending += detector.answer(output.ask, answers[-1])
            elif isinstance(output, SpeechEnded):
                ends.append(now)
    return ends, answers


def offline(clips: list[Utterance], timings: dict[str, TurnTiming]) -> dict[str, Any]:
    from xiaozhi_trio.plugins.speech.models.locate import locate_model
    from xiaozhi_trio.plugins.speech.turn import SmartTurn, load_session
    from xiaozhi_trio.plugins.speech.vad import SileroVad, VadOptions
    from xiaozhi_trio.pipeline.workers import CpuWorkers

    tmp = tempfile.mkdtemp(prefix="xiaozhi-bench-turn-")  # the VAD opens streams from it throughout
    vad = SileroVad(locate_model("silero-vad", Path(tmp)), VadOptions())
    model = SmartTurn(load_session(MODEL), CpuWorkers(1))
    costs: list[float] = []

    answers: dict[bytes, float] = {}  # policies ask about the same audio: one model call each

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
            ends, given = run_detector(detector, audio, ask)
            first = given[0] if given else float("nan")
            results[name].append(
                Outcome(voice_of(clip), clip.language, clip.kind, clip.pause_samples / RATE, ends, speech, len(given), resume_at, first)
            )
    return {"results": results, "cost_per_call": costs}


def _false(outcomes: list[Outcome]) -> str:
    broken = [o for o in outcomes if not o.complete]
    if not broken:
        return "–"
    wrong = sum(o.false_end for o in broken)
    return f"{wrong}/{len(broken)} ({100 * wrong / len(broken):.1f} %)"


def offline_report(data: dict[str, Any], kinds: tuple[str, ...]) -> str:
    results: dict[str, list[Outcome]] = data["results"]
    cost = percentiles([1000 * c for c in data["cost_per_call"]])
    mean_cost = float(np.mean(data["cost_per_call"])) * 1000 if data["cost_per_call"] else float("nan")
    voices = sorted({o.voice for outcomes in results.values() for o in outcomes}, key=lambda v: ("piper", "piper-noise", "en-us", "cmn").index(v))
    rows = []
    for name, outcomes in results.items():
        for voice in (*voices, "all"):
            chosen = [o for o in outcomes if voice in ("all", o.voice)]
            delays = percentiles([1000 * o.end_delay for o in chosen if o.complete])
            calls = float(np.mean([o.calls for o in chosen])) if chosen else float("nan")
            rows.append([
                name, voice, *(_false([o for o in chosen if o.kind == kind]) for kind in kinds), _false(chosen),
                delays["p50"], delays["p95"], calls, calls * mean_cost,
            ])
    head = ["policy", "voice", *(f"false ends: {k}" for k in kinds), "false ends: all", "end p50 ms", "end p95 ms", "calls/utt", "CPU ms/utt"]
    return (
        table(head, rows)
        + f"\n\nSmart Turn per call (features + inference, 1 thread, CPU ms): p50 {cost['p50']:.0f}, p95 {cost['p95']:.0f}, max {cost['max']:.0f} ({int(cost['n'])} calls)"
        + "\n('end' = silence from the end of a complete question's speech to the end of its turn, audio time; CPU = calls x mean cost)"
    )


def margin_report(data: dict[str, Any]) -> str:
    """How sure the detector is at the first pause: complete questions against broken-off ones."""
    outcomes = next(iter(o for name, o in data["results"].items() if name != "vad window"))
    rows = []
    voices = sorted({o.voice for o in outcomes}, key=lambda v: ("piper", "piper-noise", "en-us", "cmn").index(v))
    for voice in voices:
        for complete in (True, False):
            chosen = [o.first_probability for o in outcomes if o.voice == voice and o.complete == complete and not np.isnan(o.first_probability)]
            if not chosen:
                continue
            q = np.percentile(chosen, [5, 25, 50, 75, 95])
            at = [f"{sum(p >= t for p in chosen)}/{len(chosen)}" for t in (0.5, 0.8, 0.9, 0.93, 0.95)]
            rows.append([voice, "complete" if complete else "broken off", *(f"{v:.2f}" for v in q), *at])
    head = ["voice", "utterances", "p5", "p25", "p50", "p75", "p95", ">= 0.5", ">= 0.8", ">= 0.9", ">= 0.93", ">= 0.95"]
    return "Detector's answer at the first pause (probability of finished):\n" + table(head, rows)


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


def policy(spec: str) -> tuple[str, TurnTiming]:
    """``--try``: ``[label=]SCHEDULE[@recheck_ms]``, SCHEDULE one probability (``0.8``) or
    ``ms:probability`` points (``200:0.93,1000:0.5``); the other settings are the defaults'."""
    label, _, rest = spec.rpartition("=")
    schedule_text, _, recheck = rest.partition("@")
    if ":" in schedule_text:
        schedule = tuple((float(ms) / 1000, float(p)) for ms, p in (point.split(":") for point in schedule_text.split(",")))
    else:
        schedule = ((0.0, float(schedule_text)),)
    default = TurnTiming.from_config(TurnPolicyConfig())
    timing = dataclasses.replace(default, schedule=schedule, recheck=float(recheck or 0) / 1000)
    return label or spec, timing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency", action="store_true", help="also run the server latency comparison")
    parser.add_argument("--no-offline", action="store_true", help="skip the offline false-end and cost run")
    parser.add_argument("--rounds", type=int, default=1, help="rounds over the complete questions per server")
    parser.add_argument("--questions", type=int, default=0, help="use only the first N complete questions (0: all English ones)")
    parser.add_argument("--try", dest="tries", action="append", default=[], metavar="[LABEL=]SCHEDULE[@RECHECK_MS]",
                        help='also try this policy offline: "0.8" (one threshold) or "200:0.93,1000:0.5" (a schedule); repeatable')
    parser.add_argument("--pauses", default="0.4,0.6,0.9", help="mid-sentence pause lengths, seconds")
    parser.add_argument("--kinds", default=",".join(turn_clips.KINDS), help="kinds of broken-off clips (comma, word, hesitation)")
    parser.add_argument("--piper-takes", default="0", help="Piper takes: 0 = without noise (deterministic), 1, 2, … sampled with the voice's noise")
    parser.add_argument("--voices", default="piper,en-us,cmn", help="voices")
    args = parser.parse_args()
    if not MODEL.is_file():
        raise SystemExit(f"{MODEL} is missing: run xiaozhi-trio models install smart-turn-v3.2")
    pauses = tuple(float(p) for p in args.pauses.split(","))
    kinds = tuple(k for k in args.kinds.split(",") if k)
    takes = tuple(int(t) for t in args.piper_takes.split(",") if t)
    clips = utterances(pauses, kinds=kinds, piper_takes=takes, voices=args.voices.split(","))
    print(f"{machine()}; {len(clips)} utterances ({sum(c.complete for c in clips)} complete)", flush=True)
    saved: dict[str, Any] = {}
    if not args.no_offline:
        timings = {
            "smart turn (default)": TurnTiming.from_config(TurnPolicyConfig()),
            "threshold 0.8, recheck 400 ms (before)": TurnTiming.constant(0.8, recheck=0.4),
            "threshold 0.5 (pipecat's)": TurnTiming.constant(0.5),
        }
        timings.update(policy(spec) for spec in args.tries)
        data = offline(clips, timings)
        print(offline_report(data, kinds))
        print(margin_report(data))
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

"""Decoding while the user speaks: what segmenting an utterance costs in accuracy, and how much is
left to decode when the user stops.

English utterances (Moonshine is English-only): the project's spoken test questions
(``testing.speech.QUESTIONS``, espeak-ng), the turn-taking clips' complete questions and
sentences with a mid-sentence comma (``testing.turn_clips``, whole, in the Piper voice and
espeak-ng) and moonshine-cpp's Beckett recording (a real voice, 10 s). Each goes through the
listen stage's core as a device would send it (real Silero VAD, 60 ms chunks, the turn policy
with a detector that never says "finished", so every pause is a ``SpeechPaused`` and the turn ends
at the silence limit) and is cut by ``SegmentCutter`` exactly as the recognizer stage does. Then:

* **WER**: the segments' texts joined against the whole utterance decoded at once, per voice;
* **segments** per utterance, and how often the tail after the last cut still holds speech
  (decoded only at the end) rather than silence (nothing left to decode);
* **last cut**: audio time from the end of speech to the cut of the last voiced segment (when its
  decode can start), and that decode's CPU time on one thread; their sum estimates end of speech →
  transcript on an idle machine. Against it, the whole utterance decoded from the end of the turn.

Run from the repository root: ``python -m bench.segmented_asr [--rules 'first,gap,min,max;...']``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import figure_path, machine, percentiles, table
from xiaozhi_trio.pipeline.config import default_data_dir
from xiaozhi_trio.pipeline.messages import ListenStart, PcmChunk, SpeechAudio, SpeechEnded, SpeechPaused, UtteranceStarted
from xiaozhi_trio.pipeline.stages.asr_segments import CutRule, Segment, SegmentCutter, join_texts
from xiaozhi_trio.pipeline.stages.listen import TurnQuestion, UtteranceDetector
from xiaozhi_trio.pipeline.stages.turn_policy import TurnTiming
from xiaozhi_trio.pipeline.workers import CpuWorkers
from xiaozhi_trio.plugins.speech.asr import AsrOptions, SherpaAsr, recognizer_recipe
from xiaozhi_trio.plugins.speech.models.locate import locate_model
from xiaozhi_trio.plugins.speech.vad import SileroVad, VadOptions
from xiaozhi_trio.plugins.testing import turn_clips
from xiaozhi_trio.plugins.testing.speech import QUESTIONS, beckett, spoken
from xiaozhi_trio.plugins.testing.wer import corpus_wer

RATE = 16000
CHUNK = 960  # 60 ms, one uplink frame
LEAD = 0.3
TAIL = 2.2  # more than the policy's silence limit


@dataclasses.dataclass
class Clip:
    voice: str
    text: str
    samples: np.ndarray


def clips() -> list[Clip]:
    out = [Clip("espeak", q, spoken(q, "en-us", 150)) for q in QUESTIONS]
    for text in turn_clips.COMPLETE_EN + turn_clips.BROKEN_EN:
        out.append(Clip("piper", text, turn_clips.piper(text)))
        out.append(Clip("espeak", text, spoken(text, "en-us", 150)))
    out.append(Clip("human", "Ever tried. Ever failed. No matter. Try again. Fail again. Fail better.", beckett()))
    return out


@dataclasses.dataclass
class Cut:
    segment: Segment
    at: float  # audio time of the cut, from the start of the clip
    kind: str


def segment_like_the_stage(vad: SileroVad, audio: np.ndarray, rule: CutRule) -> tuple[list[Cut], PcmChunk, list[Cut]]:
    """The listen stage's output over ``audio``, cut as the recognizer stage cuts it."""
    detector = UtteranceDetector(vad.open_stream, turn=TurnTiming(), turn_modes=("auto",))
    cutter: SegmentCutter | None = None
    cuts: list[Cut] = []
    wasted: list[Cut] = []  # decodes started and thrown away
    final: PcmChunk | None = None
    pending = list(detector.control(ListenStart("auto")))
    for start in range(0, len(audio), CHUNK):
        pending += detector.audio(PcmChunk(audio[start : start + CHUNK], RATE))
        now = min(start + CHUNK, len(audio)) / RATE
        while pending:
            item = pending.pop(0)
            match item:
                case TurnQuestion(ask=ask):
                    pending += detector.answer(ask, 0.0)
                case UtteranceStarted(audio=chunk):
                    cutter = SegmentCutter(rule, RATE)
                    cuts += [Cut(s, now, "speech") for s in cutter.feed(chunk.samples)[0]]
                case SpeechAudio(audio=chunk) if cutter is not None:
                    made, withdrawn = cutter.feed(chunk.samples)
                    wasted += [c for c in cuts if c.segment in withdrawn and c.segment.voiced]
                    cuts = [c for c in cuts if c.segment not in withdrawn] + [Cut(s, now, "speech") for s in made]
                case SpeechPaused(audio=chunk) if cutter is not None:
                    dropped = cutter.rebase(chunk.samples)
                    made, withdrawn = cutter.cut()
                    wasted += [c for c in cuts if c.segment in dropped + withdrawn and c.segment.voiced]
                    cuts = [c for c in cuts if c.segment not in dropped + withdrawn] + [Cut(s, now, "pause") for s in made]
                case SpeechEnded(audio=chunk) if cutter is not None and final is None:
                    plan = cutter.finish(chunk.samples)
                    kept = {s.number for s in plan.segments}
                    wasted += [c for c in cuts if c.segment.number not in kept and c.segment.voiced]
                    cuts = [c for c in cuts if c.segment.number in kept]
                    if plan.tail is not None:
                        cuts.append(Cut(plan.tail, now, "tail"))
                    final = chunk
    assert final is not None, "the listen stage never ended the utterance"
    return cuts, final, wasted


def decode(asr: SherpaAsr, samples: np.ndarray) -> tuple[str, float]:
    """Text and CPU seconds of one offline decode, as ``OfflineRecognition.finish`` does it."""
    started = time.thread_time()
    pieces = asr.pieces_of(samples)
    text = join_texts(asr.decode_batch([pieces])[0]) if pieces else ""
    return text, time.thread_time() - started


def run(rules: list[CutRule]) -> dict[str, Any]:
    models = default_data_dir() / "models"
    files = locate_model("moonshine-base-en", models)
    asr = SherpaAsr(recognizer_recipe(files).load(), files, CpuWorkers(1), AsrOptions())
    vad = SileroVad(locate_model("silero-vad", Path(tempfile.mkdtemp())), VadOptions())
    rows: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for clip in clips():
        audio = np.concatenate([np.zeros(round(LEAD * RATE), np.float32), clip.samples, np.zeros(round(TAIL * RATE), np.float32)])
        speech_end = LEAD + len(clip.samples) / RATE
        whole: tuple[str, float] | None = None
        for rule in rules:
            cuts, final, wasted = segment_like_the_stage(vad, audio, rule)
            if whole is None:
                whole = decode(asr, final.samples)
            texts, last_cut, last_cpu = [], float("nan"), float("nan")
            for cut in cuts:
                if not cut.segment.voiced:
                    continue
                text, cpu = decode(asr, cut.segment.samples)
                texts.append(text)
                last_cut, last_cpu = cut.at - speech_end, cpu
            voiced_tail = bool(cuts) and cuts[-1].kind == "tail" and cuts[-1].segment.voiced
            row = {
                "voice": clip.voice, "reference": clip.text, "whole": whole[0], "segmented": join_texts(texts),
                "segments": sum(c.segment.voiced for c in cuts), "voiced_tail": voiced_tail, "wasted": len(wasted),
                "last_cut": last_cut, "last_cpu": last_cpu, "whole_cpu": whole[1], "seconds": len(clip.samples) / RATE,
            }
            rows[rule_name(rule)].append(row)
            print(f"{rule_name(rule)} {clip.voice:6} {row['segments']} seg, {len(wasted)} wasted, last cut "
                  f"{1000 * last_cut:+5.0f} ms  {clip.text!r}\n       whole: {whole[0]!r}\n       segm.: {row['segmented']!r}", flush=True)
    return {"rows": rows}


def rule_name(rule: CutRule) -> str:
    return f"{rule.first_silence:g}/{rule.gap:g}/{rule.min_segment:g}/{rule.max_segment:g}"


def report(data: dict[str, Any]) -> str:
    out = []
    for name, all_rows in data["rows"].items():
        by_voice: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for row in all_rows:
            by_voice[row["voice"]].append(row)
            by_voice["all"].append(row)
        for voice, rows in sorted(by_voice.items()):
            whole = corpus_wer([(r["reference"], r["whole"]) for r in rows])
            segmented = corpus_wer([(r["reference"], r["segmented"]) for r in rows])
            ready = percentiles([1000 * (r["last_cut"] + r["last_cpu"]) for r in rows])
            out.append([
                name, voice, len(rows), 100 * whole, 100 * segmented, float(np.mean([r["segments"] for r in rows])),
                float(np.mean([r["wasted"] for r in rows])), sum(r["voiced_tail"] for r in rows),
                percentiles([1000 * r["last_cut"] for r in rows])["p50"], percentiles([1000 * r["last_cpu"] for r in rows])["p50"],
                ready["p50"], ready["p95"], percentiles([1000 * r["whole_cpu"] for r in rows])["p50"],
            ])
    head = ["rule", "voice", "utts", "WER whole %", "WER segm. %", "segments", "wasted", "voiced tails",
            "last cut p50 ms", "its decode p50 ms", "ready p50 ms", "ready p95 ms", "whole decode p50 ms"]
    return table(head, out) + (
        "\n(rule = first_silence/gap/min_segment/max_segment s; times from the end of speech; decode = CPU on one thread;"
        "\n wasted = decodes started at a first silence and withdrawn when speech resumed)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--rules", default="",
        help="cut rules to compare, 'first_silence,gap,min_segment,max_segment' seconds, separated by ';' (default: the stage's)",
    )
    args = parser.parse_args()
    rules = [CutRule(*(float(v) for v in r.split(","))) for r in args.rules.split(";") if r] or [CutRule()]
    print(machine(), flush=True)
    data = run(rules)
    print(report(data))
    figure_path("segmented_asr.json").write_text(json.dumps(data))


if __name__ == "__main__":
    main()

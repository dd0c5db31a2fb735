"""Speech recognition figures for a model: load, memory, real-time factor, end of speech → text.

For each thread count (1 and 2 by default) a fresh child process loads the model and measures, on
utterances cut by the real silero VAD from espeak-ng speech (about 2, 5 and 10 s long, as a
device's turn would reach the recognizer):

* ``load``: building the recognizer (the validation child process runs beforehand, not counted);
* ``memory``: resident memory (psutil RSS) growth from loading the model, and the largest growth
  seen after any decode (the model plus onnxruntime's working memory);
* ``first``: the first decode after loading (5 s utterance), which pays onnxruntime's set-up;
* ``RTF``: decode time over audio duration, calling sherpa-onnx directly;
* ``end of speech → text``: from handing the VAD's utterance to ``finish`` to the final text,
  through the backend (piece planning, worker thread, batcher), median over the repeats;
* ``overhead``: the backend's ``finish`` against ``create_stream`` + ``decode_stream`` on the same
  utterance, alternated in the same run; the median of the per-utterance ratios (the backend trims
  long silence and decodes retries, so it can also come out faster);
* ``batching``: 4 sessions whose utterances end at the same moment: all in one batch
  (``max_batch = 4``), one utterance at a time (``max_batch = 1``), and each session decoding on its
  own worker thread at once (no batcher; two at a time on two cores).

Needs espeak-ng (``apt-get install espeak-ng``). Run from the repository root:
``python -m bench.speech_asr [--model moonshine-base-en] [--threads 1 2] [--repeat 5]``.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import trio

from bench.common import machine, table, wait_for_quiet
from xiaozhi_trio.plugins.testing.speech import QUESTIONS, joined, silence, spoken
from xiaozhi_trio.plugins.testing.wer import corpus_wer
from xiaozhi_trio.pipeline.messages import PcmChunk, SpeechEnded
from xiaozhi_trio.pipeline.workers import CpuWorkers
from xiaozhi_trio.plugins.speech.asr import AsrOptions, SherpaAsr, recognizer_recipe
from xiaozhi_trio.plugins.speech.models.locate import locate_model
from xiaozhi_trio.plugins.speech.models.validate import validate_model
from xiaozhi_trio.plugins.speech.vad import SileroVad, VadOptions

RATE = 16000
#: Sentences (with 0.3 s pauses, too short to end a turn) making utterances of about 2, 5, 10 s.
UTTERANCES = {
    "2 s": [QUESTIONS[2]],
    "5 s": [QUESTIONS[0], QUESTIONS[4]],
    "10 s": [QUESTIONS[6], QUESTIONS[1], QUESTIONS[3], QUESTIONS[5], QUESTIONS[4]],
}
SESSIONS = 4


def vad_utterance(vad: SileroVad, sentences: list[str]) -> tuple[np.ndarray, str]:
    """What the VAD hands the recognizer when ``sentences`` are said with short pauses."""
    speech = joined(*[joined(spoken(s), silence(0.3)) for s in sentences])
    stream = vad.open_stream()
    ended = [e for e in stream.feed(joined(silence(1.0), speech, silence(1.0))) if isinstance(e, SpeechEnded)]
    assert len(ended) == 1, f"the VAD cut {sentences} into {len(ended)} utterances"
    return ended[0].audio.samples, " ".join(sentences)


def direct(recognizer: Any, samples: np.ndarray) -> tuple[float, str]:
    """Seconds and text of a bare sherpa-onnx decode, as a program using it directly would do."""
    start = time.perf_counter()
    stream = recognizer.create_stream()
    stream.accept_waveform(RATE, samples)
    recognizer.decode_stream(stream)
    return time.perf_counter() - start, stream.result.text


async def through_backend(asr: SherpaAsr, samples: np.ndarray) -> tuple[float, str]:
    start = time.perf_counter()
    text = await asr.open_stream().finish(PcmChunk(samples, RATE))
    return time.perf_counter() - start, text


async def sessions_at_once(asr: SherpaAsr, utterances: list[np.ndarray], separate_threads: bool) -> list[float]:
    """Per-session seconds from the common end of speech to each session's text."""
    done: list[float] = []
    start = time.perf_counter()

    async def one(samples: np.ndarray) -> None:
        if separate_threads:
            await asr.workers.run(direct, asr.recognizer, samples)
        else:
            await asr.open_stream().finish(PcmChunk(samples, RATE))
        done.append(time.perf_counter() - start)

    async with trio.open_nursery() as nursery:
        for samples in utterances:
            nursery.start_soon(one, samples)
    return done


async def measure(model: str, threads: int, repeat: int, models_dir: Path) -> dict[str, Any]:
    files = locate_model(model, models_dir)
    validate_model(files)
    vad = SileroVad(locate_model("silero-vad", models_dir), VadOptions())
    utterances = {label: vad_utterance(vad, sentences) for label, sentences in UTTERANCES.items()}
    del vad
    gc.collect()
    process = psutil.Process()
    before = process.memory_info().rss
    start = time.perf_counter()
    recognizer = recognizer_recipe(files, num_threads=threads).load()
    load = time.perf_counter() - start
    loaded = process.memory_info().rss
    first, _ = direct(recognizer, utterances["5 s"][0])
    peak = process.memory_info().rss
    asr = SherpaAsr(recognizer, files, CpuWorkers(), AsrOptions(model=model, num_threads=threads))

    audio = 0.0
    latency: dict[str, list[float]] = {label: [] for label in utterances}
    direct_total = 0.0
    ratios: list[float] = []  # backend time over direct time, per utterance and round
    pairs: list[tuple[str, str]] = []
    for round_ in range(repeat):
        for index, (label, (samples, said)) in enumerate(utterances.items()):
            # Alternate which goes first, so neither always runs on warmer caches.
            if (round_ + index) % 2:
                bare, _ = direct(recognizer, samples)
            took, text = await through_backend(asr, samples)
            peak = max(peak, process.memory_info().rss)
            if not (round_ + index) % 2:
                bare, _ = direct(recognizer, samples)
            latency[label].append(took)
            ratios.append(took / bare)
            direct_total += bare
            audio += len(samples) / RATE
            pairs.append((said, text))

    batch_inputs = [utterances["2 s"][0], utterances["5 s"][0]] * (SESSIONS // 2)
    batching: dict[str, list[float]] = {"one batch": [], "batch of 1": [], "own threads": []}
    def backend(max_batch: int) -> SherpaAsr:
        options = AsrOptions(model=model, num_threads=threads, max_batch=max_batch)
        return SherpaAsr(recognizer, files, CpuWorkers(), options)

    together, single = backend(SESSIONS), backend(1)
    for _ in range(repeat):
        batching["one batch"] += await sessions_at_once(together, batch_inputs, separate_threads=False)
        batching["batch of 1"] += await sessions_at_once(single, batch_inputs, separate_threads=False)
        batching["own threads"] += await sessions_at_once(single, batch_inputs, separate_threads=True)

    return {
        "threads": threads,
        "load_s": load,
        "load_mb": (loaded - before) / 1e6,
        "peak_mb": (peak - before) / 1e6,
        "first_s": first,
        "rtf": direct_total / audio,
        "latency": {label: statistics.median(values) for label, values in latency.items()},
        "durations": {label: len(samples) / RATE for label, (samples, _) in utterances.items()},
        "overhead_pct": 100 * (statistics.median(ratios) - 1),
        "wer": corpus_wer(pairs),
        "batching": {
            mode: (statistics.median(values), max(values)) for mode, values in batching.items()
        },
        "batch_sizes": sorted(set(together.batcher.stats.sizes)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="moonshine-base-en")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--models-dir", type=Path, default=None, help="default: a temporary folder")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # a child: one row, as JSON
    args = parser.parse_args()
    if args.one:
        print(json.dumps(trio.run(measure, args.model, args.threads[0], args.repeat, args.models_dir)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        models_dir = args.models_dir or Path(tmp)
        rows = []
        for threads in args.threads:
            busy = wait_for_quiet(180.0)
            if busy >= 15.0:
                print(f"note: other processes used {busy:.0f} % of the cores as {threads} thread(s) began", flush=True)
            # A fresh process per row, so memory and load time are not blurred by the previous row.
            done = subprocess.run(
                [sys.executable, "-m", "bench.speech_asr", "--one", "--model", args.model, "--threads",
                 str(threads), "--repeat", str(args.repeat), "--models-dir", str(models_dir)],
                check=True, capture_output=True, text=True,
            )
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"{args.model} on {machine()}; {args.repeat} repeats")
    durations = rows[0]["durations"]
    labels = list(durations)
    print(
        table(
            ["threads", "load s", "load MB", "peak MB", "first decode s", "RTF", "overhead %", "WER"]
            + [f"{label} ({durations[label]:.1f} s) → text, s" for label in labels],
            [
                [r["threads"], f"{r['load_s']:.2f}", f"{r['load_mb']:.0f}", f"{r['peak_mb']:.0f}",
                 f"{r['first_s']:.2f}", f"{r['rtf']:.3f}", f"{r['overhead_pct']:+.1f}", f"{r['wer']:.3f}"]
                + [f"{r['latency'][label]:.2f}" for label in labels]
                for r in rows
            ],
        )
    )
    print(f"\n{SESSIONS} sessions ending at once (2 s and 5 s utterances): seconds to each text, median / max")
    print(
        table(
            ["threads", f"one batch of {SESSIONS}", "one utterance at a time", "each on its own worker thread"],
            [
                [r["threads"]] + [f"{r['batching'][m][0]:.2f} / {r['batching'][m][1]:.2f}"
                                  for m in ("one batch", "batch of 1", "own threads")]
                for r in rows
            ],
        )
    )


if __name__ == "__main__":
    main()

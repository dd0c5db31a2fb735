"""Resident memory of the local speech models under load, run after run (issue 9).

One process, no WebSocket: the default models (Moonshine base-en, Piper "joe") loaded as the server
loads them (``load_asr`` / ``load_tts``, warm-ups included) on the real worker pool (one thread per
core, ``[workers] one_run_per_model`` as configured), then runs of rounds in which several spoken
questions are decoded and several long replies synthesized, all started together:

* **decodes**: questions spoken by espeak-ng (2–3 s each) and, every other round, two or three of
  them joined into one longer utterance. By default each is cut as the recognizer stage cuts it
  while the user speaks (``SegmentCutter``: segments and the tail, each decoded on its own, as
  ``[asr] decode_while_speaking`` does); ``--whole`` decodes whole utterances instead (pieces of
  at most ``max_segment_seconds``).
* **syntheses**: long replies (a story, an answer full of numbers, a list) cut into sentences by
  the server's ``SentenceSplitter`` and spoken one sentence after another, as a reply is; with
  ``--unsplit`` the whole text goes to the voice at once.

Resident memory (``psutil``) is read after the load-time warm-ups, after every run (the load has
ended) and sampled every 50 ms throughout for the peak. Memory does not depend on timing, so
others' work on the machine does not change these figures (only the durations printed).

Run from the repository root: ``python -m bench.memory [--runs 4] [--rounds 4]``; ``--trim``
calls ``malloc_trim(0)`` after each run, ``--warm-rounds N`` runs N rounds before the baseline is
read, ``--decodes 0`` / ``--syntheses 0`` load one model only, ``--json FILE`` saves the figures.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import os
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import psutil
import trio

from xiaozhi_trio.pipeline.messages import PcmChunk, Sentence
from xiaozhi_trio.pipeline.stages.asr_segments import CutRule, SegmentCutter
from xiaozhi_trio.pipeline.text.splitter import SentenceSplitter
from xiaozhi_trio.pipeline.workers import CpuWorkers
from xiaozhi_trio.plugins.speech.asr import AsrOptions, load_asr
from xiaozhi_trio.plugins.speech.models.locate import locate_model
from xiaozhi_trio.plugins.speech.tts import TtsOptions, load_tts
from xiaozhi_trio.plugins.testing.speech import QUESTIONS, RATE, joined, silence, spoken

MIB = 2**20
CHUNK = 960  # 60 ms at 16 kHz, as the uplink delivers it

#: Long replies (each several sentences, some longer than the splitter's limit).
REPLIES = (
    "Once upon a time, in a valley between two tall mountains, there lived a small green dragon called Pip. "
    "Pip was not very good at breathing fire, so the other dragons laughed at him, and he often sat alone by the river. "
    "One cold winter night, the village at the bottom of the valley lost all its candles in a storm. "
    "Pip flew down, took a deep breath, and blew the tiny warm flame that was all he could make. "
    "It was just enough to light one candle, then another, and soon every window in the village was glowing. "
    "From that night on, nobody laughed at Pip again, and the children of the village called him their little lantern.",
    "The city had 1,234,567 residents in 2023, up from 987,654 in 1999 and 456,789 in 1975, "
    "while the average rent rose from 1,250 to 3,475 dollars a month over the same 48 years. "
    "Tomorrow the high will be 27 degrees at 3:45 in the afternoon, with winds of 12 to 18 kilometres an hour.",
    "Here is what you need for the recipe: two cups of flour, a teaspoon of baking powder, half a teaspoon of "
    "salt, three tablespoons of sugar, one egg, a cup and a quarter of milk and three tablespoons of melted "
    "butter, plus a little oil for the pan and some fresh blueberries or sliced bananas if you like them.",
)


def rss() -> int:
    return int(psutil.Process().memory_info().rss)


def malloc_trim() -> None:
    ctypes.CDLL("libc.so.6").malloc_trim(0)


class PeakSampler:
    """The highest resident memory seen, sampled every ``interval`` seconds in a thread."""

    def __init__(self, interval: float = 0.05) -> None:
        self.peak = rss()
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        process = psutil.Process()
        while not self._stop.wait(self._interval):
            self.peak = max(self.peak, int(process.memory_info().rss))

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss())


def utterances(round_index: int, count: int) -> list[np.ndarray]:
    """``count`` spoken questions for one round; every other round one of them is two or three
    questions joined (5–9 s)."""
    picked = [QUESTIONS[(round_index * count + i) % len(QUESTIONS)] for i in range(count)]
    audio = [spoken(q) for q in picked]
    if round_index % 2 == 1 and count:
        more = 2 + round_index // 2 % 2
        audio[0] = joined(*[part for q in picked[:more] for part in (spoken(q), silence(0.4))])
    return audio


def segments_of(samples: np.ndarray, rule: CutRule) -> list[np.ndarray]:
    """What the recognizer stage decodes of ``samples`` while they are spoken: the segments kept
    and the voiced tail (``SegmentCutter``, fed 60 ms at a time)."""
    cutter = SegmentCutter(rule, RATE)
    padded = joined(samples, silence(0.6))  # the trailing silence before the turn ends
    for start in range(0, len(padded), CHUNK):
        cutter.feed(padded[start : start + CHUNK])
    plan = cutter.finish(padded)
    pieces = [s.samples for s in plan.segments if s.voiced]
    if plan.tail is not None and plan.tail.voiced:
        pieces.append(plan.tail.samples)
    return pieces


def sentences_of(text: str) -> list[str]:
    splitter = SentenceSplitter()
    return [item.text for item in [*splitter.feed(text), *splitter.flush()] if isinstance(item, Sentence)]


@dataclass
class Figures:
    threads: int
    one_run_per_model: bool
    mode: str
    load_seconds: float = math.nan
    loaded: float = math.nan  # MiB after load and warm-up
    runs: list[float] = field(default_factory=list)  # MiB after each run
    peaks: list[float] = field(default_factory=list)
    run_seconds: list[float] = field(default_factory=list)
    longest_segment: float = 0.0  # seconds of audio in one decode
    longest_sentence: int = 0  # characters in one synthesis
    env: dict[str, str] = field(default_factory=dict)


async def one_round(asr, tts, index: int, args: argparse.Namespace, figures: Figures) -> None:
    rule = CutRule()
    decodes: list[np.ndarray] = []
    for samples in utterances(index, args.decodes):
        pieces = [samples] if args.whole else segments_of(samples, rule)
        decodes.extend(pieces)
    figures.longest_segment = max([figures.longest_segment, *(len(p) / RATE for p in decodes)])
    replies = [REPLIES[(index * args.syntheses + i) % len(REPLIES)] for i in range(args.syntheses)]

    async def decode(samples: np.ndarray) -> None:
        await asr.open_stream().finish(PcmChunk(samples, RATE))

    async def speak(text: str) -> None:
        parts = [text] if args.unsplit else sentences_of(text)
        figures.longest_sentence = max([figures.longest_sentence, *(len(p) for p in parts)])
        send, receive = trio.open_memory_channel[PcmChunk](math.inf)
        async with trio.open_nursery() as nursery:
            async def drain() -> None:
                async for _ in receive:
                    pass

            nursery.start_soon(drain)
            with send:
                for part in parts:
                    await tts.synthesize(part, send)

    async with trio.open_nursery() as nursery:
        for samples in decodes:
            nursery.start_soon(decode, samples)
        for text in replies:
            nursery.start_soon(speak, text)


async def main(args: argparse.Namespace) -> Figures:
    workers = CpuWorkers(args.threads, one_run_per_model=not args.overlap)
    figures = Figures(workers.threads, workers.one_run_per_model, "whole" if args.whole else "segments")
    figures.env = {k: v for k, v in os.environ.items() if k.startswith(("MALLOC_", "XIAOZHI_"))}
    with tempfile.TemporaryDirectory() as models:
        started = time.perf_counter()
        asr = await trio.to_thread.run_sync(load_asr, locate_model("moonshine-base-en", Path(models)), workers, AsrOptions())
        tts = await trio.to_thread.run_sync(load_tts, locate_model("piper-en-us-joe", Path(models)), workers, TtsOptions())
        figures.load_seconds = time.perf_counter() - started
        for r in range(args.warm_rounds):  # rounds before the baseline is read (to see what they reach)
            await one_round(asr, tts, 1000 + r, args, figures)
        if args.trim:
            malloc_trim()
        figures.loaded = rss() / MIB
        print(f"loaded and warmed up in {figures.load_seconds:.1f} s: {figures.loaded:,.0f} MiB", flush=True)
        for run in range(args.runs):
            started = time.perf_counter()
            with PeakSampler() as peak:
                for r in range(args.rounds):
                    await one_round(asr, tts, run * args.rounds + r, args, figures)
            if args.trim:
                malloc_trim()
            figures.runs.append(rss() / MIB)
            figures.peaks.append(peak.peak / MIB)
            figures.run_seconds.append(time.perf_counter() - started)
            print(
                f"run {run + 1}: {figures.runs[-1]:,.0f} MiB after ({figures.runs[-1] / figures.loaded - 1:+.1%}), "
                f"peak {figures.peaks[-1]:,.0f} MiB, {figures.run_seconds[-1]:.0f} s",
                flush=True,
            )
    return figures


def report(figures: Figures) -> str:
    runs = " | ".join(f"{m:,.0f}" for m in figures.runs)
    growth = max(figures.runs) / figures.loaded - 1 if figures.runs else math.nan
    head = "| after warm-up | " + " | ".join(f"run {i + 1}" for i in range(len(figures.runs))) + " | peak | growth |"
    rule = "|---:|" + "---:|" * len(figures.runs) + "---:|---:|"
    row = f"| {figures.loaded:,.0f} MiB | {runs} | {max(figures.peaks):,.0f} | {growth:+.1%} |"
    notes = (
        f"{figures.threads} worker threads, one run per model: {figures.one_run_per_model}, decodes of {figures.mode} "
        f"(longest {figures.longest_segment:.1f} s), longest synthesis {figures.longest_sentence} characters; "
        f"load with warm-ups {figures.load_seconds:.1f} s" + (f"; env {figures.env}" if figures.env else "")
    )
    return "\n".join((head, rule, row, "", notes))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=4, help="rounds per run")
    parser.add_argument("--decodes", type=int, default=4, help="utterances per round")
    parser.add_argument("--syntheses", type=int, default=2, help="replies per round")
    parser.add_argument("--threads", type=int, default=None, help="worker threads (default: one per core)")
    parser.add_argument("--overlap", action="store_true", help="let calls on one model overlap (one_run_per_model off)")
    parser.add_argument("--whole", action="store_true", help="decode whole utterances, not the segments cut while speaking")
    parser.add_argument("--unsplit", action="store_true", help="give each reply to the voice whole, not sentence by sentence")
    parser.add_argument("--warm-rounds", type=int, default=0, help="rounds of load before the baseline is read")
    parser.add_argument("--trim", action="store_true", help="malloc_trim(0) after the warm-ups and after each run")
    parser.add_argument("--json", type=Path, default=None, help="save the figures here")
    return parser.parse_args()


if __name__ == "__main__":
    arguments = parse_args()
    result = trio.run(main, arguments)
    print()
    print(report(result))
    if arguments.json is not None:
        arguments.json.write_text(json.dumps(asdict(result), indent=2))

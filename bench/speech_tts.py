"""Text-to-speech figures for a voice: load time, memory, real-time factor, time to first audio.

For each thread count (1 and 2 by default) the voice is loaded afresh and measured on a fixed set
of reply sentences:

* ``load``: building ``sherpa_onnx.OfflineTts`` (the validation child process is run beforehand
  and not counted; it is cached after the first start);
* ``memory``: the process's resident memory growth from loading the voice and synthesizing;
* ``RTF``: synthesis time over audio duration, through the backend (phonemization included);
* ``first audio``: from handing the first sentence of a reply to ``synthesize`` to the first
  chunk out of it (what a device waits for after the agent's first sentence), for a short and a
  long first sentence;
* ``overhead``: the backend (trio, worker thread, channels) against phonemizing and calling
  ``OfflineTts.generate`` directly, on the same sentences in the same run (the voice samples
  noise, so each run differs by a few percent either way).

Run: ``python bench/speech_tts.py [--model piper-en-us-joe] [--threads 1 2] [--repeat 3]``.
"""

from __future__ import annotations

import argparse
import gc
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import sherpa_onnx
import trio
from xiaozhi_trio.pipeline.messages import PcmChunk
from xiaozhi_trio.pipeline.workers import CpuWorkers
from xiaozhi_trio.plugins.speech.models.locate import locate_model
from xiaozhi_trio.plugins.speech.models.validate import validate_model
from xiaozhi_trio.plugins.speech.tts import (
    PHONEME_FAMILIES,
    SherpaTts,
    TtsOptions,
    phoneme_sentences,
    tts_config,
)

SENTENCES = [
    "Sure, here is what I found.",
    "The weather in Shanghai tomorrow will be cloudy, with a high of twenty four degrees.",
    "You might want to take an umbrella in the afternoon, because there is a chance of light rain.",
    "Is there anything else I can help you with?",
]
SHORT_FIRST = "Sure, here is what I found."
LONG_FIRST = (
    "Well, that depends on a few things, like how far you want to go, how much time you have, "
    "and whether you would rather travel by train or by car."
)


def rss() -> int:
    return psutil.Process().memory_info().rss


async def first_audio_and_total(
    tts: SherpaTts, text: str
) -> tuple[float, float, float]:
    """Seconds to the first chunk, seconds to the end, and seconds of audio made."""
    send, receive = trio.open_memory_channel[PcmChunk](math.inf)
    start = time.perf_counter()
    first = None
    seconds = 0.0
    async with trio.open_nursery() as nursery:

        async def run() -> None:
            with send:
                await tts.synthesize(text, send)

        nursery.start_soon(run)
        async for chunk in receive:
            if first is None:
                first = time.perf_counter() - start
            seconds += chunk.duration
    return first or 0.0, time.perf_counter() - start, seconds


def direct_seconds(tts: SherpaTts, text: str) -> float:
    """Wall time of phonemizing (which sherpa-onnx 2.0 needs done for it) and a bare
    ``OfflineTts.generate``, as a program using sherpa-onnx directly would do."""
    start = time.perf_counter()
    config = sherpa_onnx.GenerationConfig()
    if tts.files.family in PHONEME_FAMILIES:
        config.phoneme_codepoints = phoneme_sentences(text, tts._voice, tts._symbols)
    tts._tts.generate(text, config)
    return time.perf_counter() - start


async def measure(
    model: str, threads: int, repeat: int, models_dir: Path
) -> dict[str, float]:
    files = locate_model(model, models_dir)
    validate_model(files)
    gc.collect()
    before = rss()
    start = time.perf_counter()
    engine = sherpa_onnx.OfflineTts(tts_config(files, num_threads=threads))
    load = time.perf_counter() - start
    tts = SherpaTts(
        engine, files, CpuWorkers(1), TtsOptions(model=model, num_threads=threads)
    )
    await first_audio_and_total(tts, "Warm up.")
    busy = audio = 0.0
    backend_total = direct_total = 0.0
    firsts: dict[str, list[float]] = {"short": [], "long": [], "long_total": []}
    for _ in range(repeat):
        for i, sentence in enumerate(SENTENCES):
            # Alternate which goes first, so neither always runs on warmer caches.
            if i % 2:
                direct_total += direct_seconds(tts, sentence)
            _, took, seconds = await first_audio_and_total(tts, sentence)
            busy += took
            audio += seconds
            backend_total += took
            if not i % 2:
                direct_total += direct_seconds(tts, sentence)
        for label, text in (("short", SHORT_FIRST), ("long", LONG_FIRST)):
            first, total, _ = await first_audio_and_total(tts, text)
            firsts[label].append(first)
            if label == "long":
                firsts["long_total"].append(total)
    return {
        "load_s": load,
        "memory_mb": (rss() - before) / 1e6,
        "rtf": busy / audio,
        "first_short_s": statistics.median(firsts["short"]),
        "first_long_s": statistics.median(firsts["long"]),
        "long_total_s": statistics.median(firsts["long_total"]),
        "overhead_pct": 100 * (backend_total - direct_total) / direct_total,
        "sample_rate": tts.sample_rate,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="piper-en-us-joe")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--models-dir", type=Path, default=None, help="default: a temporary folder"
    )
    parser.add_argument(
        "--one", action="store_true", help=argparse.SUPPRESS
    )  # a child: one row
    args = parser.parse_args()
    if args.one:
        r = trio.run(measure, args.model, args.threads[0], args.repeat, args.models_dir)
        print(
            f"{args.threads[0]:>7} {r['load_s']:>7.2f} {r['memory_mb']:>7.0f} {r['rtf']:>6.3f} "
            f"{r['first_short_s']:>13.3f} {r['first_long_s']:>12.3f} {r['long_total_s']:>13.3f} "
            f"{r['overhead_pct']:>8.1f}%",
            flush=True,
        )
        return
    with tempfile.TemporaryDirectory() as tmp:
        models_dir = args.models_dir or Path(tmp)
        print(
            f"model {args.model}, {len(SENTENCES)} sentences x {args.repeat}, {psutil.cpu_count()} cores"
        )
        print(
            f"{'threads':>7} {'load s':>7} {'mem MB':>7} {'RTF':>6} {'1st(short) s':>13} {'1st(long) s':>12} "
            f"{'long whole s':>13} {'overhead':>9}",
            flush=True,
        )
        for threads in args.threads:
            # A fresh process per row, so memory and load time are not blurred by the previous row.
            subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--one",
                    "--model",
                    args.model,
                    "--threads",
                    str(threads),
                    "--repeat",
                    str(args.repeat),
                    "--models-dir",
                    str(models_dir),
                ],
                check=True,
            )


if __name__ == "__main__":
    main()

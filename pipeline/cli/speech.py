"""``xiaozhi-trio transcribe FILE`` and ``xiaozhi-trio say "TEXT" -o FILE``: the configured speech
backends on audio files, without a device.

``transcribe`` reads any format and rate ``soundfile`` reads, mixes to mono, resamples to the
recognizer's rate, lets the configured VAD cut it into utterances (as a live session would) and
prints one line of text per utterance. ``say`` speaks with the configured voice and writes the
audio in the format the output file's extension names (``.wav``, ``.flac``, ``.ogg``...).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import soundfile
import trio

from ..audio.resample import resample
from ..backends import (
    BackendContext,
    ConfigError,
    SpeechRecognizer,
    SpeechSynthesizer,
    VoiceActivityDetector,
)
from ..config import Config, load_config
from ..messages import PcmChunk, SpeechEnded
from ..registry import Plugins
from ..workers import CpuWorkers
from . import add_config_argument, config_path

#: Audio is fed to the VAD in pieces of this length, as a device's packets would arrive.
FEED_SECONDS = 0.1
#: Silence appended at the end of a file so the VAD closes the last utterance.
TAIL_SECONDS = 2.0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    transcribe = subparsers.add_parser(
        "transcribe", help="print the text of the speech in an audio file"
    )
    transcribe.add_argument(
        "file",
        type=Path,
        help="audio file (wav, flac, ogg, mp3...: any rate, any channels)",
    )
    transcribe.add_argument(
        "--no-vad",
        action="store_true",
        help="recognize the whole file as one utterance",
    )
    add_config_argument(transcribe)
    transcribe.set_defaults(func=run_transcribe)
    say = subparsers.add_parser(
        "say", help="speak TEXT with the configured voice into an audio file"
    )
    say.add_argument("text")
    say.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        help="output file; its extension picks the format",
    )
    say.add_argument(
        "--rate",
        type=int,
        default=None,
        help="resample to this rate (default: the voice's own)",
    )
    add_config_argument(say)
    say.set_defaults(func=run_say)


def _context(config: Config) -> BackendContext:
    data_dir = config.server.data_path
    return BackendContext(
        data_dir=data_dir,
        workers=CpuWorkers(config.workers.cpu_threads or None),
        models_dir=config.models.path(data_dir),
    )


def _create(
    plugins: Plugins, config: Config, context: BackendContext, kind: str
) -> Any:
    return plugins.create_backend(kind, config.backend(kind), context)


def read_audio(path: Path) -> PcmChunk:
    """A file as mono float32 at its own rate; a ``ConfigError`` if it cannot be read."""
    try:
        data, rate = soundfile.read(path, dtype="float32", always_2d=True)
    except (OSError, RuntimeError, soundfile.LibsndfileError) as e:
        raise ConfigError(f"cannot read {path} as audio: {e}") from None
    return PcmChunk(
        np.ascontiguousarray(data.mean(axis=1), dtype=np.float32), int(rate)
    )


async def transcribe_audio(
    audio: PcmChunk,
    vad: VoiceActivityDetector | None,
    asr: SpeechRecognizer,
    workers: CpuWorkers,
) -> list[str]:
    """The text of each utterance in ``audio`` (cut by ``vad``; None: all of it as one)."""
    samples = resample(audio.samples, audio.sample_rate, asr.sample_rate)
    if vad is None:
        utterances = [PcmChunk(samples, asr.sample_rate)]
    else:
        if vad.sample_rate != asr.sample_rate:
            raise ConfigError(
                f"the VAD works at {vad.sample_rate} Hz but the recognizer at {asr.sample_rate} Hz"
            )
        stream = vad.open_stream()
        padded = np.concatenate(
            [samples, np.zeros(int(TAIL_SECONDS * asr.sample_rate), dtype=np.float32)]
        )
        step = int(FEED_SECONDS * asr.sample_rate)
        utterances = []
        for start in range(0, len(padded), step):
            for event in await workers.run(stream.feed, padded[start : start + step]):
                if isinstance(event, SpeechEnded):
                    utterances.append(event.audio)
    texts = []
    for utterance in utterances:
        recognition = asr.open_stream()
        text = (await recognition.finish(utterance)).strip()
        if text:
            texts.append(text)
    return texts


async def synthesize_text(tts: SpeechSynthesizer, text: str) -> PcmChunk:
    """All of ``tts``'s audio for ``text``, joined."""
    send, receive = trio.open_memory_channel[PcmChunk](math.inf)
    with send:
        await tts.synthesize(text, send)
    return PcmChunk.join([chunk async for chunk in receive], tts.sample_rate)


def write_audio(path: Path, audio: PcmChunk, rate: int | None = None) -> PcmChunk:
    """Write ``audio`` (resampled to ``rate`` if given) in the format ``path``'s extension names."""
    if rate is not None and rate != audio.sample_rate:
        audio = PcmChunk(resample(audio.samples, audio.sample_rate, rate), rate)
    extension = path.suffix.lstrip(".").upper()
    formats = soundfile.available_formats()
    if extension not in formats:
        raise ConfigError(
            f"cannot write .{extension.lower()} files; use one of: {', '.join(sorted(formats)).lower()}"
        )
    soundfile.write(path, np.clip(audio.samples, -1.0, 1.0), audio.sample_rate)
    return audio


def run_transcribe(args: argparse.Namespace) -> int:
    config = load_config(config_path(args))
    audio = read_audio(args.file)
    plugins = Plugins()
    context = _context(config)
    vad = None if args.no_vad else _create(plugins, config, context, "vad")
    asr = _create(plugins, config, context, "asr")
    texts = trio.run(transcribe_audio, audio, vad, asr, context.workers)
    for text in texts:
        print(text)
    if not texts:
        print(f"(no speech found in {args.file})", file=sys.stderr)
    return 0


def run_say(args: argparse.Namespace) -> int:
    config = load_config(config_path(args))
    if args.rate is not None and not 8000 <= args.rate <= 192000:
        raise ConfigError(f"--rate {args.rate} is not a sample rate (8000 to 192000)")
    context = _context(config)
    tts = _create(Plugins(), config, context, "tts")
    audio = trio.run(synthesize_text, tts, args.text)
    if len(audio.samples) == 0:
        print(
            "the voice made no audio for this text (nothing to say?)", file=sys.stderr
        )
        return 1
    written = write_audio(args.output, audio, args.rate)
    print(f"{args.output}: {written.duration:.2f} s at {written.sample_rate} Hz")
    return 0

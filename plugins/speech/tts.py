"""Text to speech with sherpa-onnx: the ``tts`` backend ``sherpa-onnx``.

Options (the ``[tts]`` table): ``model`` (a catalog name, default ``piper-en-us-joe``), ``speed``
(1.0 = the voice's own pace), ``speaker`` (speaker id of a multi-speaker model), ``num_threads``
(onnxruntime threads for one synthesis; 1 is fastest on small machines), ``voice`` (the espeak-ng
voice that phonemizes text for Piper/VITS-espeak models; default: the model's own),
``noise_scale`` and ``noise_scale_w`` (Piper/VITS: how much random variation goes into the sound
and into the timing, default sherpa-onnx's 0.667 and 0.8, which are Piper's own; Matcha takes
``noise_scale`` only). VITS voices sample noise, so the same text sounds a little different every
time; with both scales at 0 the voice is deterministic (same text, same audio), a little flatter.

Families: Piper and espeak-based VITS voices get their phonemes from ``piper-phonemize`` (sherpa-
onnx 2.0 has no espeak-ng of its own, and without phonemes it returns empty audio); lexicon-based
models (Matcha + vocoder, VITS/MeloTTS zh-en, Kokoro) take the text itself.

Audio is handed on while it is made: sherpa-onnx calls back once per sentence (and this module
cuts long sentences at commas, and any part longer than ``MAX_PART`` phonemes between words), the
callback passes each piece from the worker thread to the event loop, and a barge-in stops the
synthesis at the next piece.
"""

from __future__ import annotations

import logging
import math
import threading
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import sherpa_onnx
import trio
from xiaozhi_trio.pipeline.backends import BackendContext, BackendError, ConfigError
from xiaozhi_trio.pipeline.hookspecs import hookimpl
from xiaozhi_trio.pipeline.messages import PcmChunk, Samples
from xiaozhi_trio.pipeline.tables import Between, NonEmptyStr, parse_table
from xiaozhi_trio.pipeline.workers import CpuWorkers

from .malloc import fix_mmap_threshold
from .models import ModelFiles, ModelInvalid
from .models.locate import locate_model
from .models.validate import validate_model

log = logging.getLogger(__name__)

DEFAULT_MODEL = "piper-en-us-joe"
#: Families whose text is phonemized here with espeak-ng (through piper-phonemize).
PHONEME_FAMILIES = ("piper",)
#: A sentence longer than this many phonemes is cut at clause punctuation, so that its first
#: part can be heard while the rest is synthesized (about 1.5 s of speech).
LONG_SENTENCE = 120
#: ...into parts of at least this many phonemes (a shorter part sounds clipped)...
MIN_PART = 40
#: ...and never longer than this: a part without a clause mark is cut between words (a number
#: spelled out can be 200 phonemes without one). The voice's working memory grows with the
#: longest part it has made and is kept for good, so this bounds it (see ``warm_up``).
MAX_PART = 120
_CLAUSE_MARKS = frozenset(",;:")
_WORD_BREAK = " "

#: Spoken at load (see ``warm_up``): more than ``MAX_PART`` phonemes without a clause mark.
WARM_UP_TEXT = (
    "The quick brown fox jumps over the lazy dog while the old farmer walks slowly home across the hills "
    "and the tired children sing softly by the warm kitchen fire before they go to bed."
)
#: The warm-up speaks more slowly than the voice's speed by this factor, so its audio is longer
#: than any part of ``MAX_PART`` phonemes comes out with the voice's random timing.
WARM_UP_SLOWER = 1.3

#: espeak-ng keeps global state: one phonemization at a time in the whole process.
_espeak_lock = threading.Lock()


@dataclass(frozen=True)
class TtsOptions:
    model: NonEmptyStr = DEFAULT_MODEL
    speed: Annotated[float, Between(0.25, 4.0)] = 1.0
    speaker: Annotated[int, Between(0)] = 0
    num_threads: Annotated[int, Between(1, 16)] = 1
    voice: str = ""
    #: None: sherpa-onnx's default for the family.
    noise_scale: Annotated[float, Between(0.0, 2.0)] | None = None
    noise_scale_w: Annotated[float, Between(0.0, 2.0)] | None = None

    @classmethod
    def parse(cls, options: Mapping[str, Any]) -> TtsOptions:
        """Check the ``[tts]`` options; a ``ConfigError`` names any wrong one."""
        return parse_table("tts", cls, options)


def _joined(files: Mapping[str, Path], prefix: str) -> str:
    """Comma-joined paths of the roles starting with ``prefix`` (sherpa-onnx's list syntax)."""
    return ",".join(
        str(path) for role, path in sorted(files.items()) if role.startswith(prefix)
    )


def tts_config(
    files: ModelFiles, *, num_threads: int = 1, options: TtsOptions | None = None
) -> sherpa_onnx.OfflineTtsConfig:
    """The sherpa-onnx configuration for a TTS model, by family (with ``options``' noise scales)."""
    f = files.files
    noise = _noise_scales(files, options or TtsOptions())
    common = {
        "data_dir": str(f.get("data_dir", "")),
        "dict_dir": str(f.get("dict_dir", "")),
    }
    lexicon = _joined(f, "lexicon")
    try:
        if files.family in ("piper", "vits"):
            model = sherpa_onnx.OfflineTtsModelConfig(
                vits=sherpa_onnx.OfflineTtsVitsModelConfig(
                    model=str(f["model"]),
                    lexicon=lexicon,
                    tokens=str(f["tokens"]),
                    **common,
                    **noise,
                ),
                num_threads=num_threads,
            )
        elif files.family == "matcha":
            model = sherpa_onnx.OfflineTtsModelConfig(
                matcha=sherpa_onnx.OfflineTtsMatchaModelConfig(
                    acoustic_model=str(f["acoustic_model"]),
                    vocoder=str(f["vocoder"]),
                    lexicon=lexicon,
                    tokens=str(f["tokens"]),
                    **common,
                    **noise,
                ),
                num_threads=num_threads,
            )
        elif files.family == "kokoro":
            model = sherpa_onnx.OfflineTtsModelConfig(
                kokoro=sherpa_onnx.OfflineTtsKokoroModelConfig(
                    model=str(f["model"]),
                    voices=str(f["voices"]),
                    tokens=str(f["tokens"]),
                    lexicon=lexicon,
                    **common,
                ),
                num_threads=num_threads,
            )
        else:
            raise ConfigError(
                f"model {files.name!r} is a {files.family} model, not a text-to-speech voice"
            )
    except KeyError as e:
        raise ModelInvalid(f"model {files.name!r} has no {e.args[0]} file") from None
    # One sentence per batch: the callback then fires per sentence, which is what streams.
    return sherpa_onnx.OfflineTtsConfig(
        model=model, rule_fsts=_joined(f, "rule_fst"), max_num_sentences=1
    )


def _noise_scales(files: ModelFiles, options: TtsOptions) -> dict[str, float]:
    """The noise-scale arguments of the family's model config; ``ConfigError`` for a scale the
    family does not have."""
    takes = {"piper": ("noise_scale", "noise_scale_w"), "vits": ("noise_scale", "noise_scale_w"),
             "matcha": ("noise_scale",)}.get(files.family, ())
    scales = {key: getattr(options, key) for key in ("noise_scale", "noise_scale_w") if getattr(options, key) is not None}
    for key in scales:
        if key not in takes:
            raise ConfigError(f"[tts] {key}: model {files.name!r} ({files.family}) has no such setting; remove it")
    return scales


def read_token_symbols(path: Path) -> frozenset[str]:
    """The symbols of a ``tokens.txt`` (``symbol id`` per line; the symbol may be a space)."""
    symbols = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        symbol, _, ident = line.rpartition(" ")
        if ident.strip().isdigit():
            symbols.add(symbol)
    return frozenset(symbols)


def split_long(
    phonemes: list[str], *, long: int = LONG_SENTENCE, min_part: int = MIN_PART, max_part: int = MAX_PART
) -> list[list[str]]:
    """Cut one sentence's phonemes after clause marks into parts, each at least ``min_part`` long
    (the last part may be merged into the one before), then cut any part longer than
    ``max_part`` between words into parts of ``min_part`` to ``max_part``. Sentences up to
    ``long`` stay whole."""
    if not long <= max_part or not 2 * min_part <= max_part:
        raise ValueError(f"need long <= max_part and 2 * min_part <= max_part, not {long}, {min_part}, {max_part}")
    if len(phonemes) <= long:
        return [phonemes]
    parts: list[list[str]] = []
    current: list[str] = []
    for symbol in phonemes:
        current.append(symbol)
        if symbol in _CLAUSE_MARKS and len(current) >= min_part:
            parts.append(current)
            current = []
    if current:
        if parts and len(current) < min_part:
            parts[-1].extend(current)
        else:
            parts.append(current)
    return [piece for part in parts for piece in _capped(part, min_part, max_part)]


def _capped(part: list[str], min_part: int, max_part: int) -> list[list[str]]:
    """``part`` in pieces of at most ``max_part``, cut after a word break as near as there is to
    equal pieces, each at least ``min_part`` long (``part`` is at least that long)."""
    pieces = []
    while len(part) > max_part:
        ideal = math.ceil(len(part) / math.ceil(len(part) / max_part))
        # Cut after position ``cut - 1``; both sides keep at least ``min_part``.
        lowest, highest = min_part, min(max_part, len(part) - min_part)
        breaks = [i + 1 for i in range(lowest - 1, highest) if part[i] == _WORD_BREAK]
        cut = min(breaks, key=lambda c: abs(c - ideal)) if breaks else highest
        pieces.append(part[:cut])
        part = part[cut:]
    pieces.append(part)
    return pieces


def _is_speech_symbol(symbol: str) -> bool:
    return not (symbol.isspace() or unicodedata.category(symbol[0]).startswith("P"))


def phoneme_sentences(
    text: str, voice: str, symbols: frozenset[str]
) -> list[list[int]]:
    """Code points per sentence part for a Piper voice; sentences with nothing to say are dropped."""
    from piper_phonemize import phonemize_espeak

    with _espeak_lock:
        sentences = phonemize_espeak(text, voice)
    result = []
    for sentence in sentences:
        known = [p for p in sentence if p in symbols]
        if not any(_is_speech_symbol(p) for p in known):
            continue
        result.extend([ord(p) for p in part] for part in split_long(known))
    return result


def has_words(text: str) -> bool:
    """Whether ``text`` has anything a lexicon model could say (letters, digits or CJK)."""
    return any(ch.isalnum() for ch in text)


class SherpaTts:
    """One loaded voice, shared by every session (sherpa-onnx's ``generate`` is re-entrant)."""

    def __init__(
        self,
        tts: sherpa_onnx.OfflineTts,
        files: ModelFiles,
        workers: CpuWorkers,
        options: TtsOptions,
    ):
        self._tts = tts
        self.files = files
        self._workers = workers
        self._speed = options.speed
        self._speaker = options.speaker
        self.sample_rate: int = tts.sample_rate
        self._voice = options.voice or tts.lang or "en-us"
        self._symbols = (
            read_token_symbols(files.files["tokens"])
            if files.family in PHONEME_FAMILIES
            else frozenset()
        )

    def _generation_config(self, text: str) -> sherpa_onnx.GenerationConfig | None:
        if not has_words(text):
            return None  # (espeak would read lone punctuation aloud: "!?" -> "exclamation")
        config = sherpa_onnx.GenerationConfig()
        config.sid = self._speaker
        config.speed = self._speed
        if self.files.family in PHONEME_FAMILIES:
            codepoints = phoneme_sentences(text, self._voice, self._symbols)
            if not codepoints:
                return None
            config.phoneme_codepoints = codepoints
        return config

    def generate(self, text: str, on_samples: Callable[[Samples], bool]) -> int:
        """Synthesize ``text`` in the calling thread, giving each piece to ``on_samples`` as it is
        made; ``on_samples`` returns False to stop. Returns the number of samples made."""
        config = self._generation_config(text)
        if config is None:
            return 0
        made = 0

        def callback(samples: Any, progress: float) -> int:
            nonlocal made
            piece = np.asarray(samples, dtype=np.float32).copy()
            made += len(piece)
            return 1 if (len(piece) == 0 or on_samples(piece)) else 0

        audio = self._tts.generate(text, config, callback)
        if audio.sample_rate == 0 and made == 0:
            log.info("the voice made no audio for %r", text[:80])
        return made

    async def synthesize(
        self, text: str, send: trio.MemorySendChannel[PcmChunk]
    ) -> None:
        """Speak ``text`` into ``send`` at ``sample_rate``, a piece at a time (does not close it)."""
        text = text.strip()
        if not text:
            return
        pieces_send, pieces_receive = trio.open_memory_channel[Samples](math.inf)

        def hand_over(samples: Samples) -> bool:
            # Runs in the worker thread; a closed channel means the turn was cancelled.
            try:
                trio.from_thread.run_sync(pieces_send.send_nowait, samples)
            except (
                trio.ClosedResourceError,
                trio.BrokenResourceError,
                trio.RunFinishedError,
            ):
                return False
            return True

        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._forward, pieces_receive, send)
            with pieces_send:
                try:
                    await self._workers.run(self.generate, text, hand_over, model=self._tts)
                except (
                    RuntimeError
                ) as e:  # sherpa-onnx reports a failed synthesis this way
                    raise BackendError(
                        f"speech synthesis failed: {e}", kind="tts"
                    ) from e

    async def _forward(
        self,
        pieces: trio.MemoryReceiveChannel[Samples],
        send: trio.MemorySendChannel[PcmChunk],
    ) -> None:
        with pieces:
            async for samples in pieces:
                await send.send(PcmChunk(samples, self.sample_rate))


def load_tts(files: ModelFiles, workers: CpuWorkers, options: TtsOptions) -> SherpaTts:
    """Validate ``files`` in a subprocess, then load the voice into this process."""
    validate_model(files)
    fix_mmap_threshold()  # before the first large blocks (see ``malloc``)
    config = tts_config(files, num_threads=options.num_threads, options=options)
    tts = sherpa_onnx.OfflineTts(config)
    if options.speaker >= max(1, tts.num_speakers):
        raise ConfigError(
            f"[tts] speaker {options.speaker} does not exist: {files.name} has {tts.num_speakers} speaker(s)"
        )
    voice = SherpaTts(tts, files, workers, options)
    warm_up(voice)
    return voice


def warm_up_codepoints(voice: SherpaTts) -> list[int]:
    """What ``warm_up`` speaks: the first ``MAX_PART`` phonemes of ``WARM_UP_TEXT``."""
    from piper_phonemize import phonemize_espeak

    with _espeak_lock:
        sentences = phonemize_espeak(WARM_UP_TEXT, voice._voice)
    phonemes = [p for sentence in sentences for p in sentence if p in voice._symbols]
    return [ord(p) for p in phonemes[:MAX_PART]]


def warm_up(voice: SherpaTts) -> None:
    """Speak once before serving. onnxruntime keeps a voice's working memory for good and grows
    it with the longest part it has made (phonemes in, audio out), so a Piper voice speaks the
    longest part it will ever be given (``MAX_PART`` phonemes), a little slower than its speed
    (``WARM_UP_SLOWER``) so the audio is longer than any such part makes: memory is at its
    working size from the start and stays flat under load (docs/benchmarks.md)."""
    if voice.files.family not in PHONEME_FAMILIES:
        return
    config = sherpa_onnx.GenerationConfig()
    config.sid = voice._speaker
    config.speed = voice._speed / WARM_UP_SLOWER
    config.phoneme_codepoints = [warm_up_codepoints(voice)]
    voice._tts.generate(WARM_UP_TEXT, config, lambda samples, progress: 1)


def create_tts(context: BackendContext, options: Mapping[str, Any]) -> SherpaTts:
    """The ``sherpa-onnx`` TTS factory."""
    parsed = TtsOptions.parse(options)
    files = locate_model(parsed.model, context.models_dir)
    if files.role != "tts":
        raise ConfigError(
            f"[tts] model {parsed.model!r} is a {files.role} model, not a voice"
        )
    return load_tts(files, context.workers, parsed)


@hookimpl
def xiaozhi_register_backends(registry: Any) -> None:
    registry.add(
        "tts",
        "sherpa-onnx",
        create_tts,
        description="local speech synthesis with sherpa-onnx (Piper, VITS/MeloTTS, Matcha, Kokoro)",
    )

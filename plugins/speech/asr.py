"""Speech recognition with sherpa-onnx: the ``asr`` backend ``sherpa-onnx``.

Options (the ``[asr]`` table): ``model`` (a catalog name, default ``moonshine-base-en``),
``num_threads`` (onnxruntime threads per decode), ``language`` (SenseVoice: auto, zh, en, ja, ko,
yue; Whisper: a Whisper language code; other families take none), ``max_segment_seconds`` (longer
utterances are cut at their quietest points and decoded in pieces), ``max_batch`` (utterances
decoded together at most; default 8 for SenseVoice and Paraformer, 1 for the others),
``decode_while_speaking`` (offline models: the recognizer stage decodes an utterance in segments
cut at gaps between words while the user speaks, so only the last is left at the end; default on).

Offline families (Moonshine, SenseVoice, Paraformer, Whisper) decode the whole utterance in
``finish``. Each utterance is first trimmed of long silence at its ends and cut into pieces of at
most ``max_segment_seconds``; the pieces of the sessions waiting at that moment are decoded in one
``decode_streams`` call (see ``batching``). sherpa-onnx really batches only SenseVoice and
Paraformer (padded features through one model run), one batch at a time; for Moonshine and Whisper it
decodes the streams one after the other, so a batch would only make everyone wait for the last
utterance: their batches hold one utterance, one at a time by default (``[workers]
one_run_per_model``: overlapping runs of one model cost onnxruntime memory for good), else as many
as there are CPU workers, so every core decodes when several sessions finish together. Streaming families
(zipformer and paraformer online models) decode while the user speaks, so ``accept`` returns
partial text and ``finish`` only has the last few hundred milliseconds left to do.

Attention decoders (Moonshine, Whisper) sometimes loop, repeating a phrase until their length
limit. The final text of each piece is therefore cut to one copy of a repeated phrase and to the
words its duration can hold (``transcript_guard``), so a loop never reaches the agent.

Moonshine base-en (int8) sometimes returns no text at all for perfectly clear speech: it depends
on how the audio lines up with its frames, and always happens after about a second of leading
silence. So leading silence is trimmed, and a piece that comes back empty is decoded once or twice
more with a few milliseconds of silence put in front.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
import sherpa_onnx
import soundfile
import soxr

from xiaozhi_trio.pipeline.backends import BackendContext, BackendError, ConfigError
from xiaozhi_trio.pipeline.hookspecs import hookimpl
from xiaozhi_trio.pipeline.messages import PcmChunk, Samples
from xiaozhi_trio.pipeline.tables import Between, NonEmptyStr, parse_table
from xiaozhi_trio.pipeline.workers import CpuWorkers

from .batching import Batcher
from .malloc import fix_mmap_threshold
from .models import ModelFiles, ModelInvalid
from .models.catalog import get_entry
from .models.locate import locate_model
from .models.moonshine import sample_speech
from .models.validate import validate_model
from .pieces import join_texts, speech_pieces
from .transcript_guard import guard_transcript

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
DEFAULT_MODEL = "moonshine-base-en"
OFFLINE_FAMILIES = ("moonshine", "sense_voice", "paraformer", "whisper")
STREAMING_FAMILIES = ("zipformer_streaming", "paraformer_streaming")
SENSE_VOICE_LANGUAGES = ("auto", "zh", "en", "ja", "ko", "yue")
#: Families that sherpa-onnx decodes as one batch (the others: stream after stream).
BATCHING_FAMILIES = ("sense_voice", "paraformer")
BATCH_SIZE = 8
#: Silence put in front of a Moonshine piece that came back empty, tried in this order (samples).
RETRY_SHIFTS = {"moonshine": (128, 256)}
#: Zeros after the end of a streaming utterance, so the model flushes its last frames.
STREAMING_TAIL_SECONDS = 0.66


@dataclass(frozen=True)
class AsrOptions:
    model: NonEmptyStr = DEFAULT_MODEL
    num_threads: Annotated[int, Between(1, 16)] = 1
    language: str = ""
    max_segment_seconds: Annotated[float, Between(2, 60)] = 15.0
    #: None: ``BATCH_SIZE`` for the families in ``BATCHING_FAMILIES``, else 1.
    max_batch: Annotated[int, Between(1, 64)] | None = None
    #: Offline models: decode an utterance in segments while the user speaks (docs/speech.md).
    decode_while_speaking: bool = True

    @classmethod
    def parse(cls, options: Mapping[str, Any]) -> AsrOptions:
        """Check the ``[asr]`` options; a ``ConfigError`` names any wrong one."""
        return parse_table("asr", cls, options)


# --------------------------------------------------------------------------------------------
# Building the recognizer: sherpa-onnx's public constructors, with arguments by family
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recipe:
    """How to build a model's recognizer: one of sherpa-onnx's ``from_*`` constructors and its
    arguments (kept apart so they can be checked without loading anything)."""

    build: Callable[..., Any]
    kwargs: Mapping[str, Any]
    streaming: bool

    def load(self) -> Any:
        return self.build(**self.kwargs)


def _language_for(files: ModelFiles, language: str) -> str:
    if files.family == "sense_voice":
        if language and language not in SENSE_VOICE_LANGUAGES:
            known = ", ".join(SENSE_VOICE_LANGUAGES)
            raise ConfigError(f"[asr] language {language!r} is not one SenseVoice knows; use one of {known}")
        return language or "auto"
    if files.family == "whisper":
        if language and not (language.isascii() and language.isalpha() and 2 <= len(language) <= 3):
            raise ConfigError(f"[asr] language {language!r} is not a Whisper language code (en, zh, de...)")
        # A model for one language gets that one; a multilingual model detects it if unset.
        return language or (files.language if "," not in files.language else "")
    if language:
        raise ConfigError(f"[asr] model {files.name!r} ({files.family}) takes no language option; remove it")
    return ""


def recognizer_recipe(files: ModelFiles, *, num_threads: int = 1, language: str = "") -> Recipe:
    """The sherpa-onnx constructor and arguments for an ASR model, by family."""
    if files.role != "asr":
        raise ConfigError(f"[asr] model {files.name!r} is a {files.role} model, not a speech recognizer")
    lang = _language_for(files, language)
    f = {role: str(path) for role, path in files.files.items()}
    offline, online = sherpa_onnx.OfflineRecognizer, sherpa_onnx.OnlineRecognizer
    try:
        match files.family:
            case "moonshine":
                args = {"encoder": f["encoder"], "decoder": f["decoder"], "tokens": f["tokens"]}
                return Recipe(offline.from_moonshine_v2, {**args, "num_threads": num_threads}, False)
            case "sense_voice":
                args = {"model": f["model"], "tokens": f["tokens"], "language": lang, "use_itn": True}
                return Recipe(offline.from_sense_voice, {**args, "num_threads": num_threads}, False)
            case "paraformer":
                args = {"paraformer": f["model"], "tokens": f["tokens"]}
                return Recipe(offline.from_paraformer, {**args, "num_threads": num_threads}, False)
            case "whisper":
                args = {"encoder": f["encoder"], "decoder": f["decoder"], "tokens": f["tokens"], "language": lang}
                return Recipe(offline.from_whisper, {**args, "num_threads": num_threads}, False)
            case "zipformer_streaming":
                args = {"encoder": f["encoder"], "decoder": f["decoder"], "joiner": f["joiner"], "tokens": f["tokens"]}
                return Recipe(online.from_transducer, {**args, "num_threads": num_threads}, True)
            case "paraformer_streaming":
                args = {"encoder": f["encoder"], "decoder": f["decoder"], "tokens": f["tokens"]}
                return Recipe(online.from_paraformer, {**args, "num_threads": num_threads}, True)
    except KeyError as e:
        raise ModelInvalid(f"model {files.name!r} ({files.family}) has no {e.args[0]} file") from None
    families = ", ".join(OFFLINE_FAMILIES + STREAMING_FAMILIES)
    raise ConfigError(f"[asr] model {files.name!r} is a {files.family} model; the recognizer takes {families}")


def to_sample_rate(chunk: PcmChunk, sample_rate: int = SAMPLE_RATE) -> Samples:
    """``chunk``'s samples at ``sample_rate`` (resampled if needed), mono float32."""
    samples = np.asarray(chunk.samples, dtype=np.float32)
    if samples.ndim != 1:
        raise BackendError(f"recognizer input must be mono audio, not shape {samples.shape}", kind="asr_input")
    if chunk.sample_rate != sample_rate and len(samples):
        samples = soxr.resample(samples, chunk.sample_rate, sample_rate).astype(np.float32, copy=False)
    return samples


# --------------------------------------------------------------------------------------------
# The backend
# --------------------------------------------------------------------------------------------


class SherpaAsr:
    """One loaded recognizer, shared by every session; each utterance opens a stream."""

    sample_rate = SAMPLE_RATE

    def __init__(self, recognizer: Any, files: ModelFiles, workers: CpuWorkers, options: AsrOptions) -> None:
        self.recognizer = recognizer
        self.files = files
        self.workers = workers
        self.options = options
        self.streaming = files.family in STREAMING_FAMILIES
        #: The recognizer stage may decode an utterance in segments cut while the user speaks.
        self.decodes_segments = not self.streaming and options.decode_while_speaking
        self._retry_shifts = RETRY_SHIFTS.get(files.family, ())
        batch = options.max_batch or self.default_batch(files.family)
        # Batches of one gain nothing from waiting for each other: run as many at once as the
        # pool lets calls on one model run (one per worker, or one with one_run_per_model).
        self.batcher: Batcher[list[Samples], list[str]] = Batcher(
            self.decode_batch, workers, max_batch=batch, parallel=workers.parallel_per_model if batch == 1 else 1, model=recognizer
        )

    @staticmethod
    def default_batch(family: str) -> int:
        return BATCH_SIZE if family in BATCHING_FAMILIES else 1

    def open_stream(self) -> OfflineRecognition | StreamingRecognition:
        return StreamingRecognition(self) if self.streaming else OfflineRecognition(self)

    # ---- offline: runs in a worker thread, on fresh streams made here ----

    def pieces_of(self, samples: Samples) -> list[Samples]:
        """What ``finish`` decodes of an utterance: its speech in pieces (``speech_pieces``)."""
        return [
            np.concatenate([samples[start:stop], np.zeros(silence, np.float32)]) if silence else samples[start:stop]
            for start, stop, silence in speech_pieces(samples, self.options.max_segment_seconds)
        ]

    def decode_batch(self, utterances: list[list[Samples]]) -> list[list[str]]:
        """Decode every piece of every utterance in one ``decode_streams`` call."""
        pieces = [piece for utterance in utterances for piece in utterance]
        texts = self._decode_pieces(pieces)
        for shift in self._retry_shifts:
            empty = [i for i, text in enumerate(texts) if not text]
            if not empty:
                break
            silence = np.zeros(shift, dtype=np.float32)
            again = self._decode_pieces([np.concatenate([silence, pieces[i]]) for i in empty])
            for i, text in zip(empty, again, strict=True):
                texts[i] = text
        texts = [_guarded(text, len(piece) / SAMPLE_RATE) for text, piece in zip(texts, pieces, strict=True)]
        result, position = [], 0
        for utterance in utterances:
            result.append(texts[position : position + len(utterance)])
            position += len(utterance)
        return result

    def _decode_pieces(self, pieces: list[Samples]) -> list[str]:
        streams = []
        for piece in pieces:
            stream = self.recognizer.create_stream()
            stream.accept_waveform(SAMPLE_RATE, piece)
            streams.append(stream)
        try:
            self.recognizer.decode_streams(streams)
        except RuntimeError as e:  # sherpa-onnx reports a failed decode this way
            raise BackendError(f"speech recognition failed: {e}", kind="asr") from e
        return [stream.result.text.strip() for stream in streams]

    # ---- streaming: runs in a worker thread, on the session's own stream ----

    def feed_online(self, stream: Any, samples: Samples, final: bool) -> str:
        """Give ``samples`` to an online stream, decode what is ready, return the text so far."""
        if len(samples):
            stream.accept_waveform(SAMPLE_RATE, samples)
        if final:
            stream.accept_waveform(SAMPLE_RATE, np.zeros(round(STREAMING_TAIL_SECONDS * SAMPLE_RATE), np.float32))
            stream.input_finished()
        while self.recognizer.is_ready(stream):
            self.recognizer.decode_stream(stream)
        return str(self.recognizer.get_result(stream)).strip()


class OfflineRecognition:
    """One utterance for an offline model: nothing happens until ``finish``."""

    def __init__(self, asr: SherpaAsr) -> None:
        self._asr = asr

    async def accept(self, audio: PcmChunk) -> str | None:
        """Offline models have no partial text."""
        return None

    async def finish(self, utterance: PcmChunk) -> str:
        """Decode the whole utterance (batched with other sessions' utterances) and return its text."""
        pieces = self._asr.pieces_of(to_sample_rate(utterance))
        if not pieces:
            return ""
        texts = await self._asr.batcher.decode(pieces)
        return join_texts(texts)


class StreamingRecognition:
    """One utterance for a streaming model. ``accept`` gets consecutive pieces of the utterance
    from its start; ``finish`` decodes whatever of the utterance was not accepted yet."""

    def __init__(self, asr: SherpaAsr) -> None:
        self._asr = asr
        self._stream: Any = None
        self._fed = 0
        self._partial = ""
        #: Set while a decode runs; left set if it was cancelled, since the abandoned worker
        #: thread may still be using the stream. Partial results then stop; ``finish`` starts over.
        self._broken = False

    async def accept(self, audio: PcmChunk) -> str | None:
        """Decode more of the utterance; return the text so far if it changed."""
        samples = to_sample_rate(audio)
        if self._broken or not len(samples):
            return None
        if self._stream is None:
            self._stream = self._asr.recognizer.create_stream()
        self._broken = True
        text = await self._asr.workers.run(self._asr.feed_online, self._stream, samples, False, model=self._asr.recognizer)
        self._broken = False
        self._fed += len(samples)
        if text and text != self._partial:
            self._partial = text
            return text
        return None

    async def finish(self, utterance: PcmChunk) -> str:
        """The utterance is over: decode the rest and return the final text."""
        samples = to_sample_rate(utterance)
        if self._broken or self._stream is None:
            stream, fed = self._asr.recognizer.create_stream(), 0
        else:
            stream, fed = self._stream, self._fed
        # Whatever happens next, this object starts a new utterance afterwards.
        self._stream, self._fed, self._partial, self._broken = None, 0, "", False
        text = await self._asr.workers.run(self._asr.feed_online, stream, samples[fed:], True, model=self._asr.recognizer)
        return _guarded(text, len(samples) / SAMPLE_RATE)


def _guarded(text: str, seconds: float) -> str:
    """``text`` without decoder loops and no longer than ``seconds`` of speech (logged when cut)."""
    guarded = guard_transcript(text, seconds)
    if guarded != text:
        log.warning("the recognizer ran on (%.1f s of audio): %r cut to %r", seconds, text[:300], guarded)
    return guarded


def load_asr(files: ModelFiles, workers: CpuWorkers, options: AsrOptions) -> SherpaAsr:
    """Validate ``files`` in a subprocess, then load the recognizer into this process and warm it
    up, so the first user does not wait for onnxruntime's first-run set-up."""
    recipe = recognizer_recipe(files, num_threads=options.num_threads, language=options.language)
    validate_model(files)
    fix_mmap_threshold()  # before the first large blocks (see ``malloc``)
    asr = SherpaAsr(recipe.load(), files, workers, options)
    warm_up(asr)
    return asr


def warm_up(asr: SherpaAsr) -> None:
    """Decode once before serving. Moonshine decodes the 10 s of speech that ships with it: its
    working memory grows with the audio and the words it writes and is kept for good, so the
    warm-up takes it near its working size now, and memory stays flat under load afterwards
    (docs/benchmarks.md). Other models decode half a second of faint noise."""
    noise = np.random.default_rng(0).normal(0.0, 0.01, SAMPLE_RATE // 2).astype(np.float32)
    if asr.streaming:
        asr.feed_online(asr.recognizer.create_stream(), noise, True)
        return
    speech = sample_speech() if asr.files.family == "moonshine" else None
    if speech is None:
        asr._decode_pieces([noise])
        return
    samples, rate = soundfile.read(speech, dtype="float32")
    asr._decode_pieces([to_sample_rate(PcmChunk(samples if samples.ndim == 1 else samples[:, 0], rate))])


def create_asr(context: BackendContext, options: Mapping[str, Any]) -> SherpaAsr:
    """The ``sherpa-onnx`` ASR factory."""
    parsed = AsrOptions.parse(options)
    if (entry := get_entry(parsed.model)).role != "asr":  # before preparing anything
        raise ConfigError(f"[asr] model {parsed.model!r} is a {entry.role} model, not a speech recognizer")
    files = locate_model(parsed.model, context.models_dir)
    return load_asr(files, context.workers, parsed)


@hookimpl
def xiaozhi_register_backends(registry: Any) -> None:
    registry.add(
        "asr", "sherpa-onnx", create_asr,
        description="local speech recognition with sherpa-onnx (Moonshine, SenseVoice, Paraformer, Whisper, "
        "streaming zipformer/paraformer)",
    )

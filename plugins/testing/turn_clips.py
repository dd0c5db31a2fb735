"""Utterances for turn-taking tests and the bench: complete questions, and questions broken off
mid-sentence by a pause.

An incomplete utterance is made from a whole sentence written with a comma where the speaker
pauses ("I would like to know, the weather in Shanghai."): the voice reads the comma with the
rising, unfinished intonation a person has when pausing to think. The clip is cut at that comma's
silence and the silence stretched to the pause wanted, so what comes before the pause sounds
unfinished, as it would in life. Piper (the project's own English voice) and espeak-ng (English and
Mandarin) make the speech; both are deterministic. Audio is mono float32 at 16 kHz.
"""

from __future__ import annotations

import functools
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
#: Sentences with a comma where the speaker stops to think; the part before it is unfinished.
BROKEN_EN = (
    "I would like to know, the weather in Shanghai.",
    "I was wondering, if you could help me.",
    "Tell me about, the history of Rome.",
    "What do you think about, the new phone?",
    "I need to buy, some milk and eggs.",
    "Could you turn on the, living room lights?",
    "Please play some music by, the Beatles.",
    "How long does it take to get to, the airport?",
)
BROKEN_ZH = (
    "你能不能，帮我定一个闹钟。",
    "请你帮我，给妈妈打个电话。",
    "我想听，一首轻松的音乐。",
    "今天的天气，怎么样？",
    "帮我查一下，明天去北京的火车。",
    "如果明天下雨的话，我们就不去了。",
)

#: Below this level (RMS over 10 ms) audio counts as a gap between words.
_GAP_LEVEL = 0.01
_STEP = RATE // 100


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


def longest_gap(samples: np.ndarray) -> tuple[int, int]:
    """(start, end) of the longest quiet stretch inside ``samples`` (not at its ends)."""
    frames = len(samples) // _STEP
    level = np.sqrt(np.mean(samples[: frames * _STEP].reshape(frames, _STEP) ** 2, axis=1))
    quiet = level < _GAP_LEVEL
    best, start = (0, 0), None
    for index, is_quiet in enumerate(quiet):
        if is_quiet and start is None:
            start = index
        elif not is_quiet and start is not None:
            if start > 0 and index - start > best[1] - best[0]:
                best = (start, index)
            start = None
    if best == (0, 0):
        raise ValueError("no pause inside the utterance")
    return best[0] * _STEP, best[1] * _STEP


def broken_off(text: str, language: str, voice: str, samples: np.ndarray, pause_seconds: float) -> Utterance:
    """The utterance with its comma's silence stretched to ``pause_seconds``."""
    start, end = longest_gap(samples)
    pause = round(pause_seconds * RATE)
    audio = np.concatenate([samples[:start], np.zeros(pause, np.float32), samples[end:]])
    return Utterance(text, language, voice, audio, start, pause)


@functools.cache
def _piper() -> object:
    import tempfile

    from xiaozhi_trio.pipeline.backends import BackendContext
    from xiaozhi_trio.pipeline.workers import CpuWorkers
    from xiaozhi_trio.plugins.speech.tts import create_tts

    folder = Path(tempfile.mkdtemp(prefix="xiaozhi-turn-clips-"))
    return create_tts(BackendContext(data_dir=folder, workers=CpuWorkers(1), models_dir=folder / "models"), {})


@functools.cache
def _piper_bytes(text: str) -> bytes:
    tts = _piper()
    pieces: list[np.ndarray] = []
    tts.generate(text, lambda piece: pieces.append(piece) or True)  # type: ignore[attr-defined]
    audio = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
    return soxr.resample(audio, tts.sample_rate, RATE).astype(np.float32).tobytes()  # type: ignore[attr-defined]


def piper(text: str) -> np.ndarray:
    """``text`` in the Piper "joe" voice (the server's default TTS), 16 kHz, ends trimmed."""
    return trim(np.frombuffer(_piper_bytes(text), dtype=np.float32))


def speak(text: str, voice: str) -> np.ndarray:
    """``text`` by ``voice``: "piper", or an espeak-ng voice ("en-us", "cmn")."""
    return piper(text) if voice == "piper" else spoken(text, voice, 150)


def utterances(pauses: tuple[float, ...] = (0.4, 0.6, 0.9), *, piper_voice: bool = True) -> list[Utterance]:
    """Every complete question once, and every broken-off one once per pause length, in the
    voices that speak its language."""
    voices = {"en": (["piper"] if piper_voice else []) + ["en-us"], "zh": ["cmn"]}
    result = []
    for language, complete, broken in (("en", COMPLETE_EN, BROKEN_EN), ("zh", COMPLETE_ZH, BROKEN_ZH)):
        for voice in voices[language]:
            result += [Utterance(text, language, voice, speak(text, voice)) for text in complete]
            for text in broken:
                said = speak(text, voice)
                result += [broken_off(text, language, voice, said, pause) for pause in pauses]
    return result

"""Is the user's speech over a reply a real interruption, or a cough, a click, an "uh-huh"?

Sans-IO rules for barge-in: speech interrupts the reply only once it has lasted
``min_voiced_seconds`` of voice, and, where the recognizer has given words, only if they are at
least ``min_words`` words (a Chinese character counts as one) and not just a backchannel ("嗯",
"uh-huh", "ok"). Speech that never qualifies leaves the reply playing, and its transcript is
dropped rather than answered: nothing the user meant is lost, because a real question qualifies.

``BargeInIgnoringNoise`` is the controller's ``BargeIn`` policy built on the rule.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field

from ..messages import Transcript
from ..stages.asr import VoiceMeter
from .controller import UserSpeechProgress, UserSpeechStarted

#: Short acknowledgements that mean "go on", not "stop": English and Mandarin.
BACKCHANNELS = frozenset(
    {
        "uh-huh", "uh huh", "mm-hmm", "mm hmm", "mhm", "hmm", "hm", "mm", "uh", "um", "ah", "oh",
        "ok", "okay", "yeah", "yep", "yes", "right", "sure", "i see", "got it", "cool", "nice",
        "嗯", "嗯嗯", "嗯哼", "哦", "噢", "啊", "呃", "额", "好", "好的", "对", "对对", "对对对", "是", "是的",
        "行", "明白", "知道了", "哈哈",
    }
)

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_WORD = re.compile(r"[^\W\d_]+(?:['’-][^\W\d_]+)*|\d+", re.UNICODE)


def normalize(text: str) -> str:
    """Lower case, punctuation and extra spaces removed (for comparing with the backchannels)."""
    kept = "".join(" " if unicodedata.category(c).startswith(("P", "S")) and c not in "-'" else c for c in text.lower())
    return " ".join(kept.split()).strip(" -'")


def count_words(text: str) -> int:
    """Words in ``text``: each CJK character is one, other words are runs of letters or digits."""
    cjk = len(_CJK.findall(text))
    rest = _CJK.sub(" ", text)
    return cjk + len(_WORD.findall(rest))


@dataclass(frozen=True)
class InterruptionRule:
    """When speech over a reply counts as an interruption (``[session]`` barge-in keys)."""

    min_voiced_seconds: float = 0.6
    min_words: int = 2
    backchannels: frozenset[str] = field(default=BACKCHANNELS)

    def is_backchannel(self, text: str) -> bool:
        """Whether ``text`` is only an acknowledgement ("uh-huh", "嗯嗯", "ok.")."""
        said = normalize(text)
        return not said or said in self.backchannels

    def enough_words(self, text: str) -> bool:
        """Whether ``text`` says enough to interrupt: not a backchannel, at least ``min_words``."""
        return not self.is_backchannel(text) and count_words(text) >= self.min_words

    def interrupts(self, voiced_seconds: float, words: str | None = None) -> bool:
        """While the user speaks over a reply: stop the reply now?

        ``words`` is what a streaming recognizer has heard so far (None: no words known yet, the
        voice alone decides).
        """
        if voiced_seconds < self.min_voiced_seconds:
            return False
        return words is None or self.enough_words(words)

    def answers(self, text: str, voiced_seconds: float) -> bool:
        """A transcript arrived while the reply plays on: answer it (replacing the reply)?"""
        return voiced_seconds >= self.min_voiced_seconds and self.enough_words(text)


@dataclass(frozen=True)
class BargeInIgnoringNoise:
    """Speech in one of ``modes`` (never ``manual``) interrupts the reply once ``rule`` says it is
    real speech, not at its first sound; a transcript that arrives while the reply plays on is
    answered only if the rule says it is a real question (else the reply goes on, and the
    device keeps listening)."""

    modes: tuple[str, ...] = ("realtime",)
    rule: InterruptionRule = field(default_factory=InterruptionRule)

    def interrupts(self, speech: UserSpeechStarted) -> bool:
        return False  # a cough starts like a question: wait until it has lasted

    def interrupts_later(self, progress: UserSpeechProgress) -> bool:
        return progress.mode != "manual" and progress.mode in self.modes and self.rule.interrupts(progress.seconds, progress.words)

    def replaces_reply(self, transcript: Transcript) -> bool:
        seconds = VoiceMeter().feed(transcript.audio) if transcript.audio is not None else 0.0
        return self.rule.answers(transcript.text, seconds)

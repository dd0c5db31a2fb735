"""Keeping a recognizer's runaway output away from the agent.

Attention decoders (Moonshine, Whisper) sometimes fall into a loop and repeat the last words or
the whole sentence until their length limit ("remind me to call my mother tonight remind me to
call my mother tonight remind me to call my..."). Two guards, both on the final text of one
decoded piece of audio:

* ``cut_loops``: a run of two or more back-to-back copies of a phrase of ``LONG_PHRASE`` words or
  more (or of five or more copies of a shorter one), with any partial copy trailing it, is cut to
  one copy. People repeat a word or two ("no no", "bye bye") but not a whole clause, twice, with
  no pause the VAD would have cut.
* ``cap_length``: nobody says more than ``MAX_WORDS_PER_SECOND`` words (or CJK characters at
  ``MAX_CJK_PER_SECOND``) per second of audio, so the text is cut where it passes what the audio's
  duration allows.

Words are compared without case and punctuation; CJK characters count as words of their own.
What is kept is the original text, up to the last kept word and the punctuation right after it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: A phrase at least this long (in words) is a loop when it comes twice in a row.
LONG_PHRASE = 4
#: A shorter phrase must come this many times in a row.
SHORT_PHRASE_COPIES = 5
#: The longest phrase looked for (a loop of a long sentence repeats it whole).
MAX_PHRASE = 40
#: Fast speech is about 4 English words or 7 Chinese characters per second; these leave room.
MAX_WORDS_PER_SECOND = 6.0
MAX_CJK_PER_SECOND = 10.0
#: Words allowed on top of the rate (a very short utterance may still be a whole word or two).
LENGTH_SLACK = 3

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_TOKEN = re.compile(f"[{_CJK}]|[^\\s\\W{_CJK}]+(?:['’][^\\s\\W{_CJK}]+)*")
_CJK_CHAR = re.compile(f"[{_CJK}]")
_TRAILING_PUNCTUATION = re.compile(r"[^\w\s]*")


@dataclass(frozen=True, slots=True)
class _Token:
    key: str  # lower case, for comparison
    start: int
    end: int
    cjk: bool


def _tokens(text: str) -> list[_Token]:
    return [
        _Token(m.group().lower(), m.start(), m.end(), bool(_CJK_CHAR.fullmatch(m.group())))
        for m in _TOKEN.finditer(text)
    ]


def _loop_at(keys: list[str], i: int) -> tuple[int, int] | None:
    """The loop starting at ``keys[i]``, as (phrase length, end index), or None.

    Among phrase lengths that loop there, the one covering the most words wins (a repeated
    sentence, not a repeated word inside it).
    """
    best: tuple[int, int] | None = None
    remaining = len(keys) - i
    for n in range(1, min(MAX_PHRASE, remaining // 2) + 1):
        phrase = keys[i : i + n]
        copies, j = 1, i + n
        while keys[j : j + n] == phrase:
            copies, j = copies + 1, j + n
        if copies < (2 if n >= LONG_PHRASE else SHORT_PHRASE_COPIES):
            continue
        while j < len(keys) and keys[j] == phrase[j - i - copies * n]:
            j += 1  # a partial copy at the end: the decoder stopped in the middle of one more
        if best is None or j > best[1]:
            best = (n, j)
    return best


def cut_loops(text: str) -> str:
    """``text`` with every run of a repeated phrase cut to one copy (see the module docstring)."""
    tokens = _tokens(text)
    keys = [t.key for t in tokens]
    result = ""
    position = 0  # where the text not yet copied to ``result`` starts
    i = 0
    while i < len(tokens):
        loop = _loop_at(keys, i)
        if loop is None:
            i += 1
            continue
        n, end = loop
        kept_end = _end_with_punctuation(text, tokens[i + n - 1].end)
        result = _joined(result, text[position:kept_end])
        position = _end_with_punctuation(text, tokens[end - 1].end)
        # A space where the text had one on either side of the cut ("remind 好", "提醒我给妈妈打电话").
        spaced = text[kept_end : kept_end + 1].isspace() or text[position : position + 1].isspace()
        result += " " if spaced else ""
        i = end
    if position == 0:
        return text
    return _joined(result, text[position:])


def cap_length(text: str, seconds: float) -> str:
    """``text`` cut after the last word that ``seconds`` of speech can hold."""
    budget = seconds * MAX_WORDS_PER_SECOND + LENGTH_SLACK
    used = 0.0
    for token in _tokens(text):
        used += MAX_WORDS_PER_SECOND / MAX_CJK_PER_SECOND if token.cjk else 1.0
        if used > budget + 1e-9:
            return text[: token.start].rstrip()
    return text


def guard_transcript(text: str, seconds: float) -> str:
    """The text of ``seconds`` of audio, without decoder loops and no longer than speech can be."""
    return cap_length(cut_loops(text), seconds)


def _end_with_punctuation(text: str, end: int) -> int:
    """``end``, moved past punctuation that follows directly ("tonight." keeps its period)."""
    return end + len(_TRAILING_PUNCTUATION.match(text, end).group())  # type: ignore[union-attr]


def _joined(head: str, rest: str) -> str:
    """``head`` then ``rest``, trimmed; a space between them only if ``head`` ends with one (put
    there where the original text had one at the cut)."""
    return (head + rest.lstrip()).strip() if head.strip() else rest.strip()

"""Cutting an agent's streamed reply into sentences for TTS, as early as sounds natural.

TTS can start on a sentence only once it is complete, so where we cut decides how soon the device
speaks. The rules (see ``docs/sentences.md`` for the reasoning):

* The first segment of a reply may end at a clause mark (``，、：`` always, ``,;:`` when a space
  follows) once it is long enough to sound like a phrase (``first_clause_min_chars``). So may the
  segments after it, as long as the reply so far is short (``clause_cuts_chars``): a short first
  clause plays for about a second, too little for the rest of a long sentence to be written and
  synthesized, so the next clause goes ahead alone too.
* Every segment ends at a sentence end: ``。！？；`` always; ``! ? . …`` when followed by a space,
  a newline, CJK text or the end of the reply. A period does not end a sentence after a known
  abbreviation (``Mr.``, ``e.g.``), an initial (``J.``), a bare list number (``1.``), or before a
  lowercase word (``etc. and``); an ellipsis does not before a lowercase word either. Decimals,
  times, URLs and e-mail addresses never have a space after their dots and colons.
* A newline always ends a segment (list items, headings).
* A segment that reaches ``max_chars`` without any of these is cut at its last clause mark, else at
  its last space, else right there, so TTS never waits for an end that does not come.
* A segment with nothing to say (only punctuation) is not cut off on its own: it stays at the
  front of the next one. At the end of the reply such a leftover is dropped.
* A reply that breaks off (``abandon``) keeps its complete sentences, and of the unfinished one
  only what ends at a clause mark and is long enough to stand alone (as the first clause of a
  reply must be); the words after it are dropped, so the device never says "The we" before an
  apology.

Each cut is decided only once the text it depends on is known (the character after the punctuation,
sometimes the next word), so the result does not depend on how the reply was cut into deltas.
Markdown, URLs and emoji are removed before splitting (:mod:`.cleanup`); an emoji opening the
reply becomes an :class:`Emotion` (:mod:`.emotions`).
"""

from __future__ import annotations

import re

from ..messages import Emotion, Sentence
from .cleanup import MarkdownCleaner, tidy_whitespace
from .emotions import LeadingEmotion

_STRONG_ENDS = "。！？；｡"  # CJK sentence ends: a boundary whatever follows
_ENDS = _STRONG_ENDS + "!?.…"
_CLAUSES = "，、：,;:"
_CLOSERS = "\"'”’」』）)]】》〉"

_CANDIDATES = re.compile(f"[\n{re.escape(_ENDS)}]")
_FIRST_CANDIDATES = re.compile(f"[\n{re.escape(_ENDS + _CLAUSES)}]")
# Runs are bounded so that a flood of "!!!!" is never rescanned whole on every delta.
_END_RUN = re.compile(f"[{re.escape(_ENDS)}]{{1,8}}[{re.escape(_CLOSERS)}]{{0,4}}")
_CLAUSE_RUN = re.compile(f"[{re.escape(_CLAUSES)}][{re.escape(_CLOSERS)}]{{0,4}}")
_LOOKAHEAD = 16  # how far past a space to look for the next word

_SPEAKABLE = re.compile(r"[^\W_]")  # a letter, digit or CJK character
_NON_SPACE = re.compile(r"\S")
_LAST_SPACE = re.compile(r".*\S(\s)", re.DOTALL)
_LIST_NUMBER = re.compile(r"\s*\d+\Z")
_WORD_BEFORE = re.compile(r"(?<![A-Za-z0-9])[A-Za-z][A-Za-z.]*\Z")
_CJK_CHAR = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")
# A number cut off after its point or separator ("3." of "3.5", "1," of "1,000").
_CUT_NUMBER = re.compile(r"(?<=\d)[.,:]\Z")
_LATIN_WORD = re.compile(r"[A-Za-z0-9\u00c0-\u024f]+(?:['’.,:][A-Za-z0-9]+)*")  # it's, 3.14, 10:30

#: Words after which a period never ends a sentence: titles and "for example" abbreviations,
#: all followed by what they introduce. Others (``etc.``, ``U.S.``) end one unless a lowercase
#: word follows.
ABBREVIATIONS = frozenset(
    {
        *("mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "mt", "rev", "gen", "gov", "sen"),
        *("rep", "capt", "lt", "col", "sgt", "vs", "cf", "viz", "approx", "e.g", "i.e", "fig"),
        *("figs", "eq", "vol"),
    }
)


class SentenceSplitter:
    """Cuts one reply at a time into :class:`Sentence` items, sans-IO.

    ``feed`` each text delta as it arrives and ``flush`` at the end of the reply; both return the
    items that became certain. An emoji opening the reply comes first as an :class:`Emotion`.
    After ``flush`` the splitter is ready for the next reply.
    """

    def __init__(self, *, first_clause_min_chars: int = 4, clause_cuts_chars: int = 12, max_chars: int = 100) -> None:
        """
        :param first_clause_min_chars: how long a segment must be before it may end at a clause
            mark, in CJK characters; a Latin word or number counts as 1.5 (about the same speaking
            time). 4 lets "好的呀朋友，" or "Sure thing my friend," go ahead alone, but not "你好，"
            or "Well,".
        :param clause_cuts_chars: segments may end at a clause mark until the reply's segments so
            far hold this much text (same units; 12 is about 3 s of speech). The first segment
            always may; 0 keeps clause cuts to the first segment alone.
        :param max_chars: the longest a segment may grow without a sentence end before it is cut.
        """
        if first_clause_min_chars < 0:
            raise ValueError(f"first_clause_min_chars must be >= 0, not {first_clause_min_chars}")
        if clause_cuts_chars < 0:
            raise ValueError(f"clause_cuts_chars must be >= 0, not {clause_cuts_chars}")
        if max_chars < 10:
            raise ValueError(f"max_chars must be at least 10, not {max_chars}")
        self._min_units2 = 2 * first_clause_min_chars  # in half-characters, to count words as 1.5
        self._clause_units2 = 2 * clause_cuts_chars
        self._max = max_chars
        self._cleaner = MarkdownCleaner()
        self._emotion = LeadingEmotion()
        self.reset()

    def reset(self) -> None:
        """Drop everything buffered: the next delta starts a new reply."""
        self._cleaner.reset()
        self._emotion.reset()
        self._buf = ""  # clean text not yet emitted
        self._pos = 0  # where the next search for a boundary starts in _buf
        self._waiting = False  # a boundary at _pos needs more text to be decided
        self._emitted_units2 = 0  # how much text this reply's segments held so far (half-units)
        self._candidates = _FIRST_CANDIDATES  # clause marks are candidates while the reply is short

    def feed(self, delta: str) -> list[Sentence | Emotion]:
        """Take the next piece of the reply; return the items it completes (often none)."""
        items: list[Sentence | Emotion] = []
        if not self._emotion.done:
            emotion = self._emotion.feed(delta)
            if emotion is not None:
                items.append(emotion)
        clean = self._cleaner.feed(delta)
        if clean:
            self._buf += clean
            # Only new boundary characters, a pending decision or the length limit need a scan.
            if self._waiting or len(self._buf) > self._max or self._candidates.search(clean):
                self._scan(items, final=False)
        return items

    def flush(self) -> list[Sentence | Emotion]:
        """The reply is complete: return the remaining items (the tail always goes out)."""
        items: list[Sentence | Emotion] = []
        emotion = self._emotion.feed("", final=True)
        if emotion is not None:
            items.append(emotion)
        self._buf += self._cleaner.flush()
        self._scan(items, final=True)
        self._emit(items, self._buf)
        self.reset()
        return items

    def abandon(self) -> list[Sentence | Emotion]:
        """The reply broke off (the agent failed): return what was complete and drop the rest.

        Sentences that end are kept, and so is the unfinished one up to its last clause mark if
        that part is long enough to be said alone; any words after it are dropped. The splitter
        is then ready for the next text (the apology).
        """
        items: list[Sentence | Emotion] = []
        emotion = self._emotion.feed("", final=True)
        if emotion is not None:
            items.append(emotion)
        self._buf = _CUT_NUMBER.sub("", self._buf + self._cleaner.flush())
        self._scan(items, final=True)
        tail = self._buf[: _last_clause_end(self._buf)]
        if self._long_enough(tail):
            self._emit(items, tail)
        self.reset()
        return items

    # ----------------------------------------------------------------------------------------

    def _scan(self, items: list[Sentence | Emotion], final: bool) -> None:
        """Emit every segment of ``_buf`` whose end can be decided."""
        buf, pos, limit = self._buf, self._pos, self._max
        waiting = False
        while True:
            match = self._candidates.search(buf, pos)
            at = match.start() if match else len(buf)
            if at >= limit and len(buf) > limit:  # no sentence end within the limit
                cut = _fallback_cut(buf, limit)
                self._emit(items, buf[:cut])
                buf, pos = buf[cut:], 0
                continue
            if match is None:
                pos = len(buf)
                break
            decision = self._decide(buf, at, final)
            if decision is None:
                pos, waiting = at, True
                break
            is_boundary, end = decision
            if is_boundary and _SPEAKABLE.search(buf, 0, end):
                self._emit(items, buf[:end])
                buf, pos = buf[end:], 0
            else:  # not a boundary, or nothing to say yet: the text joins the next segment
                pos = end
        self._buf, self._pos, self._waiting = buf, pos, waiting

    def _decide(self, buf: str, at: int, final: bool) -> tuple[bool, int] | None:
        """Is the punctuation at ``at`` a boundary? Returns (yes/no, end of its run), or None if
        the text after it has not arrived yet."""
        char = buf[at]
        if char == "\n":
            return True, at + 1
        clause = char in _CLAUSES
        run = (_CLAUSE_RUN if clause else _END_RUN).match(buf, at)
        assert run is not None  # the candidate itself matches
        end = run.end()
        if end == len(buf) and not final:
            return None
        after = buf[end] if end < len(buf) else ""
        if clause:  # only searched for while the reply is short
            if char in ",;:" and after and not after.isspace():
                return False, end  # 1,000 and 10:30
            return self._long_enough(buf[:end]), end
        punct = buf[at:end]
        if any(p in _STRONG_ENDS for p in punct):
            return True, end
        if after and not after.isspace() and after.isascii() and (at == 0 or buf[at - 1].isascii()):
            return False, end  # glued to what follows: 3.14, example.com, ?q=1, wait...what
        if "!" in punct or "?" in punct:
            return True, end
        if "…" not in punct and punct.count(".") == 1 and self._period_continues(buf, at):
            return False, end
        # A lowercase word after it means the sentence goes on ("etc. and", "so... maybe").
        if after.isspace():
            word = _NON_SPACE.search(buf, end, end + _LOOKAHEAD)
            if word is None:  # a long gap is a break too
                return (True, end) if final or len(buf) >= end + _LOOKAHEAD else None
            after = buf[word.start()]
        return not ("a" <= after <= "z"), end

    @staticmethod
    def _period_continues(buf: str, at: int) -> bool:
        """Does the period at ``at`` belong to the word before it rather than end a sentence?"""
        if _LIST_NUMBER.match(buf, 0, at):
            return True  # "1." opening a segment numbers a list item
        word = _WORD_BEFORE.search(buf, max(0, at - 16), at)
        if word is None:
            return False
        text = word.group()
        return text.lower() in ABBREVIATIONS or (len(text) == 1 and text.isupper() and text != "I")

    def _long_enough(self, text: str) -> bool:
        """Is ``text`` long enough to be spoken as a phrase on its own?"""
        return _units2(text) >= self._min_units2

    def _emit(self, items: list[Sentence | Emotion], raw: str) -> None:
        text = tidy_whitespace(raw)
        if _SPEAKABLE.search(text):
            items.append(Sentence(text))
            self._emitted_units2 += _units2(text)
            if self._emitted_units2 >= self._clause_units2:
                self._candidates = _CANDIDATES


def _units2(text: str) -> int:
    """Speaking length of ``text`` in half CJK characters (a Latin word or number counts 1.5)."""
    return 2 * len(_CJK_CHAR.findall(text)) + 3 * len(_LATIN_WORD.findall(text))


def _last_clause_end(buf: str) -> int:
    """Where the last complete clause of ``buf`` ends (0 if none): after a clause mark that is
    CJK, or followed by a space, or ends ``buf``."""
    end = 0
    for run in _CLAUSE_RUN.finditer(buf):
        if buf[run.start()] in ",;:" and run.end() < len(buf) and not buf[run.end()].isspace():
            continue  # 10:30, 1,000
        end = run.end()
    return end


def _fallback_cut(buf: str, limit: int) -> int:
    """Where to cut ``buf``, which has no sentence end within ``limit`` characters: after the last
    clause mark, else at the last space, else at the limit. ``len(buf) > limit``."""
    best = 0
    for run in _CLAUSE_RUN.finditer(buf, 0, limit):
        end = run.end()
        if buf[run.start()] in ",;:" and not buf[end].isspace():
            continue
        if _SPEAKABLE.search(buf, 0, end):
            best = end
    if best:
        return best
    space = _LAST_SPACE.match(buf, 0, limit)
    if space and _SPEAKABLE.search(buf, 0, space.start(1)):
        return space.start(1)
    return limit

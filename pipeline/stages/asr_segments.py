"""Where to cut an utterance while it is still being spoken, so an offline recognizer can decode
it piece by piece and little or nothing is left when the user stops (sans-IO).

An offline recognizer (Moonshine) decodes a whole utterance at once. Started only once the turn
has ended, that decode is most of the user's wait. ``SegmentCutter`` follows the utterance as its
audio arrives and cuts it into *segments*, which the recognizer stage decodes in the background
while the user goes on; at the end of the turn only the *tail* since the last cut is left to
decode, and usually not even that.

The rule works on 20 ms frames; a frame is *quiet* when its RMS is 20 dB below the loudest frame
of the utterance so far (or below an absolute floor):

* **first silence**: once ``first_silence`` of quiet follows speech, the utterance is cut there
  *tentatively* (in the middle of the quiet so far), so the decode of what was said since the
  last cut starts at once: if the user has finished, their text is being decoded ~100 ms after
  they stopped, long before the turn can end (the VAD's pause alone is 200 ms). If speech resumes
  before the quiet has lasted ``gap``, or the segment is shorter than ``min_segment``, the cut is
  *withdrawn* (its decode is thrown away): a stop consonant, a breath or a comma inside a
  sentence is not a place to cut, as a recognizer decoding each side alone gets the words at the
  cut wrong. A quiet of ``gap`` or more is a pause between phrases and the cut stays.
* **too long**: a segment that reaches ``max_segment`` seconds without a kept cut is cut at its
  quietest frame in its second half, so a long monologue is not left to decode at its end.
* **a pause** (``cut``): when the VAD reports a pause the owner makes sure what was said up to
  it is being decoded: a tentative cut at the end of the audio so far, unless a first silence
  already cut there (a fallback for speech the energy rule did not see end).

What the segments cover is kept exact by content: the owner says what the utterance really is so
far (``rebase``, at a pause: the listen stage's utterance leaves out silence the VAD heard before
it decided) and at its end (``finish``); a segment whose samples are not exactly that audio at
that place is dropped, with every segment after it, and the audio after the last one kept is
judged again. So whatever the sequence of audio, pauses and rebases, the segments kept and the
tail cover the final utterance exactly once, in order. A segment or tail without a voiced frame
needs no decode (its text is empty).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..messages import Samples

#: A frame is quiet below this fraction of the loudest frame's RMS (-30 dB: a word's final "s" or
#: "f" is often 20-30 dB below its vowels, and cutting it off turns "lights" into "light")...
QUIET_RATIO = 0.03
#: ...or below this RMS (about -70 dBFS) whatever the level.
SILENCE_FLOOR = 3e-4


@dataclass(frozen=True)
class CutRule:
    """When ``SegmentCutter`` cuts (seconds; see the module doc and docs/speech.md for how the
    defaults were chosen)."""

    first_silence: float = 0.1
    gap: float = 0.3
    min_segment: float = 1.0
    max_segment: float = 4.0
    frame: float = 0.02

    def __post_init__(self) -> None:
        if not 0 < self.frame <= self.first_silence <= self.gap < self.min_segment < self.max_segment:
            raise ValueError(f"inconsistent cut rule {self}")


@dataclass(frozen=True, eq=False)
class Segment:
    """``samples`` are the utterance's samples ``[start, stop)``; ``number`` counts the segments
    cut from one utterance (a dropped segment's number is never reused)."""

    number: int
    start: int
    samples: Samples
    #: Whether it has a voiced frame (one without needs no decode: its text is empty).
    voiced: bool

    @property
    def stop(self) -> int:
        return self.start + len(self.samples)


@dataclass(frozen=True)
class Plan:
    """What is left to decode at the end of an utterance: the ``segments`` kept (in order, from its
    start), the ``tail`` after them (None: nothing after them) and the segments ``dropped``."""

    segments: tuple[Segment, ...]
    tail: Segment | None
    dropped: tuple[Segment, ...]


class _Tape:
    """A growing float32 buffer (amortised appends, no copy of what came before)."""

    def __init__(self) -> None:
        self._data = np.zeros(16000, np.float32)
        self.size = 0

    def append(self, samples: Samples) -> None:
        need = self.size + len(samples)
        if need > len(self._data):
            grown = np.zeros(max(need, 2 * len(self._data)), np.float32)
            grown[: self.size] = self._data[: self.size]
            self._data = grown
        self._data[self.size : need] = samples
        self.size = need

    def view(self, start: int = 0, stop: int | None = None) -> Samples:
        return self._data[start : self.size if stop is None else min(stop, self.size)]

    def replace(self, samples: Samples) -> None:
        self.size = 0
        self.append(samples)


class SegmentCutter:
    """Cuts one utterance into segments as its audio arrives (see the module doc)."""

    def __init__(self, rule: CutRule = CutRule(), sample_rate: int = 16000) -> None:
        self.rule = rule
        self.sample_rate = sample_rate
        self._frame = max(1, round(rule.frame * sample_rate))
        frames = lambda seconds: max(1, round(seconds / rule.frame))  # noqa: E731
        self._first_frames = frames(rule.first_silence)
        self._gap_frames = frames(rule.gap)
        self._min_frames = frames(rule.min_segment)
        self._max_frames = max(self._min_frames + 1, frames(rule.max_segment))
        self._tape = _Tape()
        self._rms: list[float] = []  # of every whole frame of the tape
        self._loudest = 0.0
        self._segments: list[Segment] = []
        self._numbers = 0
        # Scanning state, from the last cut on.
        self._cut_frame = 0  # the first frame after the last cut
        self._quiet_run = 0  # quiet frames in a row just scanned
        self._voiced_since_cut = False
        self._tentative = False  # the last segment was cut at a first silence, not yet confirmed

    @property
    def segments(self) -> tuple[Segment, ...]:
        """The segments cut so far (and not withdrawn or dropped), in order."""
        return tuple(self._segments)

    @property
    def samples(self) -> int:
        """Samples of the utterance so far."""
        return self._tape.size

    @property
    def cut_at(self) -> int:
        """Where the last segment ends (0 before the first cut): the tail starts here."""
        return self._segments[-1].stop if self._segments else 0

    def feed(self, samples: Samples) -> tuple[list[Segment], list[Segment]]:
        """More of the utterance; returns the segments this cuts, and those it withdraws (cut
        tentatively before, or just now, and the user spoke on too soon)."""
        self._tape.append(np.asarray(samples, dtype=np.float32))
        withdrawn: list[Segment] = []
        cuts = self._scan(withdrawn)
        return [c for c in cuts if c not in withdrawn], [w for w in withdrawn if w not in cuts]

    def cut(self) -> tuple[list[Segment], list[Segment]]:
        """The user paused: make sure what they said up to here is being decoded. Cuts at the end
        of the audio so far unless a first silence already cut it, tentatively like one (kept if
        the pause lasts ``gap``); returns the segments cut and withdrawn, as ``feed`` does."""
        withdrawn: list[Segment] = []
        cuts = self._scan(withdrawn)
        if self._voiced_since_cut and self._tape.size > self.cut_at:
            cuts.append(self._make(self.cut_at, self._tape.size))
            self._tentative = True
        return [c for c in cuts if c not in withdrawn], [w for w in withdrawn if w not in cuts]

    def rebase(self, utterance: Samples) -> list[Segment]:
        """The utterance so far is exactly ``utterance``: segments that are not a part of it are
        dropped (returned), and later audio continues from its end. Nothing is cut here: the
        next ``feed`` or ``cut`` judges the audio after the last segment kept."""
        utterance = np.asarray(utterance, dtype=np.float32)
        keep = 0
        for segment in self._segments:
            if segment.stop > len(utterance) or not np.array_equal(utterance[segment.start : segment.stop], segment.samples):
                break
            keep += 1
        dropped, self._segments = self._segments[keep:], self._segments[:keep]
        if len(utterance) >= self._tape.size and np.array_equal(utterance[: self._tape.size], self._tape.view()):
            self._tape.append(utterance[self._tape.size :])  # only more of the same
            if not dropped:
                return []
        else:
            self._tape.replace(utterance)
        # Judge the audio after the last segment kept afresh (gaps and lengths count from there).
        self._cut_frame = self.cut_at // self._frame
        del self._rms[self._cut_frame :]
        self._quiet_run, self._voiced_since_cut = 0, False
        self._tentative = self._tentative and not dropped
        return dropped

    def finish(self, utterance: Samples) -> Plan:
        """The utterance is over and is exactly ``utterance``: what is left to decode."""
        dropped = self.rebase(utterance)
        self._scan([], cutting=False)
        start = self.cut_at
        tail = self._make(start, self._tape.size, keep=False) if self._tape.size > start else None
        return Plan(tuple(self._segments), tail, tuple(dropped))

    # ---- the cut rule ----

    def _scan(self, withdrawn: list[Segment], *, cutting: bool = True) -> list[Segment]:
        cuts: list[Segment] = []
        frame = self._frame
        while (len(self._rms) + 1) * frame <= self._tape.size:
            index = len(self._rms)
            chunk = self._tape.view(index * frame, (index + 1) * frame)
            rms = float(np.sqrt(np.mean(np.square(chunk, dtype=np.float64))))
            self._rms.append(rms)
            self._loudest = max(self._loudest, rms)
            if self._quiet(rms):
                self._quiet_run += 1
            else:
                if self._tentative and cutting:
                    self._confirm_or_withdraw(withdrawn)
                self._quiet_run = 0
                self._voiced_since_cut = True
            if not cutting:
                continue
            length = index + 1 - self._cut_frame
            if self._voiced_since_cut and self._quiet_run == self._first_frames:
                cuts.append(self._make(self.cut_at, (index + 1 - self._quiet_run // 2) * frame))
                self._tentative = True
            elif length >= self._max_frames and not self._tentative:
                half = self._cut_frame + length // 2
                at = max(half + int(np.argmin(self._rms[half : index + 1])), self._cut_frame + 1)
                cuts.append(self._make(self.cut_at, at * frame))
        return cuts

    def _confirm_or_withdraw(self, withdrawn: list[Segment]) -> None:
        """Speech after a tentative cut: keep it after a real pause in a long enough segment."""
        self._tentative = False
        if self._quiet_run >= self._gap_frames and len(self._segments[-1].samples) >= self._min_frames * self._frame:
            return
        withdrawn.append(self._segments.pop())
        self._cut_frame = -(-self.cut_at // self._frame)

    def _quiet(self, rms: float) -> bool:
        return rms < max(QUIET_RATIO * self._loudest, SILENCE_FLOOR)

    def _make(self, start: int, stop: int, *, keep: bool = True) -> Segment:
        samples = self._tape.view(start, stop).copy()
        first, last = start // self._frame, -(-stop // self._frame)
        voiced = any(not self._quiet(r) for r in self._rms[first:last]) or self._partial_voiced(stop)
        self._numbers += 1
        segment = Segment(self._numbers, start, samples, voiced)
        if keep:
            self._segments.append(segment)
            self._cut_frame = -(-stop // self._frame)
            # The quiet run goes on counting across a cut in it (a pause is judged by its length).
            self._voiced_since_cut = any(not self._quiet(r) for r in self._rms[self._cut_frame :])
        return segment

    def _partial_voiced(self, stop: int) -> bool:
        """Whether the samples after the last whole frame (up to ``stop``) are voiced."""
        whole = len(self._rms) * self._frame
        if stop <= whole:
            return False
        rest = self._tape.view(whole, stop)
        return bool(len(rest)) and not self._quiet(float(np.sqrt(np.mean(np.square(rest, dtype=np.float64)))))


def _is_cjk(ch: str) -> bool:
    return "\u3000" <= ch <= "\u9fff" or "\uac00" <= ch <= "\ud7af" or "\uf900" <= ch <= "\uffef"


def join_texts(texts: Sequence[str]) -> str:
    """Texts of consecutive pieces of speech as one: a space between words, none next to Chinese,
    Japanese or Korean."""
    result = ""
    for text in (t.strip() for t in texts):
        if not text:
            continue
        if result and not (_is_cjk(result[-1]) or _is_cjk(text[0])):
            result += " "
        result += text
    return result

"""Where an offline recognizer decodes an utterance, and how the pieces' texts join up.

An utterance is trimmed of long quiet at its ends and cut at pauses into pieces no longer than a
limit; each piece is decoded on its own and the texts are joined. Quiet is judged relative to the
utterance's own loudness, so it works at any microphone level and over steady background noise.
"""

from __future__ import annotations

import numpy as np

from xiaozhi_trio.pipeline.messages import Samples
from xiaozhi_trio.pipeline.stages.asr_segments import join_texts

__all__ = ["join_texts", "speech_pieces"]

SAMPLE_RATE = 16000
#: 20 ms frames; a frame is quiet when 20 dB below the utterance's loud level.
FRAME = 320
QUIET_RATIO = 0.1
#: Below this RMS (about -70 dBFS) a frame is quiet whatever the level; all quiet: no speech.
SILENCE_FLOOR = 3e-4
#: Quiet kept (or, after the speech, made up with zeros) at each end of a piece.
PAD_SECONDS = 0.25


def speech_pieces(
    samples: Samples, max_seconds: float, sample_rate: int = SAMPLE_RATE
) -> list[tuple[int, int, int]]:
    """Where to decode: ``(start, stop, silence)`` for each piece of the utterance's speech, to be
    decoded as ``samples[start:stop]`` followed by ``silence`` zeros.

    Quiet longer than ``PAD_SECONDS`` at either end is left out, and zeros make up the quiet after
    the speech where the audio has less (offline models end words badly on audio that stops
    mid-sound: Moonshine then repeats its last word many times over). A stretch longer than
    ``max_seconds`` is cut in the middle of its longest quiet run in the second half of the allowed
    length (or at its quietest frame), so no speech is dropped. Silence alone gives no pieces.
    """
    frames = len(samples) // FRAME
    if frames == 0:
        return []
    rms = np.sqrt(np.mean(np.square(samples[: frames * FRAME].reshape(frames, FRAME), dtype=np.float64), axis=1))
    level = float(np.percentile(rms, 95))
    if level < SILENCE_FLOOR:
        return []
    quiet = rms < max(level * QUIET_RATIO, SILENCE_FLOOR)
    pad = round(PAD_SECONDS * sample_rate / FRAME)
    limit = max(2, int(max_seconds * sample_rate / FRAME))

    def trimmed(lo: int, hi: int) -> tuple[int, int, int] | None:
        loud = np.flatnonzero(~quiet[lo:hi])
        if not len(loud):
            return None
        end = lo + int(loud[-1]) + 1 + pad
        return max(lo, lo + int(loud[0]) - pad), min(hi, end), max(0, end - hi)

    pieces: list[tuple[int, int, int]] = []
    span = trimmed(0, frames)
    while span is not None:
        lo, hi, _ = span
        if hi - lo <= limit:
            pieces.append(span)
            break
        cut = _best_cut(rms, quiet, lo + limit // 2, lo + limit)
        if (head := trimmed(lo, cut)) is not None:
            pieces.append(head)
        span = trimmed(cut, hi)
    result = [(lo * FRAME, hi * FRAME, missing * FRAME) for lo, hi, missing in pieces]
    if result and result[-1][1] == frames * FRAME:  # keep the last partial frame
        lo, _, missing = result[-1]
        result[-1] = (lo, len(samples), max(0, missing - (len(samples) - frames * FRAME)))
    return result


def _best_cut(rms: np.ndarray, quiet: np.ndarray, lo: int, hi: int) -> int:
    """A frame index in ``[lo, hi)`` to cut at: the middle of the longest quiet run, else the quietest."""
    best_len, best_mid, run_start = 0, -1, None
    for index in range(lo, hi + 1):
        if index < hi and quiet[index]:
            run_start = index if run_start is None else run_start
        elif run_start is not None:
            if index - run_start > best_len:
                best_len, best_mid = index - run_start, (run_start + index) // 2
            run_start = None
    if best_mid >= 0:
        return best_mid
    return lo + int(np.argmin(rms[lo:hi]))

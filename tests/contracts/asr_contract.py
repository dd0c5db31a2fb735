"""What every ASR backend must do. Subclass ``AsrContract`` with an ``asr_case`` fixture.

A case gives the recognizer and at least two phrases it must recognize (audio at the
recognizer's rate and the words said), with the word error rate allowed per phrase.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import trio
import trio.testing

from xiaozhi_trio.pipeline.backends import SpeechRecognizer
from xiaozhi_trio.pipeline.messages import PcmChunk

from xiaozhi_trio.plugins.testing.speech import joined, silence
from xiaozhi_trio.plugins.testing.wer import word_error_rate, words

#: 60 ms at 16 kHz: what a device's Opus frame decodes to.
FRAME = 960


@dataclass
class AsrCase:
    recognizer: SpeechRecognizer
    #: (audio, words said) pairs; at least two, with different words.
    phrases: list[tuple[np.ndarray, str]]
    max_wer: float = 0.0


async def transcribe(recognizer: SpeechRecognizer, samples: np.ndarray, *, accept: bool = False) -> str:
    """One utterance through a fresh stream (fed to ``accept`` in 60 ms pieces first if asked)."""
    rate = recognizer.sample_rate
    stream = recognizer.open_stream()
    if accept:
        for start in range(0, len(samples), FRAME):
            partial = await stream.accept(PcmChunk(samples[start : start + FRAME], rate))
            assert partial is None or (isinstance(partial, str) and partial)
    return await stream.finish(PcmChunk(samples, rate))


class AsrContract:
    """The contract suite; the subclass provides the ``asr_case`` fixture."""

    async def test_recognizes_each_phrase(self, asr_case: AsrCase) -> None:
        for audio, said in asr_case.phrases:
            text = await transcribe(asr_case.recognizer, audio)
            assert word_error_rate(said, text) <= asr_case.max_wer, (said, text)

    async def test_silence_has_no_words(self, asr_case: AsrCase) -> None:
        assert words(await transcribe(asr_case.recognizer, silence(2.0))) == []

    async def test_an_empty_utterance_has_no_words(self, asr_case: AsrCase) -> None:
        assert words(await transcribe(asr_case.recognizer, np.zeros(0, np.float32))) == []

    async def test_accepting_the_audio_first_gives_the_same_words(self, asr_case: AsrCase) -> None:
        audio, said = asr_case.phrases[0]
        padded = joined(silence(0.3), audio, silence(0.5))
        text = await transcribe(asr_case.recognizer, padded, accept=True)
        assert word_error_rate(said, text) <= asr_case.max_wer, (said, text)

    async def test_sessions_at_once_each_get_their_own_words(self, asr_case: AsrCase) -> None:
        jobs = [phrase for phrase in asr_case.phrases for _ in range(2)]
        results: dict[int, str] = {}

        async def one(index: int, audio: np.ndarray) -> None:
            results[index] = await transcribe(asr_case.recognizer, audio)

        async with trio.open_nursery() as nursery:
            for index, (audio, _) in enumerate(jobs):
                nursery.start_soon(one, index, audio)
        for index, (_, said) in enumerate(jobs):
            assert word_error_rate(said, results[index]) <= asr_case.max_wer, (said, results[index])

    async def test_a_cancelled_utterance_leaves_the_others_and_the_backend_working(self, asr_case: AsrCase) -> None:
        (first, _), (second, said) = asr_case.phrases[:2]
        # Cancelled after the other session's utterance started, then before it.
        for doomed_first in (False, True):
            results: list[str] = []

            async def finish_other(results: list[str] = results) -> None:
                results.append(await transcribe(asr_case.recognizer, second))

            async with trio.open_nursery() as nursery:
                if not doomed_first:
                    nursery.start_soon(finish_other)
                with trio.CancelScope() as doomed:
                    async with trio.open_nursery() as inner:
                        inner.start_soon(transcribe, asr_case.recognizer, first)
                        if doomed_first:
                            nursery.start_soon(finish_other)
                        await trio.testing.wait_all_tasks_blocked()
                        doomed.cancel()
            assert len(results) == 1 and word_error_rate(said, results[0]) <= asr_case.max_wer, (said, results)
        again = await transcribe(asr_case.recognizer, second)
        assert word_error_rate(said, again) <= asr_case.max_wer, (said, again)

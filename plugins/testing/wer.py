"""Word error rate: the edit distance between word sequences over the reference's length."""

from __future__ import annotations

import re
import unicodedata

_NUMBERS = {
    "0": "zero", "1": "one", "2": "two", "3": "three", "4": "four", "5": "five", "6": "six",
    "7": "seven", "8": "eight", "9": "nine", "10": "ten", "11": "eleven", "12": "twelve",
    "15": "fifteen", "20": "twenty", "30": "thirty",
}


def words(text: str) -> list[str]:
    """Lower-case words without punctuation; small numerals spelled out ("10" → "ten");
    Chinese, Japanese and Korean characters count as one word each."""
    text = unicodedata.normalize("NFKC", text).lower().replace("'", "")
    text = re.sub(r"(?<=\w)-(?=\w)", "", text)  # "to-morrow" → "tomorrow"
    text = re.sub(r"([\u3000-\u9fff\uac00-\ud7af])", r" \1 ", text)
    tokens = re.findall(r"[\w\u3000-\u9fff\uac00-\ud7af]+", text)
    return [_NUMBERS.get(token, token) for token in tokens]


def edit_distance(reference: list[str], hypothesis: list[str]) -> int:
    """Substitutions + deletions + insertions turning ``reference`` into ``hypothesis``."""
    previous = list(range(len(hypothesis) + 1))
    for i, ref_word in enumerate(reference, 1):
        current = [i]
        for j, hyp_word in enumerate(hypothesis, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ref_word != hyp_word)))
        previous = current
    return previous[-1]


def word_error_rate(reference: str, hypothesis: str) -> float:
    """WER of ``hypothesis`` against ``reference`` (1.0 for any text against an empty reference)."""
    ref, hyp = words(reference), words(hypothesis)
    if not ref:
        return 0.0 if not hyp else 1.0
    return edit_distance(ref, hyp) / len(ref)


def corpus_wer(pairs: list[tuple[str, str]]) -> float:
    """WER over many utterances: total edits over total reference words."""
    edits = sum(edit_distance(words(ref), words(hyp)) for ref, hyp in pairs)
    total = sum(len(words(ref)) for ref, _ in pairs)
    return edits / total if total else 0.0

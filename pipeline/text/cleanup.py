"""Turning an agent's markdown into text a TTS voice can read.

Models write markdown even when asked not to, and TTS reads it literally ("star star") or chokes
on emoji. :class:`MarkdownCleaner` removes it from a *stream* of text deltas, so the sentence
splitter can work on clean text while the reply is still arriving:

* code fences: the fenced code is dropped entirely, fence lines included (read aloud, code is
  noise; the answer around it usually says what it does);
* line markup: ``>`` quotes, list markers ``- `` ``* `` ``+ `` ``1. `` ``1) ``, horizontal rules,
  table separator rows; ``|`` between table cells becomes a space;
* inline markup: ``*`` ``_`` `````` ``#`` ``\\`` are removed wherever they are; ``[text](url)``
  becomes ``text``;
* bare URLs are shortened to their host (``https://www.example.com/a?b=1`` → ``example.com``),
  which can be spoken and shown; e-mail addresses are kept as they are;
* emoji, pictographs, arrows, shapes, box drawing, joiners, variation selectors, private-use and
  control characters are removed; the emoji ``‼`` and ``⁉`` become ``!`` and ``?``, so the
  sentence end they mark survives.

Newlines are kept (they end sentences); other whitespace is left for :func:`tidy_whitespace`.
Every decision is taken only once the text it depends on has arrived (at most the rest of the
current line), so the output never depends on how the input was cut into deltas.
"""

from __future__ import annotations

import re
from enum import Enum

# Characters TTS cannot say.
_UNSPEAKABLE = (
    "\x00-\x08\x0b-\x1f\x7f"  # control characters except tab and newline (\r goes too)
    "\u00a9\u00ae\u2122\u2139\u24c2"  # © ® ™ ℹ Ⓜ
    "\u200b-\u200f\u2060-\u2064\ufeff"  # zero-width spaces, joiners, direction marks
    "\u2022\u2023\u2043"  # bullets
    "\u20e3"  # combining keycap
    "\u2190-\u21ff"  # arrows
    "\u2300-\u23ff"  # technical symbols (⌚ ⏰ ⏳)
    "\u2500-\u25ff"  # box drawing, blocks, geometric shapes
    "\u2600-\u27bf"  # miscellaneous symbols, dingbats
    "\u2900-\u297f\u2b00-\u2bff"  # more arrows and symbols
    "\u3030\u303d\u3297\u3299"  # 〰 〽 ㊗ ㊙
    "\ud800-\udfff"  # lone surrogates
    "\ue000-\uf8ff"  # private use
    "\ufe00-\ufe0f"  # variation selectors
    "\U0001f000-\U0001faff"  # emoji, flags, skin tones, pictographs
    "\U000e0000-\U000e007f\U000e0100-\U000e01ef"  # tags, variation selectors supplement
    "\U000f0000-\U0010ffff"  # supplementary private use
)
_DROP = re.compile(f"[{_UNSPEAKABLE}*_`#\\\\]+")
# Emoji that are punctuation too: the picture goes, the sentence end it marks stays.
_EMOJI_PUNCTUATION = str.maketrans({"\u203c": "!", "\u2049": "?"})  # ‼ ⁉

# A bare URL: scheme or "www." at the start of a word, then the ASCII characters a URL may hold
# (so a space, CJK text or a bracket ends it). Trailing .,;:!? belong to the sentence.
_URL_START = r"(?<![A-Za-z0-9@./-])(?:(https?://)|(www\.))"
_URL_BODY = re.compile(r"[A-Za-z0-9_\-.~:/?#@!$&+,;=%]*")  # RFC 3986 characters, minus ' ( ) * [ ]
_URL = re.compile(_URL_START + f"({_URL_BODY.pattern})", re.IGNORECASE)
_HOST_END = re.compile(r"[/?#:]")
_URL_TRAILING = ".,;:!?"
# A link or a URL is the only thing inline that needs to see ahead.
_SPECIAL = re.compile(r"\[|" + _URL_START, re.IGNORECASE)
# The end of the text might be the beginning of a URL ("htt", "https:/", "ww").
_URL_PARTIAL = re.compile(
    r"(?<![A-Za-z0-9@./-])(?:h(?:t(?:t(?:p(?:s?(?::/?)?)?)?)?)?|w(?:w(?:w)?)?)\Z", re.IGNORECASE
)
_LINK = re.compile(r"\[([^\[\]\n]{0,300})\]\(([^()\s]{0,500})\)")
_LINK_PARTIAL = re.compile(r"\[[^\[\]\n]{0,300}(?:\](?:\([^()\s]{0,500})?)?\Z")
# Deltas with none of the characters above can skip the inline scanner.
_PLAIN = re.compile(f"[^{_UNSPEAKABLE}\u203c\u2049*_`#\\\\\\[hHwW|\n]*")

# Line prefixes.
_BULLET = re.compile(r"[-*+][ \t]")
_ORDERED = re.compile(r"\d{1,3}[.)][ \t]")
_ORDERED_PARTIAL = re.compile(r"\d{1,3}[.)]?")
_FENCE_RUN = re.compile(r"`+|~+")
_RULE_CHARS = re.compile(r"[-*_ \t]*")
_TABLE_RULE_CHARS = re.compile(r"[|:\- \t]*")
# A line that still looks like a rule after this many characters is one: no need to wait longer.
_HOLD_MAX = 80


class _Line(Enum):
    START = "start"  # the line's prefix (quote, list marker, fence …) is not known yet
    TEXT = "text"  # ordinary text: the inline scanner runs
    DROP = "drop"  # the rest of the line is dropped (code, rules, table separators)


_DROP_LINE = -1


def _line_prefix(line: str, final: bool) -> int | str | None:
    """How much markup starts ``line``: a length to skip, ``_DROP_LINE``, a fence marker, or None.

    None means "cannot tell yet" (only when not ``final``, i.e. the line may still grow).
    """
    i, n = 0, len(line)
    while True:  # whitespace and quote markers, any number of them
        while i < n and line[i] in " \t":
            i += 1
        if i == n:
            return i if final else None
        if line[i] != ">":
            break
        i += 1
    c, rest = line[i], line[i : i + _HOLD_MAX]  # a decision never looks further than this
    if c in "`~":
        run = _FENCE_RUN.match(line, i).end()  # type: ignore[union-attr]  # c starts a run
        if run == len(line) and not final:
            return None  # a longer fence needs a longer one to close it: wait for the whole run
        return line[i:run] if run - i >= 3 else i
    if c in "-*_+":
        if c != "+" and _RULE_CHARS.fullmatch(rest):
            if not final and len(rest) < _HOLD_MAX:
                return None  # "- " may still become a list item, "--" a rule
            if sum(ch in "-*_" for ch in rest) >= 3:
                return _DROP_LINE
        m = _BULLET.match(line, i)
        if m:
            return m.end()
        return None if len(line) == i + 1 and not final else i
    if c.isdigit():
        m = _ORDERED.match(line, i)
        if m:
            return m.end()
        return None if _ORDERED_PARTIAL.fullmatch(line, i) and not final else i
    if c == "|" and _TABLE_RULE_CHARS.fullmatch(rest):
        if not final and len(rest) < _HOLD_MAX:
            return None
        return _DROP_LINE if "-" in rest else i
    return i


def _url_host(body: str) -> str:
    """What we say for a URL (given without its scheme): its host, without ``www.``."""
    host = re.split(r"[/?#:]", body, maxsplit=1)[0].rpartition("@")[2]
    return "" if host.lower() == "www" else host[4:] if host[:4].lower() == "www." else host


def _scan_inline(text: str, pos: int, final: bool, in_url: bool = False) -> tuple[str, int, bool]:
    """Clean ``text[pos:]`` (one line, no newline).

    Returns the output, how far it got, and whether it stopped inside a URL whose host has been
    said already (pass that back as ``in_url`` with the rest of the text: its path is skipped).
    Stops early, when not ``final``, before a link or URL whose end has not arrived yet.
    """
    out: list[str] = []
    n = len(text)
    if in_url:
        body = _URL_BODY.match(text, pos).group()  # type: ignore[union-attr]  # may be empty
        kept = len(body.rstrip(_URL_TRAILING))
        if pos + len(body) == n and not final:
            return "", pos + kept, True  # trailing .,;:!? may still be followed by more URL
        pos, in_url = pos + kept, False  # trailing .,;:!? end the sentence, not the URL
    while pos < n:
        m = _SPECIAL.search(text, pos)
        if m is None:
            stop = n
            if not final:
                tail = _URL_PARTIAL.search(text, max(pos, n - 7))
                if tail:
                    stop = tail.start()
            out.append(text[pos:stop])
            pos = stop
            break
        if m.start() > pos:
            out.append(text[pos : m.start()])
            pos = m.start()
        if text[pos] == "[":
            link = _LINK.match(text, pos)
            if link:
                out.append(_scan_inline(link.group(1), 0, True)[0])
                pos = link.end()
            elif not final and _LINK_PARTIAL.match(text, pos):
                break  # may still become a link
            else:
                out.append("[")
                pos += 1
            continue
        url = _URL.match(text, pos)
        assert url is not None  # _SPECIAL found its start here
        body = url.group(3)
        kept = len(body.rstrip(_URL_TRAILING))
        if url.end() == n and not final:
            host_end = _HOST_END.search(body, 0, kept)
            if host_end is None:
                break  # the host may go on
            # The host is complete: say it now and skip the rest of the URL as it arrives, so a
            # long URL is not rescanned on every delta.
            out.append(_url_host(body[:kept]))
            pos, in_url = url.start(3) + kept, True
            break
        out.append(_url_host(body[:kept]))
        pos = url.start(3) + kept
    return _DROP.sub("", "".join(out).translate(_EMOJI_PUNCTUATION)).replace("|", " "), pos, in_url


class MarkdownCleaner:
    """Removes markdown, URLs and emoji from a stream of text, keeping newlines.

    ``feed`` returns the clean text that is certain so far; ``flush`` the rest at the end of the
    reply (and makes the cleaner ready for the next one). The concatenated output is the same
    however the input is cut into deltas.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget any partial line and open code block."""
        self._line = ""  # the not yet processed part of the current line
        self._ctx = ""  # the raw character before it (URLs only start at a word boundary)
        self._state = _Line.START
        self._fence = ""  # the marker of the open code block, "" outside code
        self._in_url = False  # skipping the rest of a URL whose host was said

    def feed(self, text: str) -> str:
        """Clean the next delta; returns whatever is certain so far (possibly nothing)."""
        if (
            self._state is _Line.TEXT
            and not (self._line or self._in_url)
            and _PLAIN.fullmatch(text)
        ):
            if text:
                self._ctx = text[-1]
            return text  # the common case: plain words in the middle of a line
        out: list[str] = []
        start = 0
        while (newline := text.find("\n", start)) >= 0:
            self._line += text[start:newline]
            out.append(self._process(final=True))
            out.append("\n")
            self._line, self._ctx, self._state, self._in_url = "", "", _Line.START, False
            start = newline + 1
        self._line += text[start:]
        out.append(self._process(final=False))
        return "".join(out)

    def flush(self) -> str:
        """The end of the reply: return the remaining clean text and reset."""
        out = self._process(final=True)
        self.reset()
        return out

    def _process(self, final: bool) -> str:
        """Clean as much of the current line as can be decided (all of it when ``final``)."""
        if self._state is _Line.START:
            # Leading whitespace and quote markers are dropped on any line; dropping them as they
            # arrive keeps a long run of them from being rescanned on every delta.
            self._line = self._line.lstrip(" \t>")
            if self._fence:
                self._state = self._inside_fence(final)
                if self._state is _Line.START:
                    return ""
            else:
                prefix = _line_prefix(self._line, final)
                if prefix is None:
                    return ""
                if isinstance(prefix, str):
                    self._fence = prefix
                    self._state = _Line.DROP
                elif prefix == _DROP_LINE:
                    self._state = _Line.DROP
                else:
                    self._line = self._line[prefix:]
                    self._state = _Line.TEXT
        if self._state is _Line.DROP:
            self._line = ""
            return ""
        text = self._ctx + self._line
        out, pos, self._in_url = _scan_inline(text, len(self._ctx), final, self._in_url)
        if pos > len(self._ctx):
            self._ctx = text[pos - 1]
        self._line = text[pos:]
        return out

    def _inside_fence(self, final: bool) -> _Line:
        """In a code block, every line is dropped; one starting with the marker also closes it."""
        head = self._line.lstrip(" \t")
        if head.startswith(self._fence):
            self._fence = ""
            return _Line.DROP
        if self._fence.startswith(head) and not final:
            return _Line.START  # could still become the closing fence
        return _Line.DROP


_SPACE_BEFORE_PUNCT = re.compile(r" (?=[,.!?;:%，。！？；：、…)\]}”’」』）】》])")


def tidy_whitespace(text: str) -> str:
    """Runs of whitespace (newlines included) become one space; none at either end or before
    closing punctuation (left behind by a removed emoji: "Hi 😊." → "Hi.")."""
    return _SPACE_BEFORE_PUNCT.sub("", " ".join(text.split()))


def clean_text(text: str) -> str:
    """Clean a whole text at once: one line per non-empty line, whitespace collapsed.

    The same as feeding ``text`` to a :class:`MarkdownCleaner` and flushing, then tidying the
    whitespace of each line.
    """
    cleaner = MarkdownCleaner()
    raw = cleaner.feed(text) + cleaner.flush()
    return "\n".join(line for line in map(tidy_whitespace, raw.split("\n")) if line)

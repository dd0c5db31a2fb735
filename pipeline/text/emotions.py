"""Emoji → the emotion names the Xiaozhi firmware can show.

The device changes its face when the server sends ``{"type": "llm", "emotion": NAME, ...}``. The
firmware's displays (LCD emoji fonts, animated "emote" boards) know the 21 names in
:data:`EMOTIONS`; an unknown name just logs a warning on the device, so we only ever send these.

A reply that *opens* with an emoji (after optional whitespace) sets the face for that reply;
:class:`LeadingEmotion` finds it in a stream of text deltas. Emoji anywhere else are stripped
before TTS by :mod:`.cleanup` and have no effect.
"""

from __future__ import annotations

import re

from ..messages import Emotion

#: The names the firmware's displays understand, with the emoji its font draws for each.
EMOTIONS: dict[str, str] = {
    "neutral": "😶",
    "happy": "🙂",
    "laughing": "😆",
    "funny": "🤣",
    "sad": "😔",
    "angry": "😠",
    "crying": "😭",
    "loving": "😍",
    "embarrassed": "😳",
    "surprised": "😲",
    "shocked": "😱",
    "thinking": "🤔",
    "winking": "😉",
    "cool": "😎",
    "relaxed": "😌",
    "delicious": "🤤",
    "kissy": "😘",
    "confident": "😏",
    "sleepy": "😴",
    "silly": "😜",
    "confused": "🙄",
}

# Single-code-point emoji that models open replies with, grouped by the face that fits them best
# (written without variation selectors or skin tones: lookups strip those first).
_GROUPS: dict[str, str] = {
    "neutral": "😶😐😑🫥😒",
    "happy": "🙂😊😀😃😄😁☺🤗🥳🎉🎊✨🌟⭐👋😇🙌👏🌞☀🌈💐🌸🎈🎁",
    "laughing": "😂😆😹😸",
    "funny": "🤣🤪🤡",
    "sad": "😢😔😞😟🙁☹🥺😥😿💔😓",
    "angry": "😠😡🤬😤👿💢",
    "crying": "😭",
    "loving": "😍🥰😻❤♥💕💖💗💓💞💘💝🧡💛💚💙💜🤍🤎🖤💟🫶",
    "embarrassed": "😳😅🙈🤭🫣😬🫢",
    "surprised": "😲😮😯😦😧🙀👀❗❕⁉",
    "shocked": "😱🤯😨😰😵",
    "thinking": "🤔🧐🤨💭❓❔",
    "winking": "😉",
    "cool": "😎🤓🆒🕶",
    "relaxed": "😌🍵🧘",
    "delicious": "🤤😋🍰🍜🍲🍕🍔🍣🍦🍫🍓",
    "kissy": "😘😗😙😚💋",
    "confident": "😏👍💪👌✌🤞🏆💯",
    "sleepy": "😴😪🥱💤🛌🌙",
    "silly": "😜😛😝🙃",
    "confused": "🙄😕🫤🤷",
}
# Joined sequences whose meaning differs from their first emoji.
_SEQUENCES: dict[str, str] = {
    "😵\u200d💫": "confused",
    "❤\u200d🔥": "loving",
    "😮\u200d💨": "relaxed",
}

#: Every emoji we recognise, mapped to its emotion name.
EMOJI_EMOTIONS: dict[str, str] = {
    **{emoji: name for name, emojis in _GROUPS.items() for emoji in emojis},
    **_SEQUENCES,
}

# What may follow the first code point of an emoji and still belong to it: variation selectors,
# skin tones, a keycap mark, tag characters, or a zero-width joiner plus the next code point.
_CLUSTER = re.compile(
    r".(?:[\ufe0e\ufe0f\u20e3\U0001f3fb-\U0001f3ff\U000e0020-\U000e007f]|\u200d.?)*", re.DOTALL
)
_DECORATION = re.compile(r"[\ufe0e\ufe0f\u20e3\U0001f3fb-\U0001f3ff\U000e0020-\U000e007f]")
_FIRSTS = frozenset(emoji[0] for emoji in EMOJI_EMOTIONS)


def emotion_for(emoji: str) -> str | None:
    """The emotion name for one emoji (a whole cluster such as ``"❤️"`` or ``"😶‍🌫️"``), or None.

    Variation selectors and skin tones are ignored; a joined sequence we do not know falls back to
    its first emoji (``"😶‍🌫️"`` → neutral).
    """
    plain = _DECORATION.sub("", emoji)
    name = EMOJI_EMOTIONS.get(plain)
    if name is None and plain:
        name = EMOJI_EMOTIONS.get(plain.split("\u200d")[0])
    return name


def emotion_named(name: str) -> Emotion:
    """The :class:`Emotion` message for a firmware emotion name (``ValueError`` if unknown)."""
    try:
        return Emotion(name, EMOTIONS[name])
    except KeyError:
        raise ValueError(
            f"unknown emotion {name!r}; the firmware knows {', '.join(EMOTIONS)}"
        ) from None


class LeadingEmotion:
    """Finds the emoji a reply opens with, fed the reply's text deltas in order.

    Only the first non-whitespace character counts. The answer is given once the whole emoji is
    known (the character after it has arrived, or the reply ended), so it does not depend on how
    the text was cut into deltas.
    """

    def __init__(self) -> None:
        self._head = ""
        self.done = False

    def reset(self) -> None:
        """Forget everything: the next text is the start of a new reply."""
        self._head = ""
        self.done = False

    def feed(self, delta: str, final: bool = False) -> Emotion | None:
        """Take the next delta (``final``: the reply ended); return the emotion once it is found."""
        if self.done:
            return None
        head = self._head = (self._head + delta).lstrip()  # leading whitespace is never kept
        if not head:
            self.done = final
            return None
        if head[0] not in _FIRSTS:
            self._finish()
            return None
        cluster = _CLUSTER.match(head).group()  # type: ignore[union-attr]  # "." always matches
        if len(cluster) == len(head) and not final:
            return None  # a selector, skin tone or joined emoji may still follow
        self._finish()
        name = emotion_for(cluster)
        return Emotion(name, cluster) if name else None

    def _finish(self) -> None:
        self.done = True
        self._head = ""

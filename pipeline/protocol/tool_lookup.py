"""Which tool an agent means: the names bot owners actually give a tool.

A Coze bot owner names a local plugin's tool in Coze's UI, by hand, and an OpenAI-compatible model
may shorten a name it was given. The server's own function names
(``self__audio_speaker__set_volume``, see :mod:`.tools`) are exact but nobody guesses them. A
requested name is matched against the session's tools by these rules, the first rule that matches
any tool deciding:

1. the tool's own name: ``self.audio_speaker.set_volume``;
2. its function name: ``self__audio_speaker__set_volume``;
3. the same with each ``.`` written as ``_`` or ``__`` (or ``-``), in any case:
   ``self_audio_speaker_set_volume``, ``Self.Audio_Speaker.Set_Volume``;
4. its last dot-separated segments, written the same ways: ``set_volume``,
   ``audio_speaker.set_volume``, ``audio_speaker__set_volume``.

A rule that matches several tools (``set_volume`` of a speaker and of a music player) resolves
nothing: the agent is told which names are meant, and should use a full one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from .tools import function_name

_SEPARATORS = re.compile(r"[._-]+")
#: At most this many names are listed back to an agent that asked for an unknown tool.
MAX_LISTED = 40


@dataclass(frozen=True, slots=True)
class ToolLookup:
    """The outcome of resolving one requested name."""

    requested: str
    #: The tool meant, or None (no match, or an ambiguous one).
    tool: str | None
    #: Which rule matched: "name", "function", "separators", "segments", or "" for none.
    rule: str = ""
    #: The tools an ambiguous name could mean.
    candidates: tuple[str, ...] = ()


def _loose(name: str) -> str:
    """``name`` with case and separators ignored: ``self.Audio_speaker`` → ``self_audio_speaker``."""
    return _SEPARATORS.sub("_", name).strip("_").lower()


def _suffixes(tool: str) -> list[str]:
    """The loose forms of every proper run of trailing segments of ``tool``."""
    segments = tool.split(".")
    return [_loose(".".join(segments[i:])) for i in range(1, len(segments))]


def resolve_tool(requested: str, tools: Iterable[str]) -> ToolLookup:
    """The tool among ``tools`` that ``requested`` names (see the module docstring)."""
    names = list(dict.fromkeys(tools))
    loose = _loose(requested)
    rules = (
        ("name", lambda tool: tool == requested),
        ("function", lambda tool: function_name(tool) == requested),
        ("separators", lambda tool: bool(loose) and _loose(tool) == loose),
        ("segments", lambda tool: bool(loose) and loose in _suffixes(tool)),
    )
    for rule, matches in rules:
        found = [tool for tool in names if matches(tool)]
        if len(found) == 1:
            return ToolLookup(requested, found[0], rule)
        if found:
            return ToolLookup(requested, None, rule, tuple(found))
    return ToolLookup(requested, None)


def unresolved_message(lookup: ToolLookup, tools: Iterable[str], *, as_functions: bool = False) -> str:
    """What the agent is told when ``lookup`` found no single tool: the names it may use (the
    tools' own names, or with ``as_functions`` the function names a chat API was given)."""
    spell = function_name if as_functions else str
    if lookup.candidates:
        return (
            f"{lookup.requested!r} could mean any of {', '.join(map(spell, lookup.candidates))}; "
            "call the one you mean by its full name"
        )
    names = sorted({spell(tool) for tool in tools})
    if not names:
        return f"there is no tool called {lookup.requested!r}; no tools are available"
    listed = ", ".join(names[:MAX_LISTED]) + (f" and {len(names) - MAX_LISTED} more" if len(names) > MAX_LISTED else "")
    return f"there is no tool called {lookup.requested!r}; the tools are: {listed}"


def accepted_names(tool: str, tools: Iterable[str]) -> list[str]:
    """Short names that resolve to ``tool`` among ``tools`` besides its own and its function
    name (for ``xiaozhi-trio tools``): its trailing segments, where they are unambiguous."""
    others = [t for t in dict.fromkeys(tools) if t != tool]
    segments = tool.split(".")
    accepted = []
    for i in range(len(segments) - 1, 0, -1):
        short = "_".join(segments[i:])
        if resolve_tool(short, [tool, *others]).tool == tool:
            accepted.append(short)
    return accepted

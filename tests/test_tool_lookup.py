"""Resolving the tool names agents and bot owners write to the session's tools."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from xiaozhi_trio.pipeline.protocol.tool_lookup import (
    MAX_LISTED,
    accepted_names,
    resolve_tool,
    unresolved_message,
)
from xiaozhi_trio.pipeline.protocol.tools import function_name

DEVICE = [
    "self.get_device_status",
    "self.audio_speaker.set_volume",
    "self.screen.set_brightness",
    "self.screen.set_theme",
    "get_weather",  # a plugin tool
]


@pytest.mark.parametrize(
    ("requested", "tool", "rule"),
    [
        ("self.audio_speaker.set_volume", "self.audio_speaker.set_volume", "name"),
        ("self__audio_speaker__set_volume", "self.audio_speaker.set_volume", "function"),
        ("self_audio_speaker_set_volume", "self.audio_speaker.set_volume", "separators"),
        ("Self.Audio_Speaker.Set_Volume", "self.audio_speaker.set_volume", "separators"),
        ("self-audio-speaker-set-volume", "self.audio_speaker.set_volume", "separators"),
        ("set_volume", "self.audio_speaker.set_volume", "segments"),
        ("set.volume", "self.audio_speaker.set_volume", "segments"),
        ("audio_speaker.set_volume", "self.audio_speaker.set_volume", "segments"),
        ("audio_speaker__set_volume", "self.audio_speaker.set_volume", "segments"),
        ("get_device_status", "self.get_device_status", "segments"),
        ("set_theme", "self.screen.set_theme", "segments"),
        ("get_weather", "get_weather", "name"),
        ("GET_WEATHER", "get_weather", "separators"),
    ],
)
def test_names_people_write_resolve(requested: str, tool: str, rule: str) -> None:
    lookup = resolve_tool(requested, DEVICE)
    assert (lookup.tool, lookup.rule, lookup.candidates) == (tool, rule, ())


@pytest.mark.parametrize("requested", ["volume", "set_volum", "speaker", "self", "", "_", "self.audio_speaker", "weather"])
def test_names_that_are_no_tool_resolve_to_nothing(requested: str) -> None:
    lookup = resolve_tool(requested, DEVICE)
    assert lookup.tool is None and lookup.candidates == () and lookup.rule == ""


def test_an_ambiguous_short_name_resolves_to_nothing_and_names_the_candidates() -> None:
    tools = [*DEVICE, "self.music.set_volume"]
    lookup = resolve_tool("set_volume", tools)
    assert lookup.tool is None and lookup.rule == "segments"
    assert lookup.candidates == ("self.audio_speaker.set_volume", "self.music.set_volume")
    message = unresolved_message(lookup, tools)
    assert "self.audio_speaker.set_volume" in message and "self.music.set_volume" in message
    assert "full name" in message
    # The full names still work.
    assert resolve_tool("self_music_set_volume", tools).tool == "self.music.set_volume"
    assert resolve_tool("audio_speaker_set_volume", tools).tool == "self.audio_speaker.set_volume"


def test_a_stricter_rule_wins_over_a_looser_one() -> None:
    # A plugin tool named exactly like the device tool's last segment is the one meant.
    tools = ["self.audio_speaker.set_volume", "set_volume"]
    assert resolve_tool("set_volume", tools).tool == "set_volume"
    assert resolve_tool("self_audio_speaker_set_volume", tools).tool == "self.audio_speaker.set_volume"
    # Two tools that differ only in their separators: the exact spellings resolve, a loose one cannot.
    tools = ["a.b_c", "a_b.c"]
    assert resolve_tool("a.b_c", tools).tool == "a.b_c"
    assert resolve_tool(function_name("a_b.c"), tools).tool == "a_b.c"
    assert resolve_tool("a_b_c", tools).candidates == ("a.b_c", "a_b.c")


def test_the_unknown_tool_message_lists_every_valid_name() -> None:
    message = unresolved_message(resolve_tool("change_volume", DEVICE), DEVICE)
    assert message == "there is no tool called 'change_volume'; the tools are: " + ", ".join(sorted(DEVICE))
    assert unresolved_message(resolve_tool("x", []), []) == "there is no tool called 'x'; no tools are available"
    functions = unresolved_message(resolve_tool("x", DEVICE), DEVICE, as_functions=True)
    assert "self__audio_speaker__set_volume, self__get_device_status" in functions
    many = [f"self.light{i:03}.on" for i in range(MAX_LISTED + 7)]
    assert unresolved_message(resolve_tool("x", many), many).endswith(" and 7 more")


def test_accepted_names_are_the_unambiguous_short_forms() -> None:
    assert accepted_names("self.audio_speaker.set_volume", DEVICE) == ["set_volume", "audio_speaker_set_volume"]
    tools = [*DEVICE, "self.music.set_volume"]
    assert accepted_names("self.audio_speaker.set_volume", tools) == ["audio_speaker_set_volume"]
    assert accepted_names("get_weather", DEVICE) == []


_segment = st.text(alphabet="abcxyz_", min_size=1, max_size=6).filter(lambda s: s.strip("_") == s)


@given(st.lists(st.lists(_segment, min_size=1, max_size=4).map(".".join), min_size=1, max_size=6, unique=True))
def test_a_tools_own_name_and_function_name_always_resolve_to_it(tools: list[str]) -> None:
    for tool in tools:
        assert resolve_tool(tool, tools).tool == tool
        assert resolve_tool(function_name(tool), tools).tool == tool

"""The SSE parser: fields, comments, line endings, and the same events for any chunking."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from xiaozhi_trio.pipeline.protocol.sse import SseEvent, SseParser


def parse_all(data: bytes) -> list[SseEvent]:
    parser = SseParser()
    return parser.feed(data) + parser.end()


def test_coze_style_named_events() -> None:
    stream = (
        b'event:conversation.chat.created\ndata:{"id":"c1"}\n\n'
        b'event:conversation.message.delta\ndata:{"content":"\xe6\x98\x9f"}\n\n'
        b'event:done\ndata:"[DONE]"\n\n'
    )
    assert parse_all(stream) == [
        SseEvent("conversation.chat.created", '{"id":"c1"}'),
        SseEvent("conversation.message.delta", '{"content":"星"}'),
        SseEvent("done", '"[DONE]"'),
    ]


def test_openai_style_data_lines_with_space_and_crlf() -> None:
    stream = b'data: {"a":1}\r\n\r\n: keep-alive\r\n\r\ndata: [DONE]\r\n\r\n'
    assert parse_all(stream) == [SseEvent("message", '{"a":1}'), SseEvent("message", "[DONE]")]


def test_multi_line_data_is_joined_with_newlines() -> None:
    assert parse_all(b"data:one\ndata: two\ndata\n\n") == [SseEvent("message", "one\ntwo\n")]


def test_only_one_leading_space_is_removed_and_unknown_fields_ignored() -> None:
    assert parse_all(b"data:  x\nfoo: bar\n\n") == [SseEvent("message", " x")]


def test_id_persists_and_retry_is_recorded() -> None:
    parser = SseParser()
    events = parser.feed(b"id: 7\nretry: 1500\ndata: a\n\ndata: b\n\n")
    assert events == [SseEvent("message", "a", "7"), SseEvent("message", "b", "7")]
    assert parser.retry_ms == 1500


def test_comment_only_blocks_dispatch_nothing() -> None:
    assert parse_all(b": ping\n\n\n\n") == []


def test_bare_event_line_is_dispatched_with_empty_data() -> None:
    assert parse_all(b"event: done\n\n") == [SseEvent("done", "")]


def test_lone_cr_ends_lines() -> None:
    assert parse_all(b"data: a\r\rdata: b\r\r") == [SseEvent("message", "a"), SseEvent("message", "b")]


def test_crlf_split_across_chunks_is_one_line_end() -> None:
    parser = SseParser()
    assert parser.feed(b"data: a\r") == []
    assert parser.feed(b"\n\r") == []
    assert parser.feed(b"\n") == [SseEvent("message", "a")]


def test_byte_order_mark_is_skipped_even_when_split() -> None:
    parser = SseParser()
    assert parser.feed(b"\xef") == []
    assert parser.feed(b"\xbb\xbfdata: x\n\n") == [SseEvent("message", "x")]


def test_end_hands_out_an_unterminated_last_event() -> None:
    parser = SseParser()
    assert parser.feed(b"data: a\n\ndata: tail") == [SseEvent("message", "a")]
    assert parser.end() == [SseEvent("message", "tail")]
    assert parser.end() == []


def test_invalid_utf8_is_replaced_not_raised() -> None:
    assert parse_all(b"data: \xff\n\n") == [SseEvent("message", "\ufffd")]


_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=20)
_field = st.one_of(
    st.builds(lambda v: f"data:{v}", _text),
    st.builds(lambda v: f"data: {v}", _text),
    st.builds(lambda v: f"event:{v}", _text),
    st.builds(lambda v: f": {v}", _text),
    st.builds(lambda v: f"id: {v}", _text.filter(lambda s: "\0" not in s)),
    st.just(""),
)


@st.composite
def streams_and_chunkings(draw: st.DrawFn) -> tuple[bytes, list[int]]:
    lines = draw(st.lists(_field, max_size=30))
    newline = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    data = ("\ufeff" if draw(st.booleans()) else "") + "".join(line + newline for line in lines) + newline
    raw = data.encode()
    cuts = sorted(draw(st.lists(st.integers(0, len(raw)), max_size=12)))
    return raw, cuts


@settings(max_examples=300)
@given(streams_and_chunkings())
def test_any_chunking_gives_the_same_events(case: tuple[bytes, list[int]]) -> None:
    raw, cuts = case
    expected = parse_all(raw)
    parser = SseParser()
    events: list[SseEvent] = []
    previous = 0
    for cut in [*cuts, len(raw)]:
        events += parser.feed(raw[previous:cut])
        previous = cut
    events += parser.end()
    assert events == expected


@given(st.lists(st.text(max_size=10).map(lambda s: s.replace("\r", "").replace("\n", "")), min_size=1, max_size=5))
def test_data_round_trips_through_byte_at_a_time_feeding(values: list[str]) -> None:
    raw = "".join(f"data: {v}\n\n" for v in values).encode()
    parser = SseParser()
    events = [e for i in range(len(raw)) for e in parser.feed(raw[i : i + 1])]
    assert [e.data for e in events] == values

"""The OpenAI-compatible stream decoder and the think-block filter, both sans-IO: any chunking
of the bytes gives the same answer, tool calls and end state."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st
from xiaozhi_trio.plugins.openai_chat.stream import ChatStreamDecoder, ThinkFilter

from xiaozhi_trio.plugins.testing.fakes.fake_openai import Stream, text_reply, tool_call_reply

def encoded(stream: Stream) -> bytes:
    out = b""
    for event in stream.events:
        out += (
            event
            if isinstance(event, bytes)
            else b"data: " + json.dumps(event, ensure_ascii=False).encode() + stream.newline * 2
        )
    return out + (b"data: [DONE]" + stream.newline * 2 if stream.done else b"")


def decode(data: bytes, cuts: list[int]) -> tuple[str, list[tuple[str, str, str]], bool, str | None]:
    decoder = ChatStreamDecoder()
    think = ThinkFilter()
    texts: list[str] = []
    previous = 0
    for cut in [*sorted(cuts), len(data)]:
        texts += [think.feed(t) for t in decoder.feed(data[previous:cut])]
        previous = cut
    texts += [think.feed(t) for t in decoder.end()] + [think.end()]
    calls = [(c.id, c.name, c.arguments) for c in decoder.tool_calls]
    return "".join(texts), calls, decoder.done, decoder.finish_reason


_pieces = st.lists(st.text(max_size=8), max_size=6)


@settings(max_examples=200)
@given(
    st.data(),
    _pieces,
    st.lists(st.tuples(st.text(min_size=1, max_size=5), st.text(max_size=30)), max_size=3),
    st.sampled_from([b"\n", b"\r\n"]),
)
def test_the_decoder_gives_the_same_answer_for_any_chunking(
    data: st.DataObject, pieces: list[str], calls: list[tuple[str, str]], newline: bytes
) -> None:
    text_stream = text_reply(*pieces, reasoning=("thinking…",), newline=newline)
    tool_stream = tool_call_reply(
        [(f"id{i}", name, args) for i, (name, args) in enumerate(calls)], pieces=3, newline=newline
    )
    for stream in (text_stream, tool_stream):
        raw = encoded(stream)
        whole = decode(raw, [])
        cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=10))
        assert decode(raw, cuts) == whole
        assert whole[2] is True
    if "<" not in "".join(pieces):
        assert decode(encoded(text_stream), [])[0] == "".join(pieces)
    assert decode(encoded(tool_stream), [])[1] == [(f"id{i}", name, args) for i, (name, args) in enumerate(calls)]


@given(st.text(alphabet="<>/thinkab ", max_size=40), st.data())
def test_think_filter_is_chunking_independent(text: str, data: st.DataObject) -> None:
    def run(pieces: list[str]) -> str:
        f = ThinkFilter()
        return "".join(f.feed(p) for p in pieces) + f.end()

    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=6)))
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    assert run(pieces) == run([text])
    if "<think>" not in text:
        assert run([text]) == text


def test_think_filter_examples() -> None:
    f = ThinkFilter()
    assert f.feed("<think>plan") == ""
    assert f.feed("</think>Hi <b") == "Hi <b"
    assert f.feed("old> <th") == "old> "
    assert f.feed("ought>") == "<thought>"
    assert f.end() == ""


def test_decoder_pieces_without_index_and_unknown_chunks() -> None:
    decoder = ChatStreamDecoder()
    raw = (
        b'data: {"choices":[{"delta":{"tool_calls":[{"id":"a","function":{"name":"f","arguments":{"x":1}}},'
        b'{"id":"b","function":{"name":"g","arguments":"{}"}}]}}]}\n\n'
        b"data: not json\n\n"
        b'data: {"choices":[]}\n\n'
        b"data: [1]\n\n"
        b"data: [DONE]\n\n"
        b'data: {"choices":[{"delta":{"content":"after done"}}]}\n\n'
    )
    assert decoder.feed(raw) == []
    assert [(c.id, c.name, c.arguments) for c in decoder.tool_calls] == [("a", "f", '{"x": 1}'), ("b", "g", "{}")]
    assert decoder.malformed_chunks == 2 and decoder.done

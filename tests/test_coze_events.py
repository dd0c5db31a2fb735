"""Decoding Coze chat v3 streams: every event kind, and the same events for any chunking."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st
from xiaozhi_trio.plugins.coze.events import (
    AnswerCompleted,
    AnswerDelta,
    ChatCompleted,
    ChatFailed,
    ChatStarted,
    CozeEvent,
    CozeEventDecoder,
    Done,
    Malformed,
    RequiresAction,
    Skipped,
    StreamError,
    ToolCall,
    Usage,
)

CHAT = '{"id":"7501","conversation_id":"7500","bot_id":"7499","created_at":1735000000,"last_error":{"code":0,"msg":""},"status":"%s","usage":{"token_count":%d,"output_count":%d,"input_count":%d},"section_id":"7500"}'
MESSAGE = '{"id":"7502","conversation_id":"7500","bot_id":"7499","role":"assistant","type":"%s","content":%s,"content_type":"text","chat_id":"7501","section_id":"7500"}'


def message(kind: str, content: str) -> str:
    return MESSAGE % (kind, json.dumps(content, ensure_ascii=False))


# A stream in the byte format of Coze's recorded streams: no space after the colon, compact JSON,
# raw UTF-8, and (as in the recordings) no blank line after the last event.
TEXT_STREAM = "".join(
    f"event:{name}\ndata:{data}\n\n"
    for name, data in [
        ("conversation.chat.created", CHAT % ("created", 0, 0, 0)),
        ("conversation.chat.in_progress", CHAT % ("in_progress", 0, 0, 0)),
        ("conversation.message.delta", MESSAGE.replace('"content":%s', '"content":"","reasoning_content":"用户问星期"') % "answer"),
        ("conversation.message.delta", message("answer", "今天")),
        ("conversation.message.delta", message("answer", "是星期三。")),
        ("conversation.message.delta", message("answer", " Let's go 🌳!")),
        ("conversation.message.completed", message("answer", "今天是星期三。 Let's go 🌳!")),
        ("conversation.message.completed", message("verbose", '{"msg_type":"generate_answer_finish","data":"{\\"finish_reason\\":0}"}')),
        ("conversation.message.completed", message("follow_up", "明天星期几？")),
        ("conversation.chat.completed", CHAT % ("completed", 633, 19, 614)),
    ]
) + 'event:done\ndata:"[DONE]"'

TEXT_EVENTS: list[CozeEvent] = [
    ChatStarted("7501", "7500", "created"),
    ChatStarted("7501", "7500", "in_progress"),
    Skipped("conversation.message.delta", "reasoning"),
    AnswerDelta("今天", "7501"),
    AnswerDelta("是星期三。", "7501"),
    AnswerDelta(" Let's go 🌳!", "7501"),
    AnswerCompleted("今天是星期三。 Let's go 🌳!", "7501"),
    Skipped("conversation.message.completed", "verbose"),
    Skipped("conversation.message.completed", "follow_up"),
    ChatCompleted("7501", "7500", Usage(token_count=633, input_count=614, output_count=19)),
    Done(),
]


def decode(data: bytes, cuts: list[int] | None = None) -> list[CozeEvent]:
    decoder = CozeEventDecoder()
    events: list[CozeEvent] = []
    start = 0
    for cut in sorted(cuts or []):
        events += decoder.feed(data[start:cut])
        start = cut
    events += decoder.feed(data[start:])
    return events + decoder.end()


def test_text_stream() -> None:
    assert decode(TEXT_STREAM.encode()) == TEXT_EVENTS


def test_one_byte_at_a_time_with_crlf() -> None:
    data = TEXT_STREAM.replace("\n", "\r\n").encode()
    assert decode(data, list(range(1, len(data)))) == TEXT_EVENTS


@settings(max_examples=300, deadline=None)
@given(
    newline=st.sampled_from(["\n", "\r\n", "\r"]),
    cut_fractions=st.lists(st.floats(min_value=0.0, max_value=1.0), max_size=40),
    final_blank_line=st.booleans(),
)
def test_any_chunking_gives_the_same_events(newline: str, cut_fractions: list[float], final_blank_line: bool) -> None:
    text = TEXT_STREAM + ("\n\n" if final_blank_line else "")
    data = text.replace("\n", newline).encode()
    cuts = [round(f * len(data)) for f in cut_fractions]
    assert decode(data, cuts) == TEXT_EVENTS


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_utf8_characters_split_anywhere(data: st.DataObject) -> None:
    raw = TEXT_STREAM.encode()
    # Cut only inside multi-byte characters, where a careless decoder breaks.
    inside = [i for i in range(1, len(raw)) if raw[i] & 0xC0 == 0x80]
    cuts = data.draw(st.lists(st.sampled_from(inside), min_size=1, max_size=30))
    assert decode(raw, cuts) == TEXT_EVENTS


def test_failed_chat() -> None:
    data = ('event:conversation.chat.failed\ndata:{"id":"7390","conversation_id":"7391","bot_id":"7374",'
            '"completed_at":1720698285,"failed_at":1720698286,"last_error":{"code":5000,"msg":"event interval error"},'
            '"status":"failed","usage":{"token_count":0,"output_count":0,"input_count":0}}')
    assert decode(data.encode()) == [ChatFailed("7390", "7391", 5000, "event interval error")]


def test_error_events() -> None:
    assert decode(b"event:error\ndata:{}") == [StreamError(0, "")]
    assert decode(b'event:error\ndata:{"code":4013,"msg":"rate limit"}\n\n') == [StreamError(4013, "rate limit")]


def test_unknown_and_audio_events_are_skipped() -> None:
    data = (b"event:invalid\ndata:{}\n\n"
            b'event:conversation.audio.delta\ndata:{"type":"answer","content":"KgAxAC8A","content_type":"audio"}\n\n'
            b": keep-alive comment\n\n"
            b'event:done\ndata:"[DONE]"\n\n')
    assert decode(data) == [Skipped("invalid", "unknown_event"), Skipped("conversation.audio.delta", "audio"), Done()]


def test_tool_and_card_messages_are_not_spoken() -> None:
    events = [f"event:conversation.message.delta\ndata:{message(kind, 'x')}\n\n"
              for kind in ("function_call", "tool_output", "tool_response", "verbose", "follow_up")]
    card = MESSAGE.replace('"content_type":"text"', '"content_type":"card"') % ("answer", '"{}"')
    user = MESSAGE.replace('"role":"assistant"', '"role":"user"') % ("question", '"hi"')
    events += [f"event:conversation.message.delta\ndata:{card}\n\n", f"event:conversation.message.delta\ndata:{user}\n\n"]
    reasons = [e.reason for e in decode("".join(events).encode()) if isinstance(e, Skipped)]
    assert reasons == ["function_call", "tool_output", "tool_response", "verbose", "follow_up", "non_text", "not_assistant"]


def test_requires_action() -> None:
    action = {"type": "submit_tool_outputs", "submit_tool_outputs": {"tool_calls": [
        {"id": "call-1", "type": "function",
         "function": {"name": "self__audio_speaker__set_volume", "arguments": '{"volume":30}'}},
        {"id": "call-2", "type": "function", "function": {"name": "get_time", "arguments": {"tz": "Asia/Shanghai"}}},
    ]}}
    chat = json.loads(CHAT % ("requires_action", 0, 0, 0)) | {"required_action": action}
    data = f"event:conversation.chat.requires_action\ndata:{json.dumps(chat)}\n\nevent:done\ndata:\"[DONE]\"\n\n"
    assert decode(data.encode()) == [
        RequiresAction("7501", "7500", (
            ToolCall("call-1", "self__audio_speaker__set_volume", '{"volume":30}'),
            ToolCall("call-2", "get_time", '{"tz": "Asia/Shanghai"}'),
        )),
        Done(),
    ]


def test_malformed_data_is_reported_not_raised() -> None:
    events = decode(b"event:conversation.message.delta\ndata:{not json\n\n"
                    b"event:conversation.chat.completed\ndata:[1,2]\n\n"
                    b'event:conversation.chat.failed\ndata:{"status":"failed"}\n\n'
                    b'event:conversation.message.delta\ndata:{"type":"answer","content":5}\n\n')
    assert [type(e) for e in events] == [Malformed] * 4
    assert all(isinstance(e, Malformed) and e.detail for e in events)


def test_invalid_utf8_does_not_raise() -> None:
    data = b'event:conversation.message.delta\ndata:{"type":"answer","content":"ok\xff","chat_id":"1"}\n\n'
    assert decode(data) == [AnswerDelta("ok\ufffd", "1")]

"""The device binary framing: byte layouts as the firmware writes them, round trips, bad input."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xiaozhi_trio.pipeline.audio.framing import (
    SUPPORTED_VERSIONS,
    FramingError,
    JsonFrame,
    pack,
    unpack,
)
from xiaozhi_trio.pipeline.messages import OpusPacket

u32 = st.integers(min_value=0, max_value=2**32 - 1)


# --- byte layouts, written out by hand from the firmware's BinaryProtocol2/3 structs ---


def test_v1_is_the_raw_packet() -> None:
    assert unpack(1, b"\x58\x01\x02") == OpusPacket(b"\x58\x01\x02")
    assert pack(1, OpusPacket(b"\x58\x01\x02", timestamp_ms=99)) == b"\x58\x01\x02"


def test_v2_layout() -> None:
    message = (
        b"\x00\x02"  # version
        b"\x00\x00"  # type: opus
        b"\x00\x00\x00\x00"  # reserved
        b"\x00\x01\x02\x03"  # timestamp_ms
        b"\x00\x00\x00\x03"  # payload_size
        b"abc"
    )
    assert unpack(2, message) == OpusPacket(b"abc", timestamp_ms=0x010203)
    assert pack(2, OpusPacket(b"abc", timestamp_ms=0x010203)) == message


def test_v3_layout() -> None:
    message = b"\x00\x00\x00\x03abc"  # type opus, reserved, payload_size 3 big-endian
    assert unpack(3, message) == OpusPacket(b"abc")
    assert pack(3, OpusPacket(b"abc", timestamp_ms=5)) == message


def test_json_frames() -> None:
    text = '{"type":"listen","state":"start","mode":"auto","note":"你好"}'
    payload = text.encode()
    v2 = struct.pack(">HHIII", 2, 1, 0, 0, len(payload)) + payload
    v3 = struct.pack(">BBH", 1, 0, len(payload)) + payload
    assert unpack(2, v2) == JsonFrame(text)
    assert unpack(3, v3) == JsonFrame(text)


def test_reserved_and_version_fields_are_not_checked() -> None:
    # The firmware writes these but never reads them back.
    assert unpack(2, struct.pack(">HHIII", 7, 0, 0xDEADBEEF, 1, 2) + b"xy") == OpusPacket(b"xy", 1)
    assert unpack(3, struct.pack(">BBH", 0, 0xAB, 2) + b"xy") == OpusPacket(b"xy")


def test_v2_timestamp_wraps_like_a_u32_clock() -> None:
    message = pack(2, OpusPacket(b"x", timestamp_ms=2**32 + 5))
    assert unpack(2, message) == OpusPacket(b"x", timestamp_ms=5)


def test_empty_payload_in_a_header_passes_through_to_the_decoder() -> None:
    assert unpack(2, struct.pack(">HHIII", 2, 0, 0, 0, 0)) == OpusPacket(b"")
    assert unpack(3, b"\x00\x00\x00\x00") == OpusPacket(b"")


# --- specific errors ---


@pytest.mark.parametrize(
    ("version", "message", "error"),
    [
        (1, b"", "empty binary message"),
        (2, b"", "empty binary message"),
        (3, b"", "empty binary message"),
        (2, b"\x00\x02\x00\x00", "4 bytes is shorter than the 16-byte v2 header"),
        (3, b"\x00\x00\x01", "3 bytes is shorter than the 4-byte v3 header"),
        (2, struct.pack(">HHIII", 2, 0, 0, 0, 300) + bytes(120), "v2 header says 300 bytes of payload but 120 arrived"),
        (2, struct.pack(">HHIII", 2, 0, 0, 0, 1) + bytes(3), "v2 header says 1 bytes of payload but 3 arrived"),
        (3, struct.pack(">BBH", 0, 0, 10) + bytes(9), "v3 header says 10 bytes of payload but 9 arrived"),
        (2, struct.pack(">HHIII", 2, 7, 0, 0, 1) + b"x", "unknown frame type 7 in a v2 message"),
        (3, struct.pack(">BBH", 255, 0, 1) + b"x", "unknown frame type 255 in a v3 message"),
        (3, struct.pack(">BBH", 1, 0, 2) + b"\xc3\x28", "v3 JSON payload is not valid UTF-8"),
        (4, b"\x00", "unsupported binary protocol version 4"),
        (0, b"\x00", "unsupported binary protocol version 0"),
    ],
)
def test_unpack_errors(version: int, message: bytes, error: str) -> None:
    with pytest.raises(FramingError, match=error):
        unpack(version, message)


def test_pack_errors() -> None:
    with pytest.raises(FramingError, match="unsupported binary protocol version 5"):
        pack(5, OpusPacket(b"x"))
    with pytest.raises(FramingError, match="empty Opus packet in v1"):
        pack(1, OpusPacket(b""))
    with pytest.raises(FramingError, match="65536 bytes exceeds the v3 limit of 65535"):
        pack(3, OpusPacket(bytes(65536)))


def test_framing_error_is_a_value_error() -> None:
    assert issubclass(FramingError, ValueError)
    assert SUPPORTED_VERSIONS == (1, 2, 3)


def test_v3_largest_payload_round_trips() -> None:
    data = bytes(range(256)) * 255 + bytes(range(255))
    assert len(data) == 65535
    assert unpack(3, pack(3, OpusPacket(data))) == OpusPacket(data)


# --- properties ---


@given(data=st.binary(min_size=1, max_size=4000), timestamp=u32)
def test_v1_round_trip(data: bytes, timestamp: int) -> None:
    assert unpack(1, pack(1, OpusPacket(data, timestamp))) == OpusPacket(data)


@given(data=st.binary(max_size=4000), timestamp=u32)
def test_v2_round_trip(data: bytes, timestamp: int) -> None:
    message = pack(2, OpusPacket(data, timestamp))
    assert len(message) == 16 + len(data)
    assert unpack(2, message) == OpusPacket(data, timestamp)


@given(data=st.binary(max_size=65535), timestamp=u32)
def test_v3_round_trip(data: bytes, timestamp: int) -> None:
    message = pack(3, OpusPacket(data, timestamp))
    assert len(message) == 4 + len(data)
    assert unpack(3, message) == OpusPacket(data)  # v3 carries no timestamp


@given(version=st.sampled_from([2, 3]), data=st.binary(max_size=500), cut=st.integers(min_value=1))
def test_truncated_messages_are_rejected(version: int, data: bytes, cut: int) -> None:
    message = pack(version, OpusPacket(data))
    truncated = message[: len(message) - 1 - cut % len(message)]
    with pytest.raises(FramingError):
        unpack(version, truncated)


@given(version=st.sampled_from([2, 3]), data=st.binary(max_size=500), extra=st.binary(min_size=1, max_size=50))
def test_trailing_bytes_are_rejected(version: int, data: bytes, extra: bytes) -> None:
    with pytest.raises(FramingError, match="bytes of payload but"):
        unpack(version, pack(version, OpusPacket(data)) + extra)


@given(
    version=st.sampled_from([2, 3]),
    data=st.binary(max_size=500),
    declared=st.integers(min_value=0, max_value=0xFFFF),
)
def test_wrong_declared_size_is_rejected(version: int, data: bytes, declared: int) -> None:
    if version == 2:
        message = struct.pack(">HHIII", 2, 0, 0, 0, declared) + data
    else:
        message = struct.pack(">BBH", 0, 0, declared) + data
    if declared == len(data):
        assert unpack(version, message) == OpusPacket(data)
    else:
        with pytest.raises(FramingError, match=f"header says {declared} bytes of payload but {len(data)} arrived"):
            unpack(version, message)


@given(version=st.integers(min_value=-5, max_value=10), message=st.binary(max_size=300))
def test_random_bytes_parse_or_raise_framing_error(version: int, message: bytes) -> None:
    try:
        result = unpack(version, message)
    except FramingError:
        return
    assert version in SUPPORTED_VERSIONS
    assert isinstance(result, OpusPacket | JsonFrame)


@given(
    version=st.sampled_from([2, 3]),
    frame_type=st.integers(min_value=0, max_value=255),
    payload=st.binary(max_size=300),
)
def test_any_frame_type_parses_or_raises_framing_error(version: int, frame_type: int, payload: bytes) -> None:
    if version == 2:
        message = struct.pack(">HHIII", 2, frame_type, 0, 0, len(payload)) + payload
    else:
        message = struct.pack(">BBH", frame_type, 0, len(payload)) + payload
    try:
        result = unpack(version, message)
    except FramingError as exc:
        assert frame_type != 0
        assert "unknown frame type" in str(exc) or "not valid UTF-8" in str(exc)
        return
    if frame_type == 0:
        assert result == OpusPacket(payload)
    else:
        assert frame_type == 1 and result == JsonFrame(payload.decode())

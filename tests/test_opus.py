"""Opus: frame-exact, chunking-independent encoding; decoding that survives bad packets."""

from __future__ import annotations

import av
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xiaozhi_trio.pipeline.audio.opus import (
    ENCODER_RATES,
    FRAME_DURATIONS_MS,
    BadAudio,
    OpusDecoder,
    OpusEncoder,
)

#: Packets libopus rejects outright (code-3 packets with no frames, truncated lengths, ...).
INVALID_PACKETS = [b"\xfb", b"\xfb\x00", b"\xfa\xff", b"\x03\x00", b"\xfa\xfc\xff"]


def tone(freq: float, rate: int, seconds: float, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(round(rate * seconds)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def speechlike(rate: int, seconds: float, seed: int = 0) -> np.ndarray:
    """Two tones plus noise, with a loudness envelope: exercises the codec's mode decisions."""
    rng = np.random.default_rng(seed)
    n = round(rate * seconds)
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * np.arange(n) / rate)
    mix = tone(220, rate, seconds, 0.3) + tone(1300, rate, seconds, 0.1) + 0.05 * rng.standard_normal(n)
    return (envelope * mix).astype(np.float32)


def dominant_frequency(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.argmax(spectrum) * rate / len(samples))


def decoded_lengths(packets: list[bytes]) -> list[int]:
    """Samples per packet at 48 kHz (the decoder's native rate, so nothing is resampled)."""
    decoder = OpusDecoder(output_rate=48000)
    return [len(decoder.decode(packet)) for packet in packets]


# --- encoder ---


@pytest.mark.parametrize("rate", ENCODER_RATES)
@pytest.mark.parametrize("frame_ms", FRAME_DURATIONS_MS)
def test_every_packet_lasts_exactly_frame_ms(rate: int, frame_ms: int) -> None:
    encoder = OpusEncoder(sample_rate=rate, frame_ms=frame_ms)
    assert encoder.frame_samples == rate * frame_ms // 1000
    samples = speechlike(rate, 0.5)
    packets = encoder.encode(samples) + encoder.flush()
    assert len(packets) == -(-len(samples) // encoder.frame_samples)
    # The device drops downlink packets longer than the hello's frame_duration.
    assert decoded_lengths(packets) == [48 * frame_ms] * len(packets)


@pytest.mark.parametrize("frame_ms", [20, 40, 60])
def test_one_packet_per_whole_frame_without_delay(frame_ms: int) -> None:
    encoder = OpusEncoder(sample_rate=24000, frame_ms=frame_ms)
    frame = encoder.frame_samples
    samples = speechlike(24000, 1.0)
    assert len(encoder.encode(samples[: frame - 1])) == 0
    assert len(encoder.encode(samples[frame - 1 : frame])) == 1  # completes the first frame
    assert len(encoder.encode(samples[frame : 4 * frame])) == 3
    assert len(encoder.encode(samples[4 * frame : 4 * frame + frame // 2])) == 0
    assert len(encoder.flush()) == 1
    assert encoder.flush() == []


@settings(max_examples=25, deadline=None)
@given(
    rate=st.sampled_from([16000, 24000]),
    frame_ms=st.sampled_from([20, 40, 60]),
    seconds=st.floats(min_value=0.0, max_value=0.7),
    cuts=st.lists(st.integers(min_value=0), max_size=20),
)
def test_any_chunking_gives_identical_packets(rate: int, frame_ms: int, seconds: float, cuts: list[int]) -> None:
    samples = speechlike(rate, seconds)
    whole = OpusEncoder(rate, frame_ms)
    expected = whole.encode(samples) + whole.flush()
    chunked = OpusEncoder(rate, frame_ms)
    pieces = np.split(samples, sorted(c % (len(samples) + 1) for c in cuts))
    packets = [packet for piece in pieces for packet in chunked.encode(piece)] + chunked.flush()
    assert packets == expected


def test_encoder_keeps_working_after_flush() -> None:
    encoder = OpusEncoder(sample_rate=24000, frame_ms=60)
    samples = speechlike(24000, 0.25)
    first = encoder.encode(samples) + encoder.flush()
    second = encoder.encode(samples) + encoder.flush()
    assert len(first) == len(second) == 5
    assert decoded_lengths(first + second) == [2880] * 10


def test_reset_drops_buffered_audio_and_restarts_the_codec() -> None:
    samples = speechlike(24000, 0.3)
    fresh = OpusEncoder(24000, 60)
    expected = fresh.encode(samples) + fresh.flush()
    encoder = OpusEncoder(24000, 60)
    encoder.encode(speechlike(24000, 0.5, seed=1))  # a reply interrupted mid-frame
    encoder.reset()
    assert encoder.encode(samples) + encoder.flush() == expected


def test_bitrate_is_applied() -> None:
    samples = speechlike(24000, 2.0)
    sizes = {}
    for bitrate in (12000, 48000):
        encoder = OpusEncoder(24000, 60, bitrate=bitrate)
        packets = encoder.encode(samples) + encoder.flush()
        sizes[bitrate] = sum(map(len, packets)) * 8 / 2.0
        assert 0.5 * bitrate < sizes[bitrate] < 1.3 * bitrate
    assert sizes[48000] > 2 * sizes[12000]


def test_out_of_range_samples_are_clipped_not_wrapped() -> None:
    encoder = OpusEncoder(16000, 20)
    loud = tone(440, 16000, 0.4, amplitude=3.0)
    packets = encoder.encode(loud) + encoder.flush()
    decoder = OpusDecoder(16000)
    out = np.concatenate([decoder.decode(p) for p in packets])
    assert abs(dominant_frequency(out, 16000) - 440) < 10


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"sample_rate": 22050}, "cannot encode at 22050 Hz"),
        ({"frame_ms": 30}, "no 30 ms frames"),
        ({"bitrate": 1000}, "bitrate must be"),
    ],
)
def test_encoder_rejects_bad_settings(kwargs: dict[str, int], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        OpusEncoder(**kwargs)


def test_encoder_rejects_non_mono() -> None:
    with pytest.raises(ValueError, match="expected mono samples"):
        OpusEncoder().encode(np.zeros((2, 960), dtype=np.float32))


# --- decoder ---


@pytest.mark.parametrize("encode_rate", [16000, 24000])
@pytest.mark.parametrize("output_rate", [16000, 24000])
@pytest.mark.parametrize("frame_ms", [20, 40, 60])
def test_round_trip_keeps_rate_and_pitch(encode_rate: int, output_rate: int, frame_ms: int) -> None:
    encoder = OpusEncoder(sample_rate=encode_rate, frame_ms=frame_ms)
    packets = encoder.encode(tone(750, encode_rate, 1.2)) + encoder.flush()
    decoder = OpusDecoder(output_rate=output_rate)
    chunks = [decoder.decode(packet) for packet in packets]
    out = np.concatenate(chunks)
    assert out.dtype == np.float32 and out.ndim == 1
    # All decoded audio but the resampler's held-back delay (under 30 ms).
    expected = len(packets) * output_rate * frame_ms // 1000
    assert expected - output_rate * 0.03 <= len(out) <= expected
    body = out[output_rate // 10 : -output_rate // 10]
    assert abs(dominant_frequency(body, output_rate) - 750) < 5
    assert 0.3 < np.max(np.abs(body)) < 0.7


def test_decodes_firmware_style_uplink_with_dtx() -> None:
    # The firmware encodes its microphone at 16 kHz, 60 ms, application "audio" with DTX on, so
    # silence arrives as tiny packets that must decode to silence of the full length.
    codec = av.CodecContext.create("libopus", "w")
    codec.sample_rate, codec.layout, codec.format = 16000, "mono", "s16"
    codec.options = {"application": "audio", "frame_duration": "60", "dtx": "1"}
    codec.open()
    pcm = np.zeros(960 * 33, dtype=np.int16)
    pcm[:8000] = (tone(500, 16000, 0.5) * 32767).astype(np.int16)
    packets = []
    for start in range(0, len(pcm), 960):
        frame = av.AudioFrame.from_ndarray(pcm[np.newaxis, start : start + 960], format="s16", layout="mono")
        frame.sample_rate = 16000
        packets += [bytes(p) for p in codec.encode(frame)]
    assert min(map(len, packets)) < 10  # DTX packets are present
    decoder = OpusDecoder(output_rate=16000)
    out = np.concatenate([decoder.decode(p) for p in packets])
    assert len(out) >= len(pcm) - 16000 * 0.03
    assert abs(dominant_frequency(out[1000:7000], 16000) - 500) < 5
    assert np.max(np.abs(out[12000:])) < 0.01


def test_empty_packet_is_bad_audio_and_decoder_survives() -> None:
    encoder = OpusEncoder(16000, 60)
    packets = encoder.encode(tone(440, 16000, 0.6))
    decoder = OpusDecoder(output_rate=48000)
    with pytest.raises(BadAudio, match="empty Opus packet"):
        decoder.decode(b"")
    # An empty packet would have left libavcodec at end-of-stream; every packet still decodes.
    assert [len(decoder.decode(p)) for p in packets] == [2880] * len(packets)


@pytest.mark.parametrize("garbage", INVALID_PACKETS)
def test_invalid_packet_is_bad_audio_and_decoder_survives(garbage: bytes) -> None:
    encoder = OpusEncoder(16000, 60)
    packets = encoder.encode(tone(440, 16000, 0.6))
    decoder = OpusDecoder(output_rate=48000)
    decoder.decode(packets[0])
    with pytest.raises(BadAudio, match="undecodable Opus packet"):
        decoder.decode(garbage)
    assert [len(decoder.decode(p)) for p in packets[1:]] == [2880] * (len(packets) - 1)


@settings(max_examples=200, deadline=None)
@given(garbage=st.binary(min_size=1, max_size=400))
def test_random_bytes_decode_or_raise_bad_audio(garbage: bytes) -> None:
    encoder = OpusEncoder(16000, 60)
    packets = encoder.encode(tone(440, 16000, 0.36))
    decoder = OpusDecoder(output_rate=16000)
    try:
        noise = decoder.decode(garbage)  # Opus has no checksum: some garbage decodes to noise
    except BadAudio:
        pass
    else:
        assert noise.dtype == np.float32 and noise.ndim == 1
    # Decoder state after noise may shift a packet by a few samples, never lose it.
    total = sum(len(decoder.decode(p)) for p in packets)
    assert total >= len(packets) * 960 - 16000 * 0.03 - 960

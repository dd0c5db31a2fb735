"""Opus decoding (uplink) and encoding (downlink), on the libopus that PyAV's wheels bundle.

Both objects are synchronous and hold per-session codec state: make one of each per device
session and call them from one thread at a time (a worker thread is fine).
"""

from __future__ import annotations

import av
import av.error
import numpy as np
from av.audio.codeccontext import AudioCodecContext

from xiaozhi_trio.pipeline.audio.resample import StreamResampler
from xiaozhi_trio.pipeline.messages import Samples

#: libavcodec's Opus decoder always produces 48 kHz, whatever rate the packets were encoded at.
DECODER_RATE = 48000
#: Input rates libopus accepts.
ENCODER_RATES = (8000, 12000, 16000, 24000, 48000)
#: Packet durations libopus can produce (2.5 ms is left out: the protocol speaks whole ms).
FRAME_DURATIONS_MS = (5, 10, 20, 40, 60, 80, 100, 120)
#: What the downlink carries is always speech; see docs/dependencies.md for why "audio" over "voip".
APPLICATION = "audio"


class BadAudio(ValueError):
    """An uplink packet that cannot be decoded (empty, or not Opus)."""


class OpusDecoder:
    """Decode one device's Opus packets to mono float32 at ``output_rate``.

    Decoded audio is resampled from 48 kHz as one continuous stream, so packet boundaries stay
    click-free; the output therefore lags by the resampler's delay (under 30 ms).
    """

    def __init__(self, output_rate: int = 16000) -> None:
        self.output_rate = output_rate
        self._resampler = StreamResampler(DECODER_RATE, output_rate)
        self._codec: AudioCodecContext = av.CodecContext.create("opus", "r")
        # Ask for mono: without it the decoder answers with stereo, and stereo packets get downmixed.
        self._codec.layout = "mono"

    def decode(self, packet: bytes) -> Samples:
        """Decode one packet; returns the audio that is ready (may be shorter than the packet).

        Raises :class:`BadAudio` for an empty packet or one libopus rejects; the decoder stays
        usable. Opus has no checksum, so some corrupt packets decode to noise instead.
        """
        if not packet:
            # An empty packet would put libavcodec into its end-of-stream state.
            raise BadAudio("empty Opus packet")
        try:
            frames = self._codec.decode(av.Packet(bytes(packet)))
        except av.error.InvalidDataError as exc:
            raise BadAudio(f"undecodable Opus packet ({len(packet)} bytes, first byte 0x{packet[0]:02x})") from exc
        pcm = [frame.to_ndarray()[0] for frame in frames]  # planar float32, one channel
        return self._resampler.process(np.concatenate(pcm) if pcm else np.zeros(0, dtype=np.float32))


class OpusEncoder:
    """Encode mono float32 audio at ``sample_rate`` into Opus packets of exactly ``frame_ms``.

    Input of any length is buffered and cut into whole frames here, so the packets do not depend
    on how the audio was chunked, and each :meth:`encode` call returns every packet it can.
    """

    def __init__(self, sample_rate: int = 24000, frame_ms: int = 60, bitrate: int = 24000) -> None:
        if sample_rate not in ENCODER_RATES:
            raise ValueError(f"Opus cannot encode at {sample_rate} Hz (choose one of {ENCODER_RATES})")
        if frame_ms not in FRAME_DURATIONS_MS:
            raise ValueError(f"Opus has no {frame_ms} ms frames (choose one of {FRAME_DURATIONS_MS})")
        if not 6000 <= bitrate <= 510000:
            raise ValueError(f"Opus bitrate must be 6000..510000 bit/s, got {bitrate}")
        self.sample_rate = sample_rate
        self.frame_ms = frame_ms
        self.bitrate = bitrate
        self._frame_samples = sample_rate * frame_ms // 1000
        self._pending = np.zeros(0, dtype=np.float32)
        self._codec = self._open_codec()
        self._pts = 0

    @property
    def frame_samples(self) -> int:
        """Samples per packet (``sample_rate * frame_ms / 1000``)."""
        return self._frame_samples

    def _open_codec(self) -> AudioCodecContext:
        codec: AudioCodecContext = av.CodecContext.create("libopus", "w")
        codec.sample_rate = self.sample_rate
        codec.layout = "mono"
        codec.format = "flt"
        codec.bit_rate = self.bitrate
        codec.options = {"application": APPLICATION, "frame_duration": str(self.frame_ms)}
        codec.open()
        return codec

    def _encode_frames(self, samples: Samples) -> list[bytes]:
        """Encode a whole number of frames, one libopus call each."""
        packets: list[bytes] = []
        # Clip: libopus accepts floats beyond ±1, but the device decodes to int16 and would wrap.
        samples = np.clip(samples, -1.0, 1.0)
        for start in range(0, len(samples), self._frame_samples):
            chunk = samples[start : start + self._frame_samples]
            frame = av.AudioFrame.from_ndarray(chunk[np.newaxis, :], format="flt", layout="mono")
            frame.sample_rate = self.sample_rate
            frame.pts = self._pts
            self._pts += self._frame_samples
            # Exact frame_size input comes straight back as one packet (no codec-side buffering).
            packets.extend(bytes(packet) for packet in self._codec.encode(frame))
        return packets

    def encode(self, samples: Samples) -> list[bytes]:
        """Add audio; return one packet per whole frame now available (possibly none)."""
        samples = np.asarray(samples, dtype=np.float32)
        if samples.ndim != 1:
            raise ValueError(f"expected mono samples (1-D), got an array of shape {samples.shape}")
        buffered = np.concatenate((self._pending, samples))
        whole = len(buffered) - len(buffered) % self._frame_samples
        self._pending = buffered[whole:].copy()
        return self._encode_frames(buffered[:whole])

    def flush(self) -> list[bytes]:
        """Pad the partial frame with silence and encode it (nothing if no audio is buffered).

        The encoder stays usable: the next :meth:`encode` continues the same stream.
        """
        if not len(self._pending):
            return []
        frame = np.zeros(self._frame_samples, dtype=np.float32)
        frame[: len(self._pending)] = self._pending
        self._pending = np.zeros(0, dtype=np.float32)
        return self._encode_frames(frame)

    def reset(self) -> None:
        """Drop buffered audio and restart the codec, e.g. on barge-in.

        The device resets its decoder when it starts speaking, so the next reply also starts from
        a fresh encoder (opening one costs well under a millisecond).
        """
        self._pending = np.zeros(0, dtype=np.float32)
        self._codec = self._open_codec()
        self._pts = 0

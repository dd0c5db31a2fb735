"""Audio codecs, resampling and the device binary framing (all sans-IO)."""

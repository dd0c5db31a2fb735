"""Fixtures shared by several test files."""

from __future__ import annotations

import os

import pytest
from hypothesis import settings

from tests.databases import SKIP_REASON, open_db, postgres_url, store_table

__all__ = ["open_db", "postgres_url", "store_table"]

# CI runs every property test on the same examples, so a run's outcome never depends on chance; a
# developer's runs explore new examples (and keep any failure they find in .hypothesis/).
settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI") == "true":
    settings.load_profile("ci")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say loudly when the PostgreSQL variants did not run (a skip is easy to overlook)."""
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if SKIP_REASON in str(r.longrepr)]
    if skipped:
        terminalreporter.write_sep("!", f"{len(skipped)} PostgreSQL tests SKIPPED: no PostgreSQL to test against", red=True, bold=True)
        terminalreporter.write_line("run them with: scripts/postgres-test-cluster run .venv/bin/python -m pytest")

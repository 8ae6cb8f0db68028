"""Fixtures for the migration tests: an empty database of each kind, for a test to migrate."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import fresh_postgres


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty SQLite file or a fresh PostgreSQL database (dropped after the test)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'parley.db'}"
    else:
        yield from fresh_postgres("parley_migration_test")

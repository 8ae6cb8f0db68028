"""Run Alembic migrations from code (used by the CLI, `make run` and the tests)."""

from __future__ import annotations

import os
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import Script

MIGRATIONS = Path(__file__).with_name("migrations")
VERSIONS = MIGRATIONS / "versions"


def alembic_config(database_url: str, new_versions: Path | None = None) -> Config:
    """Alembic's configuration; with `new_versions`, a second versions directory (after the
    tree's own) where new revisions are written."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    if new_versions is not None:
        cfg.set_main_option("path_separator", "os")
        locations = os.pathsep.join([str(VERSIONS), str(new_versions)])
        cfg.set_main_option("version_locations", locations.replace("%", "%%"))
    return cfg


def upgrade(database_url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


def revision(
    database_url: str,
    message: str,
    *,
    autogenerate: bool = True,
    new_versions: Path | None = None,
) -> Path:
    """Write a migration after head and return its path. With `autogenerate`, it holds what
    the models have and the database (which must be at head) lacks; else it is blank."""
    directory = new_versions or VERSIONS
    script = command.revision(
        alembic_config(database_url, new_versions),
        message=message,
        autogenerate=autogenerate,
        version_path=str(directory),
    )
    assert isinstance(script, Script)
    return Path(script.path)

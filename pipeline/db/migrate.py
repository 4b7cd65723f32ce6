"""Schema version management on top of Alembic: upgrade, current revision, the head check.

Example:
    >>> upgrade("sqlite:///fitstream.db")        # doctest: +SKIP
    >>> require_head("sqlite:///fitstream.db")   # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine

import pipeline.migrations as migrations
from pipeline.db.session import make_engine, mask_url, normalize_url
from pipeline.errors import SchemaNotAtHeadError

UPGRADE_COMMAND = "fitstream db upgrade"


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    config.set_main_option("sqlalchemy.url", normalize_url(database_url).replace("%", "%%"))
    return config


def head_revision(database_url: str = "sqlite://") -> str:
    heads = ScriptDirectory.from_config(alembic_config(database_url)).get_heads()
    return heads[0]


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(database_url: str, revision: str = "head") -> str | None:
    """Bring the schema at ``database_url`` to ``revision``; returns the revision reached."""
    engine = make_engine(database_url)
    try:
        with engine.begin() as conn:
            config = alembic_config(database_url)
            config.attributes["connection"] = conn
            command.upgrade(config, revision)
        return current_revision(engine)
    finally:
        engine.dispose()


def require_head(engine: Engine) -> None:
    """Refuse to run against a schema that is not at Alembic's head.

    Raises:
        SchemaNotAtHeadError: naming the current and head revisions and the command to run.
    """
    current = current_revision(engine)
    head = head_revision()
    if current != head:
        where = mask_url(str(engine.url))
        if current is None:
            raise SchemaNotAtHeadError(
                f"the database at {where} has no Fitstream schema; create it with: {UPGRADE_COMMAND}"
            )
        raise SchemaNotAtHeadError(
            f"the database at {where} is at schema revision {current}, this Fitstream needs {head}; "
            f"run: {UPGRADE_COMMAND}"
        )

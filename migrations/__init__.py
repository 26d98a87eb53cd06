"""Alembic environment and revisions for the vidx catalog; upgrade() applies them on first use."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import Engine

# An arbitrary constant so concurrent workers serialise their first-use migration.
_PG_MIGRATION_LOCK = 7_351_120_411


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the catalog schema to ``revision`` (safe to call from many processes at once)."""
    try:
        from alembic import command
        from alembic.config import Config
    except ImportError as e:  # pragma: no cover - alembic is a hard dependency
        raise RuntimeError("alembic is required to migrate the catalog") from e

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).resolve().parent))
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, revision)

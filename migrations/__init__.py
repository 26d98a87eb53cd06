"""The catalog's schema migrations: env (the Alembic environment) and versions/ (one revision per change).

``upgrade(engine)`` brings a catalog to head on first use (under an advisory lock on PostgreSQL);
``script_head()`` reads the head from the revision files, so a catalog already at head is left alone
without importing Alembic.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

from sqlalchemy import exc, text
from sqlalchemy.engine import Engine

# An arbitrary constant so concurrent workers serialise their first-use migration.
_PG_MIGRATION_LOCK = 7_351_120_411


_REVISION = re.compile(r"^(down_revision|revision)\s*(?::[^=]*)?=\s*['\"]?([\w]+)?['\"]?", re.M)


@lru_cache(maxsize=1)
def script_head() -> str | None:
    """The newest revision, read from the revision files without importing Alembic (None if unclear)."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in (Path(__file__).resolve().parent / "versions").glob("*.py"):
        found = dict((k, v) for k, v in _REVISION.findall(path.read_text("utf-8")))
        if found.get("revision"):
            revisions.add(found["revision"])
        if found.get("down_revision") and found["down_revision"] != "None":
            parents.add(found["down_revision"])
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 else None


def _at_head(engine: Engine) -> bool:
    head = script_head()
    if head is None:
        return False
    try:
        with engine.connect() as connection:
            current = connection.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    except exc.DBAPIError:  # a new catalog: no version table yet
        return False
    return current == [head]


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the catalog schema to ``revision`` (safe to call from many processes at once)."""
    # Every command opens the catalog; Alembic costs a tenth of a second to import, so a catalog
    # already at head (the usual case) is recognised without it.
    if revision == "head" and _at_head(engine):
        return
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

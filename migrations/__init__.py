"""Alembic environment and revisions for the vidx catalog."""

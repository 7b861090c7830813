"""Tenant tests use the storage tests' databases: SQLite, and the real PostgreSQL when SWITCHBOARD_TEST_PG_URL is set."""

from ..storage.conftest import db_url, postgres_database  # noqa: F401 — fixtures, re-exported

"""The durable request log: SQLAlchemy tables, Alembic migrations, a batched writer off the request path, and
the export of logged requests with feedback as router training data (docs/storage.md)."""

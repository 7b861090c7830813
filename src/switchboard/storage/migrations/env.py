"""Alembic environment: always run programmatically (storage.database.migrate) on a connection it is given."""

from alembic import context

from switchboard.storage.models import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()

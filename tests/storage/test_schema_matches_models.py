"""The Alembic migrations build exactly the tables the code's models describe (storage/models.py, and the API keys'
in tenants/store.py): a column, an index or a table added to one and not the other is a failure here, not on a
user's database."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

import switchboard.tenants.store  # noqa: F401 — its model joins the same metadata
from switchboard.storage import database
from switchboard.storage.models import Base


def test_migrated_schema_matches_the_models(db_url):
    engine = database.open_engine(db_url)
    database.migrate(engine)
    with engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    engine.dispose()
    assert diff == []

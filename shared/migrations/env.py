"""Alembic environment shared by all services.

Each service runs Alembic over two version locations: the ``platform`` branch here (outbox,
inbox, API keys, audit log) and its own branch in ``services/<name>/migrations``. The connection,
metadata and the service's own version table come in through ``config.attributes`` from
``shared.migrate``; no ini file is needed.
"""

from alembic import context

config = context.config
connection = config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=config.attributes.get("target_metadata"),
    version_table=config.attributes["version_table"],
    # SQLite cannot ALTER most things; batch mode rebuilds the table instead.
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()

from alembic import context

from chartbridge.ledger.tables import Base
from chartbridge.ledger import leases as _leases  # noqa: F401  (its table is on the same metadata)

config = context.config
engine = config.attributes["connection_engine"]

with engine.begin() as connection:
    context.configure(connection=connection, target_metadata=Base.metadata,
                      render_as_batch=connection.dialect.name == "sqlite")
    context.run_migrations()

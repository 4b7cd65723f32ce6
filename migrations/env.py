"""Alembic environment. The URL comes from the caller's config or FITSTREAM_DATABASE_URL."""

from __future__ import annotations

from alembic import context

from pipeline.db.session import make_engine, normalize_url

config = context.config


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        from pipeline.config import get_settings

        url = get_settings().database_url
    return normalize_url(url)


def run_migrations_offline() -> None:
    context.configure(
        url=_url(), literal_binds=True, render_as_batch=True, dialect_opts={"paramstyle": "named"}
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = make_engine(_url())
    with engine.connect() as conn:
        context.configure(connection=conn, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()

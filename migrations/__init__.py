"""Alembic migrations that own Fitstream's SQL schema (``fitstream db upgrade``)."""

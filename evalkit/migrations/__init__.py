"""Alembic migrations of the trial store; applied automatically when a store is opened."""

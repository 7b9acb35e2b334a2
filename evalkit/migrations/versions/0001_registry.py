"""Pilots and their registered protocol versions.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "pilots",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("uid", sa.String(32), nullable=False, unique=True),
        sa.Column("secret_commitment", sa.String(64), nullable=False),
        sa.Column("created_at", sa.String(32), nullable=False),
        sa.Column("environment", sa.Text, nullable=False),
    )
    op.create_table(
        "protocol_versions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("pilot_id", sa.String(64), sa.ForeignKey("pilots.id"), nullable=False),
        sa.Column("number", sa.Integer, nullable=False),
        sa.Column("protocol_version", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("canonical", sa.Text, nullable=False),
        sa.Column("registered_at", sa.String(32), nullable=False),
        sa.Column("registered_by", sa.String(128), nullable=False),
        sa.Column("evalkit_version", sa.String(32), nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("changes", sa.Text),
        sa.UniqueConstraint("pilot_id", "number", name="uq_protocol_versions_number"),
        sa.UniqueConstraint("pilot_id", "hash", name="uq_protocol_versions_hash"),
    )


def downgrade() -> None:
    op.drop_table("protocol_versions")
    op.drop_table("pilots")

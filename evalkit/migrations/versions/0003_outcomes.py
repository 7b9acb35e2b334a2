"""Outcome imports and versioned outcome records.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "imports",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("pilot_id", sa.String(64), sa.ForeignKey("pilots.id"), nullable=False),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("file_name", sa.String(512), nullable=False),
        sa.Column("file_sha256", sa.String(64), nullable=False),
        sa.Column("rows", sa.Integer, nullable=False),
        sa.Column("outcomes", sa.Text, nullable=False),
        sa.Column("as_of", sa.String(10), nullable=False),
        sa.Column("imported_at", sa.String(32), nullable=False),
        sa.Column("imported_by", sa.String(128), nullable=False),
        sa.Column("correction_reason", sa.Text),
    )
    op.create_table(
        "observations",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("pilot_id", sa.String(64), sa.ForeignKey("pilots.id"), nullable=False),
        sa.Column("unit", sa.String(128), nullable=False),
        sa.Column("outcome", sa.String(64), nullable=False),
        sa.Column("obs_key", sa.String(32), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("value", sa.Float),
        sa.Column("start_date", sa.String(10)),
        sa.Column("end_date", sa.String(10)),
        sa.Column("on_date", sa.String(10)),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("import_id", sa.Integer, sa.ForeignKey("imports.id"), nullable=False),
        sa.UniqueConstraint(
            "pilot_id", "unit", "outcome", "obs_key", "version", name="uq_observation_version"
        ),
    )
    op.create_index("ix_observations_pilot", "observations", ["pilot_id", "outcome"])


def downgrade() -> None:
    op.drop_index("ix_observations_pilot", "observations")
    op.drop_table("observations")
    op.drop_table("imports")

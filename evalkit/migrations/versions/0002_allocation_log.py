"""The hash-chained allocation log and its recorded head.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "log",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("pilot_id", sa.String(64), sa.ForeignKey("pilots.id"), nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("level", sa.String(16)),
        sa.Column("unit", sa.String(128)),
        sa.Column("unit_key", sa.String(128)),
        sa.Column("stratum", sa.String(256)),
        sa.Column("place", sa.String(128)),
        sa.Column("arm", sa.String(64)),
        sa.Column("probabilities", sa.Text),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("baseline", sa.Text, nullable=False),
        sa.Column("protocol_hash", sa.String(64), nullable=False),
        sa.Column("protocol_number", sa.Integer, nullable=False),
        sa.Column("created_at", sa.String(32), nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("entry_hash", sa.String(64), nullable=False),
        sa.UniqueConstraint("pilot_id", "seq", name="uq_log_seq"),
        sa.UniqueConstraint("pilot_id", "unit_key", name="uq_log_unit"),
    )
    op.create_index("ix_log_stratum", "log", ["pilot_id", "kind", "stratum"])
    with op.batch_alter_table("pilots") as batch:
        batch.add_column(sa.Column("log_count", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("log_head", sa.String(64)))


def downgrade() -> None:
    with op.batch_alter_table("pilots") as batch:
        batch.drop_column("log_head")
        batch.drop_column("log_count")
    op.drop_index("ix_log_stratum", "log")
    op.drop_table("log")

"""PostgreSQL: NOTIFY the importer when tasks commit.

A statement trigger costs no extra round trip per request, and PostgreSQL delivers the
notification at commit only (never for a rolled-back transaction). Other backends poll.

Revision ID: 0003_notify_trigger
Revises: 0002_task_failures
Create Date: 2026-11-25
"""

from alembic import op

revision = "0003_notify_trigger"
down_revision = "0002_task_failures"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("""
        CREATE OR REPLACE FUNCTION midonet_tasks_notify() RETURNS trigger AS $$
        BEGIN
            PERFORM pg_notify('midonet_tasks', '');
            RETURN NULL;
        END;
        $$ LANGUAGE plpgsql""")
    op.execute("""
        CREATE TRIGGER midonet_tasks_notify AFTER INSERT ON midonet_tasks
        FOR EACH STATEMENT EXECUTE FUNCTION midonet_tasks_notify()""")

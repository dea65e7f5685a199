"""SQLite: a membership's change and its task in one statement, as PostgreSQL's CTEs do.

An INSERT into ``midonet_agent_membership_creations`` (or ``..._deletions``) runs an INSTEAD
OF trigger that writes (or deletes) the row and appends its task: one statement, atomic
by itself, so the API runs it in SQLite's autocommit with no BEGIN and COMMIT around it.
Why: the all-in-one's writers queue on one lock, and each of a transaction's four SQLite
calls let the GIL go and then waited to win it back while holding that lock; at c=8 the
creates queued there, not on SQLite. The views hold no rows; other backends get nothing.

A deletion's task data is written as ``json.dumps(..., sort_keys=True)`` and PostgreSQL's
``jsonb`` write it (``{"id": "...", "ip_address": "..."}``): the same text on every
backend.

Revision ID: 0007_sqlite_change_views
Revises: 0006_task_audit
Create Date: 2026-12-06
"""

from alembic import op

revision = "0007_sqlite_change_views"
down_revision = "0006_task_audit"
branch_labels = None
depends_on = None

AUDIT = "tenant_id, transaction_id, created_at, requested_by, requested_from"
NEW_AUDIT = ", ".join(f"NEW.{column}" for column in AUDIT.split(", "))


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    op.execute("""
        CREATE VIEW midonet_agent_membership_creations AS
        SELECT NULL AS id, NULL AS ip_address, NULL AS data, NULL AS tenant_id,
               NULL AS transaction_id, NULL AS created_at, NULL AS requested_by,
               NULL AS requested_from WHERE 0""")
    op.execute(f"""
        CREATE TRIGGER midonet_agent_membership_create
        INSTEAD OF INSERT ON midonet_agent_membership_creations BEGIN
            INSERT INTO midonet_agent_memberships (id, ip_address)
            VALUES (NEW.id, NEW.ip_address);
            INSERT INTO midonet_tasks (type, data_type, resource_id, data, {AUDIT})
            VALUES ('CREATE', 'AGENTMEMBERSHIP', NEW.id, NEW.data, {NEW_AUDIT});
        END""")
    op.execute("""
        CREATE VIEW midonet_agent_membership_deletions AS
        SELECT NULL AS id, NULL AS tenant_id, NULL AS transaction_id, NULL AS created_at,
               NULL AS requested_by, NULL AS requested_from WHERE 0""")
    op.execute(f"""
        CREATE TRIGGER midonet_agent_membership_delete
        INSTEAD OF INSERT ON midonet_agent_membership_deletions BEGIN
            INSERT INTO midonet_tasks (type, data_type, resource_id, data, {AUDIT})
            SELECT 'DELETE', 'AGENTMEMBERSHIP', id,
                   '{{"id": ' || json_quote(id) || ', "ip_address": '
                   || json_quote(ip_address) || '}}', {NEW_AUDIT}
            FROM midonet_agent_memberships WHERE id = NEW.id;
            DELETE FROM midonet_agent_memberships WHERE id = NEW.id;
        END""")

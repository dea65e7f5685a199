"""The Neutron-database tables of the agent-membership extension (DESIGN §4).

Column names, types and lengths are the original networking-midonet ones, so a real
neutron-server and this project read and write the same rows.
"""

from __future__ import annotations

import datetime

from sqlalchemy import DateTime, Integer, MetaData, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uniq_%(table_name)s0%(column_0_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class AgentMembership(Base):
    """An activated agent: its host id and the IPv4 tunnel endpoint other members reach."""

    __tablename__ = "midonet_agent_memberships"
    __table_args__ = (UniqueConstraint("ip_address"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    ip_address: Mapped[str] = mapped_column(String(64), nullable=False)


class Task(Base):
    """One journal entry; ``id`` is the order the cluster applies them in.

    ``sqlite_autoincrement`` matters: plain SQLite rowids are reused after the newest rows are
    deleted (``task-clean``), and a reused id would sit below the importer's position.
    """

    __tablename__ = "midonet_tasks"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    type: Mapped[str] = mapped_column(String(36), nullable=False)
    data_type: Mapped[str] = mapped_column(String(255), nullable=False)
    data: Mapped[str | None] = mapped_column(Text)
    resource_id: Mapped[str | None] = mapped_column(String(36), index=True)
    tenant_id: Mapped[str | None] = mapped_column(String(255))
    transaction_id: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime.datetime] = mapped_column(DateTime, nullable=False)
    # The audit trail (migration 0006): who asked (the token's user id, or "admin-token")
    # and from which address; the project is ``tenant_id``, the time ``created_at``.
    requested_by: Mapped[str | None] = mapped_column(String(255))
    requested_from: Mapped[str | None] = mapped_column(String(64))


class TaskState(Base):
    """The single row (id = 1) saying how far the cluster has imported the journal."""

    __tablename__ = "midonet_task_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    last_processed_id: Mapped[int | None] = mapped_column(Integer)
    updated_at: Mapped[datetime.datetime | None] = mapped_column(DateTime)


class TaskFailure(Base):
    """A task the importer could not translate and skipped (it is still in the journal)."""

    __tablename__ = "midonet_task_failures"

    task_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    error: Mapped[str] = mapped_column(Text, nullable=False)
    failed_at: Mapped[datetime.datetime] = mapped_column(DateTime, nullable=False)


class AgentDescription(Base):
    """The admin's description of an agent (the only thing the agents API changes)."""

    __tablename__ = "midonet_agent_descriptions"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    description: Mapped[str] = mapped_column(String(255), nullable=False)


memberships = AgentMembership.__table__
tasks = Task.__table__
task_state = TaskState.__table__
task_failures = TaskFailure.__table__
agent_descriptions = AgentDescription.__table__

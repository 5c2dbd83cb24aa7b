"""SQLAlchemy models of the ledger's ten tables.

The schema itself is owned by the hand-written migrations in `db/migrations/versions`;
these models mirror it (a test compares the two) so that code can read and write the
ledger with typed rows. The view `node_reputation_report` and the SQL function
`cortensor_score` exist only in the migrations.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Double,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Text,
    UniqueConstraint,
    Uuid,
    false,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from cortensor.schemas import ANONYMOUS, LEDGER_STATUSES, OPEN_STATUSES, TERMINAL_STATUSES

NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
"""Constraint names, so that migrations can refer to every constraint by a known name."""

NODE_STATUSES = ("up", "draining")
JOB_STATUSES: tuple[str, ...] = (*LEDGER_STATUSES, *TERMINAL_STATUSES)
VERDICT_STATUSES: tuple[str, ...] = TERMINAL_STATUSES
ASSIGNMENT_STATUSES = ("assigned", "done", "timed_out", "excused")
OUTAGE_SERVERS = ("postgres", "rabbitmq", "nats")
EVENT_KINDS = ("agreed", "disagreed", "timed_out")
TRUST_STATES = ("probation", "active", "quarantined")


def _in(column: str, values: tuple[str, ...]) -> str:
    quoted = ", ".join(f"'{value}'" for value in values)
    return f"{column} IN ({quoted})"


_NOW = text("now()")


class Base(DeclarativeBase):
    """Declarative base of the ledger; its metadata carries the naming convention."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Node(Base):
    """An inference node as last announced by its heartbeat."""

    __tablename__ = "nodes"
    __table_args__ = (CheckConstraint(_in("status", NODE_STATUSES), name="status"),)

    node_id: Mapped[str] = mapped_column(Text, primary_key=True)
    hw_class: Mapped[str] = mapped_column(Text)
    precision: Mapped[str] = mapped_column(Text)
    models: Mapped[list[str]] = mapped_column(JSONB, server_default=text("'[]'::jsonb"))
    capacity: Mapped[int] = mapped_column(Integer, server_default=text("1"))
    status: Mapped[str] = mapped_column(Text, server_default=text("'up'"))
    first_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_NOW)
    last_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_NOW)


class Job(Base):
    """A submitted inference job and where it stands."""

    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(_in("status", JOB_STATUSES), name="status"),
        Index(
            "ix_jobs_open_deadline_at",
            "deadline_at",
            postgresql_where=text(_in("status", OPEN_STATUSES)),
        ),
        Index("ix_jobs_parent_id", "parent_id", postgresql_where=text("parent_id IS NOT NULL")),
        Index("ix_jobs_unchecked", "decided_at", postgresql_where=text("unchecked")),
        Index(
            "ix_jobs_unpurged",
            "decided_at",
            postgresql_where=text("purged_at IS NULL AND decided_at IS NOT NULL"),
        ),
        CheckConstraint("octet_length(inputs_sha256) = 32", name="inputs_sha256_length"),
        CheckConstraint("octet_length(audio_sha256) = 32", name="audio_sha256_length"),
    )

    job_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    task: Mapped[str] = mapped_column(Text)
    model: Mapped[str] = mapped_column(Text)
    redundancy: Mapped[int] = mapped_column(Integer)
    hw_class: Mapped[str] = mapped_column(Text)
    """The requested hardware spec: 'any', a class such as 'cpu-int8', or a precision."""
    inputs: Mapped[Any | None] = mapped_column(JSONB)
    """The texts; NULL once purged (`purged_at`), when only `inputs_sha256` remains."""
    status: Mapped[str] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(Text, server_default=text("''"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_NOW)
    deadline_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    decided_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    parent_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("jobs.job_id"))
    """Set on the parts of a split job."""
    part: Mapped[int | None] = mapped_column(Integer)
    params: Mapped[Any] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    """Task options (language, top_k) and a part's place in its parent."""
    audio: Mapped[bytes | None] = mapped_column(LargeBinary)
    """The 16 kHz mono WAV that a transcribe job's nodes receive."""
    probe: Mapped[bool] = mapped_column(Boolean, server_default=false())
    """A known-answer probe: its reference output is in params; no client awaits it."""
    auto: Mapped[bool] = mapped_column(Boolean, server_default=false())
    """The network chose the redundancy (adaptive replication)."""
    unchecked: Mapped[bool] = mapped_column(Boolean, server_default=false())
    """Verified on one unreplicated result that no other node has checked yet."""
    inputs_sha256: Mapped[bytes | None] = mapped_column(LargeBinary)
    """sha256 of the inputs' jsonb text, kept when they are purged."""
    audio_sha256: Mapped[bytes | None] = mapped_column(LargeBinary)
    """sha256 of the audio, kept when it is purged."""
    purged_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    """When the retention period removed the job's content (docs/design.md, Privacy)."""
    owner: Mapped[str] = mapped_column(Text, server_default=text(f"'{ANONYMOUS}'"))
    """The client that published the job (from its routing key): only it reads the verdict."""
    extended: Mapped[bool] = mapped_column(Boolean, server_default=false())
    """Its deadline fell inside a server outage and was pushed back once."""


class Assignment(Base):
    """One replica of a job sent to one node."""

    __tablename__ = "assignments"
    __table_args__ = (
        CheckConstraint(_in("status", ASSIGNMENT_STATUSES), name="status"),
        UniqueConstraint("job_id", "node_id"),
        Index(
            "ix_assignments_pending_deadline_at",
            "deadline_at",
            postgresql_where=text("status = 'assigned'"),
        ),
    )

    assignment_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    job_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("jobs.job_id"))
    node_id: Mapped[str] = mapped_column(Text, ForeignKey("nodes.node_id"), index=True)
    hw_class: Mapped[str] = mapped_column(Text)
    attempt: Mapped[int] = mapped_column(Integer, server_default=text("1"))
    status: Mapped[str] = mapped_column(Text, server_default=text("'assigned'"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_NOW)
    deadline_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    """When the router last had the broker confirm it; NULL: recorded, not known sent."""


class Result(Base):
    """What a node returned for one assignment: an output or an error."""

    __tablename__ = "results"
    __table_args__ = (
        CheckConstraint("octet_length(output_sha256) = 32", name="output_sha256_length"),
    )

    result_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    assignment_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("assignments.assignment_id"), unique=True
    )
    job_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("jobs.job_id"), index=True)
    node_id: Mapped[str] = mapped_column(Text, ForeignKey("nodes.node_id"))
    precision: Mapped[str] = mapped_column(Text)
    output: Mapped[Any | None] = mapped_column(JSONB)
    output_sha256: Mapped[bytes | None] = mapped_column(LargeBinary)
    """sha256 of the output's jsonb text, kept when the output is purged."""
    error: Mapped[str | None] = mapped_column(Text)
    elapsed_ms: Mapped[float] = mapped_column(Double, server_default=text("0"))
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_NOW)
    seq: Mapped[int] = mapped_column(BigInteger, Identity(), nullable=False)
    """Drawn as the result is stored, in the order the guard weighed the results of one
    statement: replicas are read back in this order."""


class Verdict(Base):
    """The guard's decision on a job, with the Verdict message it published."""

    __tablename__ = "verdicts"
    __table_args__ = (CheckConstraint(_in("status", VERDICT_STATUSES), name="status"),)

    job_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("jobs.job_id"), primary_key=True)
    status: Mapped[str] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(Text, server_default=text("''"))
    canonical_result_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    replicas: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    payload: Mapped[Any] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_NOW)
    published_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    """When the verdict reached the verdicts stream; NULL until then, so it is retried."""
    revision: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    """Raised each time a re-validation corrects or confirms the verdict."""


class ReputationEvent(Base):
    """One append-only fact about a node: it agreed, disagreed or missed its deadline.

    A trigger rejects UPDATE and DELETE, so scores can always be recomputed from history.
    """

    __tablename__ = "reputation_events"
    __table_args__ = (
        CheckConstraint(_in("kind", EVENT_KINDS), name="kind"),
        UniqueConstraint("assignment_id"),
        Index(None, "node_id", "created_at"),
    )

    event_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    node_id: Mapped[str] = mapped_column(Text, ForeignKey("nodes.node_id"))
    job_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("jobs.job_id"))
    assignment_id: Mapped[uuid.UUID | None] = mapped_column(
        Uuid, ForeignKey("assignments.assignment_id")
    )
    kind: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_NOW)
    model: Mapped[str] = mapped_column(Text, server_default=text("''"))
    """The job's model, filled in by the fold trigger."""
    probe: Mapped[bool] = mapped_column(Boolean, server_default=false())
    """Whether the job was a known-answer probe, filled in by the fold trigger."""
    node_seq: Mapped[int | None] = mapped_column(Integer)
    """The event's place in its node's history, in the order the trigger folded it."""


class NodeStanding(Base):
    """A node's standing, folded from its events by a trigger (cortensor.protocol.reputation):
    overall (model '') and per model."""

    __tablename__ = "node_standing"
    __table_args__ = (CheckConstraint(_in("trust", TRUST_STATES), name="trust"),)

    node_id: Mapped[str] = mapped_column(Text, ForeignKey("nodes.node_id"), primary_key=True)
    model: Mapped[str] = mapped_column(Text, primary_key=True)
    agreed: Mapped[float] = mapped_column(Double, server_default=text("0"))
    disagreed: Mapped[float] = mapped_column(Double, server_default=text("0"))
    timed_out: Mapped[float] = mapped_column(Double, server_default=text("0"))
    observations: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    streak: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    probe_streak: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    suspicion: Mapped[float] = mapped_column(Double, server_default=text("0"))
    lateness: Mapped[float] = mapped_column(Double, server_default=text("0"))
    offences: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    trust: Mapped[str] = mapped_column(Text, server_default=text("'probation'"))
    at: Mapped[float] = mapped_column(Double, server_default=text("0"))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_NOW)


class NodeKey(Base):
    """The Ed25519 public key a node id means, bound when its credentials were issued."""

    __tablename__ = "node_keys"
    __table_args__ = (CheckConstraint("octet_length(public_key) = 32", name="ed25519_length"),)

    node_id: Mapped[str] = mapped_column(Text, primary_key=True)
    public_key: Mapped[bytes] = mapped_column(LargeBinary)
    bound_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_NOW)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Refusal(Base):
    """Messages dropped before they reached the ledger, counted per publisher and reason."""

    __tablename__ = "refusals"

    source: Mapped[str] = mapped_column(Text, primary_key=True)
    publisher: Mapped[str] = mapped_column(Text, primary_key=True)
    reason: Mapped[str] = mapped_column(Text, primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    first_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_NOW)
    last_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_NOW)


class Outage(Base):
    """A window in which a router or guard (`seen_by`) could not reach a server."""

    __tablename__ = "outages"
    __table_args__ = (
        CheckConstraint(_in("server", OUTAGE_SERVERS), name="server"),
        CheckConstraint("ended_at >= started_at", name="ordered"),
    )

    server: Mapped[str] = mapped_column(Text, primary_key=True)
    seen_by: Mapped[str] = mapped_column(Text, primary_key=True)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    ended_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    """When the server came back; while `ongoing`, when it was last seen down."""
    ongoing: Mapped[bool] = mapped_column(Boolean, server_default=false())

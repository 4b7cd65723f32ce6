"""SQLAlchemy models of the history database (``Sql*`` rows; plain entities live in ``entities.py``).

The schema itself is owned by Alembic (``migrations/``); these classes must match
the head revision, which ``tests/test_schema_and_sql.py`` checks (Alembic's autogenerate
comparison finds no difference).

Tables users query with plain SQL:

* ``runs``: one row per run (status, epochs completed, best/stopped epoch, monitor).
* ``epoch_metrics``: long format, one row per (run, metric, epoch); ``epoch`` counts from 0 as Keras does.
* ``epochs``: one row per (run, epoch): learning rate, wall time, throughput.
* ``checkpoints``: files written by ModelCheckpoint, with size and sha256.
* ``batch_metrics``: one row per (run, metric, batch step) from ``batch_end`` events; downsampled
  into ``batch_metric_buckets`` after the retention period.
* ``events``: every lifecycle event's raw JSON (epoch and batch events are the rows above).
"""

from __future__ import annotations

import re
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from pipeline.events import RUN_STATUSES, TERMINAL_STATUSES  # noqa: F401  (decided in events.py)

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class SqlRun(Base):
    __tablename__ = "runs"

    run_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str | None] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(32), default="running")
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    epochs_completed: Mapped[int] = mapped_column(Integer, default=0)
    epochs_planned: Mapped[int | None] = mapped_column(Integer)
    best_epoch: Mapped[int | None] = mapped_column(Integer)
    stopped_epoch: Mapped[int | None] = mapped_column(Integer)
    monitor: Mapped[str | None] = mapped_column(String(255))
    mode: Mapped[str | None] = mapped_column(String(8))
    best_value: Mapped[float | None] = mapped_column(Float)
    restored_best_weights: Mapped[int | None] = mapped_column(Integer)
    model_name: Mapped[str | None] = mapped_column(String(255))
    params_count: Mapped[int | None] = mapped_column(BigInteger)
    optimizer: Mapped[str | None] = mapped_column(Text)
    batch_size: Mapped[int | None] = mapped_column(Integer)
    host: Mapped[str | None] = mapped_column(String(255))
    tags: Mapped[str | None] = mapped_column(Text)
    wall_time_s: Mapped[float | None] = mapped_column(Float)
    error_type: Mapped[str | None] = mapped_column(String(255))
    error_message: Mapped[str | None] = mapped_column(Text)
    last_event_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    queued_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    queue: Mapped[str | None] = mapped_column(String(64))
    data_fingerprint: Mapped[str | None] = mapped_column(String(80))
    #: The sweep this run is a trial of (``sweeps.id``), if any.
    sweep_id: Mapped[str | None] = mapped_column(String(64))
    #: Why a run was cancelled or pruned (e.g. the median it fell behind).
    status_reason: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        Index("ix_runs_sweep_id", "sweep_id"),
        Index("ix_runs_name_started_at", "name", "started_at"),
        Index("ix_runs_status", "status"),
        Index("ix_runs_monitor_best_value", "monitor", "best_value"),
    )


class SqlParam(Base):
    """One parameter of one run (``pipeline.params``): the text, and the number when it is one."""

    __tablename__ = "params"

    run_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    value: Mapped[str | None] = mapped_column(Text)
    value_num: Mapped[float | None] = mapped_column(Float)

    __table_args__ = (Index("ix_params_key_value_num", "key", "value_num"),)


class SqlSweep(Base):
    """One sweep (``pipeline.sweeps``): its section of the job file, its trial count, and its state:
    queued, running, finished (every trial ended) or cancelled (``fitstream cancel SWEEP``)."""

    __tablename__ = "sweeps"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str | None] = mapped_column(String(255))
    spec: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    trials: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16))


class SqlPrunerTrial(Base):
    """What the pruner knows about a sweep trial it may prune (see pipeline.consumers.pruner)."""

    __tablename__ = "pruner_trials"

    run_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    sweep_id: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(32))
    warmup_epochs: Mapped[int] = mapped_column(Integer)
    min_trials: Mapped[int] = mapped_column(Integer)
    monitor: Mapped[str | None] = mapped_column(String(255))
    mode: Mapped[str | None] = mapped_column(String(8))

    __table_args__ = (Index("ix_pruner_trials_sweep_id_status", "sweep_id", "status"),)


class SqlPrunerValue(Base):
    """A trial's monitored value at one epoch, the pruner's own copy."""

    __tablename__ = "pruner_values"

    run_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    epoch: Mapped[int] = mapped_column(Integer, primary_key=True)
    sweep_id: Mapped[str] = mapped_column(String(64))
    value: Mapped[float | None] = mapped_column(Float)

    __table_args__ = (Index("ix_pruner_values_sweep_id_epoch", "sweep_id", "epoch"),)


#: On PostgreSQL these are partitioned parents (migration 0010), hash-partitioned into
#: ``<table>_p00`` … ``<table>_p15``; queries name the parent. SQLite keeps plain tables.
PARTITIONED_TABLES = ("epoch_metrics", "batch_metrics", "events")
_PARTITION_NAME = re.compile(rf"({'|'.join(PARTITIONED_TABLES)})_p\d\d")


def is_partition(table_name: str) -> bool:
    """True for a partition of one of ``PARTITIONED_TABLES`` (not part of the models' schema).

    >>> is_partition("epoch_metrics_p07"), is_partition("epoch_metrics")
    (True, False)
    """
    return _PARTITION_NAME.fullmatch(table_name) is not None


class SqlEpochMetric(Base):
    __tablename__ = "epoch_metrics"

    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    run_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    epoch: Mapped[int] = mapped_column(Integer, primary_key=True)
    value: Mapped[float | None] = mapped_column(Float)

    # The clustered key (name, run_id, epoch) serves both "a run's curve" and
    # "best runs by a metric"; no second index, so inserts stay fast.
    __table_args__ = ({"sqlite_with_rowid": False},)


class SqlMetricSummary(Base):
    """Per run and metric: the lowest, highest and last recorded value and their epochs (the earliest
    epoch for a tie), kept by the recorder from ``epoch_metrics`` (``pipeline.db.summaries``)."""

    __tablename__ = "metric_summaries"

    run_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    min_value: Mapped[float | None] = mapped_column(Float)
    min_epoch: Mapped[int | None] = mapped_column(Integer)
    max_value: Mapped[float | None] = mapped_column(Float)
    max_epoch: Mapped[int | None] = mapped_column(Integer)
    last_value: Mapped[float | None] = mapped_column(Float)
    last_epoch: Mapped[int] = mapped_column(Integer)

    # "Best runs by a metric", in either direction: one index range scan.
    __table_args__ = (
        Index("ix_metric_summaries_name_min_value", "name", "min_value"),
        Index("ix_metric_summaries_name_max_value", "name", "max_value"),
    )


class SqlEpoch(Base):
    __tablename__ = "epochs"

    run_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    epoch: Mapped[int] = mapped_column(Integer, primary_key=True)
    learning_rate: Mapped[float | None] = mapped_column(Float)
    wall_time_s: Mapped[float | None] = mapped_column(Float)
    steps: Mapped[int | None] = mapped_column(Integer)
    samples_per_second: Mapped[float | None] = mapped_column(Float)
    steps_per_second: Mapped[float | None] = mapped_column(Float)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: The epoch_end event this row records (its raw JSON is not kept in ``events``).
    event_id: Mapped[str | None] = mapped_column(String(64))


class SqlBatchMetric(Base):
    """One metric at one training batch (``batch_end`` events); ``step`` counts batches across epochs.
    Raw rows are kept ``FITSTREAM_BATCH_METRICS_RETENTION_DAYS``, then downsampled into buckets."""

    __tablename__ = "batch_metrics"

    run_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    step: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    epoch: Mapped[int] = mapped_column(Integer)
    value: Mapped[float | None] = mapped_column(Float)
    ts: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = ({"sqlite_with_rowid": False},)


class SqlBatchMetricBucket(Base):
    """The downsampled batch curve kept for good: per bucket of steps, the min, max and last value."""

    __tablename__ = "batch_metric_buckets"

    run_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    first_step: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    last_step: Mapped[int] = mapped_column(BigInteger)
    epoch: Mapped[int] = mapped_column(Integer)
    count: Mapped[int] = mapped_column(Integer)
    min_value: Mapped[float | None] = mapped_column(Float)
    max_value: Mapped[float | None] = mapped_column(Float)
    last_value: Mapped[float | None] = mapped_column(Float)

    __table_args__ = ({"sqlite_with_rowid": False},)


class SqlCheckpoint(Base):
    __tablename__ = "checkpoints"

    run_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    epoch: Mapped[int] = mapped_column(Integer, primary_key=True)
    path: Mapped[str] = mapped_column(String(1024), primary_key=True)
    monitor: Mapped[str | None] = mapped_column(String(255))
    value: Mapped[float | None] = mapped_column(Float)
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    sha256: Mapped[str | None] = mapped_column(String(64))
    saved_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    mode: Mapped[str | None] = mapped_column(String(8))
    source: Mapped[str | None] = mapped_column(String(32))
    batch: Mapped[int | None] = mapped_column(Integer)


class SqlEvent(Base):
    __tablename__ = "events"

    event_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    run_id: Mapped[str] = mapped_column(String(64))
    seq: Mapped[int] = mapped_column(BigInteger)
    type: Mapped[str] = mapped_column(String(32))
    ts: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    payload: Mapped[str] = mapped_column(Text)

    __table_args__ = (Index("ix_events_run_id_seq", "run_id", "seq"), Index("ix_events_type", "type"))


class SqlAlertRun(Base):
    """What the alerter knows about each run (name and tags for matching, liveness for "stalled")."""

    __tablename__ = "alert_runs"

    run_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str | None] = mapped_column(String(255))
    tags: Mapped[str | None] = mapped_column(Text)
    rules: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(32))
    last_event_at: Mapped[float] = mapped_column(Float)
    #: JSON: {"monitor": name or null, "metrics": {name: [[epoch, value], …]}} — the last epochs, for sparklines.
    recent_metrics: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (Index("ix_alert_runs_status_last_event_at", "status", "last_event_at"),)


class SqlAlertState(Base):
    """One rule's state for one run (streaks, best so far, firing), as JSON."""

    __tablename__ = "alert_state"

    rule: Mapped[str] = mapped_column(String(200), primary_key=True)
    run_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    state: Mapped[str] = mapped_column(Text)
    firing: Mapped[bool] = mapped_column(Boolean)
    updated_at: Mapped[float] = mapped_column(Float)


class SqlAlert(Base):
    """The alerts outbox: a row is written before a message is sent, and marked when delivered."""

    __tablename__ = "alerts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    idempotency_key: Mapped[str] = mapped_column(String(400))
    rule: Mapped[str] = mapped_column(String(200))
    run_id: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16))
    channel: Mapped[str] = mapped_column(String(200))
    severity: Mapped[str] = mapped_column(String(16))
    message: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    next_attempt_at: Mapped[float] = mapped_column(Float)
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        UniqueConstraint("idempotency_key", name="uq_alerts_idempotency_key"),
        Index("ix_alerts_status_id", "status", "id"),
        Index("ix_alerts_run_id", "run_id"),
    )


class SqlModelVersion(Base):
    """One immutable model version in the store, with its lineage (run, epoch, metric)."""

    __tablename__ = "model_versions"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[str] = mapped_column(String(64))
    epoch: Mapped[int | None] = mapped_column(Integer)
    metric: Mapped[str | None] = mapped_column(String(255))
    mode: Mapped[str | None] = mapped_column(String(8))
    value: Mapped[float | None] = mapped_column(Float)
    path: Mapped[str] = mapped_column(String(2048))
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    source_path: Mapped[str | None] = mapped_column(String(2048))
    spec_hash: Mapped[str | None] = mapped_column(String(64))
    data_fingerprint: Mapped[str | None] = mapped_column(String(80))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    #: model_checkpoint (a ModelCheckpoint file) or early_stopping_restore (the restored best weights).
    source: Mapped[str | None] = mapped_column(String(32))

    __table_args__ = (UniqueConstraint("name", "run_id", name="uq_model_versions_name_run_id"),)


class SqlModelAlias(Base):
    __tablename__ = "model_aliases"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    alias: Mapped[str] = mapped_column(String(100), primary_key=True)
    version: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class SqlPromoterRun(Base):
    """What the promoter knows about a run (model name, promotion settings)."""

    __tablename__ = "promoter_runs"

    run_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str | None] = mapped_column(String(255))
    settings: Mapped[str | None] = mapped_column(Text)
    spec_hash: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str | None] = mapped_column(String(32))
    data_fingerprint: Mapped[str | None] = mapped_column(String(80))
    #: JSON {monitor: mode} from run_started: directions for checkpoint events that carry none.
    monitor_modes: Mapped[str | None] = mapped_column(Text)


class SqlPromoterCheckpoint(Base):
    """Checkpoints the promoter saw announced (its own copy: it does not wait for the recorder)."""

    __tablename__ = "promoter_checkpoints"

    run_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    epoch: Mapped[int] = mapped_column(Integer, primary_key=True)
    path: Mapped[str] = mapped_column(String(2048), primary_key=True)
    monitor: Mapped[str | None] = mapped_column(String(255))
    value: Mapped[float | None] = mapped_column(Float)
    sha256: Mapped[str | None] = mapped_column(String(64))
    mode: Mapped[str | None] = mapped_column(String(8))
    source: Mapped[str | None] = mapped_column(String(32))
    batch: Mapped[int | None] = mapped_column(Integer)
    seq: Mapped[int | None] = mapped_column(BigInteger)

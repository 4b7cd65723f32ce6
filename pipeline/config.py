"""Fitstream settings: one object, read from ``FITSTREAM_*`` environment variables.

Example:
    >>> from pipeline.config import Settings
    >>> Settings(redis_url="redis://localhost:6379/1").stream
    'fitstream:events'

Defaults are embedded so that a laptop with a local Redis needs no configuration:
a SQLite file ``fitstream.db`` in the working directory, run directories and
the publisher's disk spool under ``.fitstream/`` in the working directory.

Passwords can come from files (Docker or Kubernetes secrets) instead of the URLs:
``FITSTREAM_REDIS_PASSWORD_FILE``, ``FITSTREAM_DATABASE_PASSWORD_FILE`` and
``FITSTREAM_READER_DATABASE_PASSWORD_FILE``; each is read once and put into the URL it belongs to.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlsplit, urlunsplit

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from pipeline.errors import ConfigurationError

DEFAULT_REDIS_URL = "redis://localhost:6379/0"
DEFAULT_STREAM = "fitstream:events"
#: The bundled examples (the repository's examples/, shipped inside the package).
BUNDLED_EXAMPLES = "pipeline.examples"
#: What job specs may import from when FITSTREAM_ALLOWED_MODULES is unset.
DEFAULT_ALLOWED_MODULES = (BUNDLED_EXAMPLES,)
DEFAULT_RETENTION_SECONDS = 7 * 24 * 3600
DEFAULT_STREAM_MAX_EVENTS = 10_000_000
#: The settings that name password files (each message about one names it).
REDIS_PASSWORD_FILE = "FITSTREAM_REDIS_PASSWORD_FILE"
DATABASE_PASSWORD_FILE = "FITSTREAM_DATABASE_PASSWORD_FILE"
READER_PASSWORD_FILE = "FITSTREAM_READER_DATABASE_PASSWORD_FILE"


def _default_database_url() -> str:
    return f"sqlite:///{Path.cwd() / 'fitstream.db'}"


def _default_home() -> Path:
    return Path.cwd() / ".fitstream"


def read_secret_file(path: Path, variable: str) -> str:
    """The secret held in ``path`` (named by the setting ``variable``): the file's text without its
    trailing line break, so that ``openssl rand -hex 32 > file`` makes a valid one.

    Raises:
        ConfigurationError: the file is missing, unreadable, not UTF-8 text, empty or more than one
            line. The message names ``variable`` and the path, never the file's content. Not retryable.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigurationError(
            f"{variable} is {str(path)!r}, which does not exist: point it at the file that holds the password, "
            "or unset it"
        ) from None
    except OSError as exc:
        raise ConfigurationError(
            f"{variable}: cannot read {str(path)!r} ({exc.strerror or exc}); let the user this process runs as read it"
        ) from None
    except UnicodeDecodeError:
        raise ConfigurationError(f"{variable}: {str(path)!r} is not UTF-8 text") from None
    secret = text.rstrip("\r\n")
    if not secret:
        raise ConfigurationError(f"{variable}: {str(path)!r} is empty; put the password in it")
    if "\n" in secret or "\r" in secret:
        # The containers' entrypoints drop every line break; one line keeps everyone reading the same password.
        raise ConfigurationError(
            f"{variable}: {str(path)!r} holds more than one line; a password is one line"
        )
    return secret


def url_with_password(url: str, password: str, *, url_variable: str, password_variable: str) -> str:
    """``url`` (redis://, rediss://, unix://, postgresql+psycopg://…) with ``password`` in it,
    percent-encoded; a user name already in the URL is kept.

    Example:
        >>> url_with_password("redis://redis:6379/0", "a/b", url_variable="U", password_variable="P")
        'redis://:a%2Fb@redis:6379/0'

    Raises:
        ConfigurationError: the URL already holds a password (two sources would be ambiguous).
    """
    parts = urlsplit(url)
    if parts.password is not None:
        raise ConfigurationError(
            f"{url_variable} already holds a password and {password_variable} gives another; keep one of them"
        )
    username, _, host = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{username}:{quote(password, safe='')}@{host}"))


#: URL schemes that name a Redis Cluster (any one of its nodes).
CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")


def is_cluster_url(url: str) -> bool:
    """Whether ``url`` names a Redis Cluster.

    Example:
        >>> is_cluster_url("redis+cluster://10.0.0.5:7000"), is_cluster_url("redis://localhost:6379/0")
        (True, False)
    """
    return url.startswith(CLUSTER_SCHEMES)


def _redis_server(url: str) -> tuple[object, ...]:
    """What tells two Redis URLs' servers apart: the socket path, or the host and port."""
    parts = urlsplit(url)
    return (parts.path,) if parts.scheme == "unix" else (parts.hostname, parts.port or 6379)


class Settings(BaseSettings):
    """All of Fitstream's settings. Each field reads ``FITSTREAM_<FIELD>``.

    Args:
        redis_url: Redis holding the event stream. Default ``redis://localhost:6379/0``.
            A Redis Cluster: ``redis+cluster://host:port`` (any one node; ``rediss+cluster://`` with
            TLS); then the Celery broker must be a plain Redis, named by ``broker_url``.
        database_url: SQLAlchemy URL of the history database. Default: SQLite file
            ``fitstream.db`` in the working directory. PostgreSQL:
            ``postgresql+psycopg://user@host/db``.
        home: Root of run directories and the publisher's disk spool. Default ``./.fitstream``.
        stream: Redis stream key of the events. Default ``fitstream:events``.
        stream_shards: How many stream keys the events are spread over, by run id (each run's
            events stay on one shard, in order). Each shard's keys are hash-tagged
            (``{fitstream:events:2}``) so that a Redis Cluster keeps a whole shard on one node.
            Change it only on a drained deployment (see README, "Run at scale"). Default 1.
        stream_retention_seconds: How long acknowledged events stay in the stream
            (``fitstream watch`` and late consumer groups read them). Default 7 days.
        stream_max_events: Hard cap on the stream's length. Trimming past it can drop
            events not yet acknowledged by every group, which is logged as an error and
            counted. Default 10,000,000.
        consumer_batch_size: Messages a consumer reads per round. Default 2,000.
        consumer_block_ms: How long a consumer's read waits for new messages. Default 1,000.
        claim_idle_ms: A message pending this long on a consumer is presumed lost with
            that consumer and is reclaimed by another one. Default 60,000.
        leader_ttl_seconds: Groups that need their events in order (alerter, promoter) have one
            leader; a standby takes over this long after the leader died. Default 10.
        allowed_modules: Module prefixes that job specs may name for their model, data and
            callbacks (comma-separated in FITSTREAM_ALLOWED_MODULES). Default ``pipeline.examples``
            (the bundled examples; their earlier name ``examples`` still names them, see
            ``pipeline.job_references``).
        max_job_seconds: Longest a training job may run; Celery's visibility timeout is set
            above it so a running job is not delivered twice. Default 7 days.
        lease_ttl_seconds: A run's lease expires this long after its worker's last heartbeat;
            then a re-delivered job resumes it. Default 60.
        broker_url: Celery broker. Default: ``redis_url``.
        worker_preload: Import TensorFlow in each fresh worker child before its job arrives. Default true.
        worker_warm_spares: Idle children a worker keeps warm (TensorFlow imported, GPU untouched) beside
            the one training, so the next job starts as soon as the current one ends; still one job
            at a time. 0 turns it off. Default 1.
        alert_rules: The alert rules file (YAML). Default: none (the alerter refuses to start).
        alert_retry_budget_seconds: How long an alert keeps being retried before it is marked
            undelivered. Default 3600.
        model_store: Where promoted models go: a path or any fsspec URL (``s3://bucket/models``).
            Default: ``model-store`` under ``home``.
        promoter_load_check: Before a checkpoint is promoted, load it with Keras
            (``safe_mode=True``) in a helper process, so the promoter itself never imports
            TensorFlow. Turn off only where the promoter has no TensorFlow installed; the
            sha256 and the ``.keras`` structure are still checked. Default true.
        promoter_load_timeout_seconds: A checkpoint that takes longer to load is refused. Default 300.
        reader_database_url: How read-only paths (``fitstream sql``, runs, show, models) connect to
            PostgreSQL: as the ``fitstream_reader`` role, which may only SELECT. Default: the history
            database's URL with the user ``fitstream_reader`` and no password (trust or peer auth).
        sql_timeout_seconds: A read-only query running longer is cancelled. Default 30.
        sql_max_rows: ``fitstream sql`` returns at most this many rows (and says it truncated). Default 10000.
        batch_metrics_retention_days: The raw ``batch_metrics`` rows of a run whose last event is older
            than this are replaced by their downsampled copy in ``batch_metric_buckets``. Default 30.
        batch_metrics_bucket_steps: Steps per bucket of that copy (min, max, last value each). Default 100.
        batch_metrics_compact_every_seconds: How often a recorder looks for runs to downsample. Default 3600.
        redis_password_file: A file holding the Redis password (``requirepass`` or the ACL user's),
            put into ``redis_url``, and into ``broker_url`` when that is unset or names the same
            server without a password of its own. Default: none.
        database_password_file: A file holding the password of ``database_url``'s user (PostgreSQL).
            Default: none.
        reader_database_password_file: A file holding the ``fitstream_reader`` role's password, put
            into ``reader_database_url`` (or into its default, the database URL as ``fitstream_reader``).
            Default: none.

    Raises:
        ConfigurationError: a password file is missing, unreadable or empty, or its URL already holds
            a password. Passwords never appear in the message, nor in the object's ``repr``.
    """

    model_config = SettingsConfigDict(env_prefix="FITSTREAM_", extra="ignore")

    # repr=False: with a password file, these URLs hold the password.
    redis_url: str = Field(default=DEFAULT_REDIS_URL, repr=False)
    database_url: str = Field(default_factory=_default_database_url, repr=False)
    home: Path = Field(default_factory=_default_home)
    stream: str = DEFAULT_STREAM
    stream_shards: int = Field(default=1, ge=1, le=1024)
    stream_retention_seconds: int = Field(default=DEFAULT_RETENTION_SECONDS, ge=0)
    stream_max_events: int = Field(default=DEFAULT_STREAM_MAX_EVENTS, ge=1000)
    consumer_batch_size: int = Field(default=2000, ge=1, le=100_000)
    consumer_block_ms: int = Field(default=1000, ge=1)
    claim_idle_ms: int = Field(default=60_000, ge=100)
    leader_ttl_seconds: float = Field(default=10.0, gt=0)
    allowed_modules: Annotated[tuple[str, ...], NoDecode] = DEFAULT_ALLOWED_MODULES
    max_job_seconds: int = Field(default=7 * 24 * 3600, ge=1)
    lease_ttl_seconds: float = Field(default=60.0, gt=0)
    broker_url: str | None = Field(default=None, repr=False)
    worker_preload: bool = True
    worker_warm_spares: int = Field(default=1, ge=0, le=8)
    alert_rules: Path | None = None
    model_store: str | None = None
    alert_retry_budget_seconds: float = Field(default=3600.0, gt=0)
    promoter_load_check: bool = True
    promoter_load_timeout_seconds: float = Field(default=300.0, gt=0)
    reader_database_url: str | None = Field(default=None, repr=False)
    sql_timeout_seconds: float = Field(default=30.0, gt=0)
    sql_max_rows: int = Field(default=10_000, ge=1)
    batch_metrics_retention_days: float = Field(default=30.0, ge=0)
    batch_metrics_bucket_steps: int = Field(default=100, ge=1)
    batch_metrics_compact_every_seconds: float = Field(default=3600.0, gt=0)
    redis_password_file: Path | None = None
    database_password_file: Path | None = None
    reader_database_password_file: Path | None = None

    def __init__(self, **values: Any) -> None:
        super().__init__(**values)
        # After validation, not in a validator: pydantic would wrap the ConfigurationError into a
        # ValidationError, and the CLI shows Fitstream's errors as one line.
        self._apply_password_files()

    def _apply_password_files(self) -> None:
        if self.redis_password_file is not None:
            self._apply_redis_password(read_secret_file(self.redis_password_file, REDIS_PASSWORD_FILE))
        if self.database_password_file is not None:
            self._refuse_sqlite(DATABASE_PASSWORD_FILE)
            password = read_secret_file(self.database_password_file, DATABASE_PASSWORD_FILE)
            self.database_url = url_with_password(
                self.database_url,
                password,
                url_variable="FITSTREAM_DATABASE_URL",
                password_variable=DATABASE_PASSWORD_FILE,
            )
        if self.reader_database_password_file is not None:
            self._refuse_sqlite(READER_PASSWORD_FILE)
            self._apply_reader_password(
                read_secret_file(self.reader_database_password_file, READER_PASSWORD_FILE)
            )

    def _apply_redis_password(self, password: str) -> None:
        # The Celery broker is usually the same Redis: same server, same password.
        broker = self.broker_url
        if (
            broker
            and _redis_server(broker) == _redis_server(self.redis_url)
            and urlsplit(broker).password is None
        ):
            self.broker_url = url_with_password(
                broker, password, url_variable="FITSTREAM_BROKER_URL", password_variable=REDIS_PASSWORD_FILE
            )
        self.redis_url = url_with_password(
            self.redis_url,
            password,
            url_variable="FITSTREAM_REDIS_URL",
            password_variable=REDIS_PASSWORD_FILE,
        )

    def _apply_reader_password(self, password: str) -> None:
        from pipeline.db.readonly import reader_url  # the one rule for the reader's default URL

        explicit = self.reader_database_url
        self.reader_database_url = url_with_password(
            reader_url(self.database_url, explicit),
            password,
            url_variable="FITSTREAM_READER_DATABASE_URL" if explicit else "FITSTREAM_DATABASE_URL",
            password_variable=READER_PASSWORD_FILE,
        )

    def _refuse_sqlite(self, password_variable: str) -> None:
        if self.database_url.startswith("sqlite"):
            raise ConfigurationError(
                f"{password_variable} is set, but FITSTREAM_DATABASE_URL is a SQLite file, which takes no password"
            )

    @field_validator("allowed_modules", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        # FITSTREAM_ALLOWED_MODULES=a,b (NoDecode: the variable is this text, not JSON).
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @property
    def celery_broker_url(self) -> str:
        """``FITSTREAM_BROKER_URL``, defaulting to the event stream's Redis (not a Redis Cluster:
        Celery's Redis transport cannot use one)."""
        if self.broker_url:
            return self.broker_url
        if is_cluster_url(self.redis_url):
            raise ConfigurationError(
                "FITSTREAM_REDIS_URL names a Redis Cluster, which Celery cannot use as its broker: set "
                "FITSTREAM_BROKER_URL to a plain Redis (redis://host:6379/0) for the job queue"
            )
        return self.redis_url

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://", *CLUSTER_SCHEMES)):
            raise ValueError(
                "FITSTREAM_REDIS_URL must start with redis://, rediss://, unix:// or (a Redis Cluster) "
                f"redis+cluster:// or rediss+cluster://; got {value!r}"
            )
        return value

    @field_validator(
        "alert_rules",
        "broker_url",
        "model_store",
        "reader_database_url",
        "redis_password_file",
        "database_password_file",
        "reader_database_password_file",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @property
    def spool_dir(self) -> Path:
        """Where the publisher spools events while Redis is unreachable."""
        return self.home / "spool"

    @property
    def runs_dir(self) -> Path:
        return self.home / "runs"

    @property
    def model_store_url(self) -> str:
        """``FITSTREAM_MODEL_STORE``: a path or fsspec URL; default ``<home>/model-store``."""
        return self.model_store or str(self.home / "model-store")


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()

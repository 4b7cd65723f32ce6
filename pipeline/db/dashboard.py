"""What the dashboard (``fitstream ui``) shows: its queries, read through the read-only engine (the
same path as ``fitstream runs``), shaped as the JSON API answers them.

Example:
    >>> engine = make_engine(settings.database_url, read_only=True)   # doctest: +SKIP
    >>> runs_payload(engine)[0]["status"]                              # doctest: +SKIP
    'early_stopped'
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from pipeline.db.downsample import downsample
from pipeline.db.experiments import compare_runs
from pipeline.db.queries import get_run_summary, list_runs, monitored_curves, resolve_run_id, run_checkpoints
from pipeline.db.registry import list_versions
from pipeline.db.session import transaction

#: The fields of ``GET /api/runs`` (the contract), in order.
RUN_KEYS = (
    "run_id",
    "name",
    "status",
    "epochs_completed",
    "monitor",
    "mode",
    "best_value",
    "best_epoch",
    "started_at",
    "finished_at",
    "sweep_id",
)
#: Points per metric a chart gets at most (min/max buckets beyond it).
MAX_POINTS = 2000


def _iso(value: Any) -> Any:
    return value.isoformat() if hasattr(value, "isoformat") else value


def runs_payload(
    engine: Engine,
    *,
    status: str | None = None,
    name: str | None = None,
    sweep: str | None = None,
    limit: int = 200,
) -> list[dict[str, Any]]:
    """The runs list: the contract's fields, plus ``duration_s`` and ``curve`` (the monitored metric by epoch)."""
    found = list_runs(engine, status=status, name=name, limit=limit)
    if sweep:
        found = [r for r in found if r.sweep_id and r.sweep_id.startswith(sweep)]
    curves = monitored_curves(engine, found)
    out = []
    for run in found:
        row = {key: _iso(getattr(run, key)) for key in RUN_KEYS}
        duration = run.wall_time_s
        if duration is None and run.started_at is not None and run.finished_at is not None:
            duration = (run.finished_at - run.started_at).total_seconds()
        row["duration_s"] = duration
        row["curve"] = curves.get(run.run_id, [])
        out.append(row)
    return out


def metrics_payload(
    engine: Engine, run_ref: str, *, level: str = "epoch", limit: int = MAX_POINTS
) -> dict[str, list[list[Any]]]:
    """Metric name → ``[[epoch, value], …]`` (``level="batch"``: ``[[step, value], …]``, raw rows and the
    downsampled buckets of compacted runs), each at most ``limit`` points."""
    run_id = resolve_run_id(engine, run_ref)
    series: dict[str, list[tuple[int, float | None]]] = {}
    if level == "batch":
        query = sa.text(
            "SELECT name, step, value FROM batch_metrics WHERE run_id = :r "
            "UNION ALL SELECT name, last_step, last_value FROM batch_metric_buckets WHERE run_id = :r ORDER BY 1, 2"
        )
        params: dict[str, Any] = {"r": run_id}
    else:
        with transaction(engine) as conn:
            longest = conn.execute(
                sa.text("SELECT max(last_epoch) FROM metric_summaries WHERE run_id = :r"), {"r": run_id}
            ).scalar()
        if longest is not None and longest + 1 > limit:
            return _epoch_buckets(engine, run_id, width=-(-(longest + 1) // max(1, limit // 2)))
        query = sa.text("SELECT name, epoch, value FROM epoch_metrics WHERE run_id = :r ORDER BY name, epoch")
        params = {"r": run_id}
    with transaction(engine) as conn:
        for name, x, value in conn.execute(query, params):
            series.setdefault(name, []).append((int(x), value))
    return {name: [list(p) for p in downsample(points, limit)] for name, points in series.items()}


def _epoch_buckets(engine: Engine, run_id: str, *, width: int) -> dict[str, list[list[Any]]]:
    """Long epoch curves reduced in the database: per bucket of ``width`` epochs its highest and lowest
    value, at the bucket's first and last epoch (highest first where the curve falls, as losses do)."""
    query = sa.text(
        "SELECT name, epoch / :w AS b, min(epoch), max(epoch), min(value), max(value), avg(value) FROM epoch_metrics "
        "WHERE run_id = :r GROUP BY name, epoch / :w ORDER BY name, b"
    )
    buckets: dict[str, list[tuple[int, int, float | None, float | None, float | None]]] = {}
    with transaction(engine) as conn:
        for name, _b, first, last, low, high, mean in conn.execute(query, {"r": run_id, "w": width}):
            buckets.setdefault(name, []).append((int(first), int(last), low, high, mean))
    out: dict[str, list[list[Any]]] = {}
    for name, rows in buckets.items():
        means = [m for *_, m in rows if m is not None]
        falling = len(means) > 1 and means[-1] < means[0]
        points: list[list[Any]] = []
        for first, last, low, high, _mean in rows:
            pair = [[first, high], [last, low]] if falling else [[first, low], [last, high]]
            points.extend(pair if first != last else pair[:1])
        out[name] = points
    return out


def run_payload(engine: Engine, run_ref: str) -> dict[str, Any]:
    """One run for its page: the run, params, checkpoints, alerts, model versions, and the marks on
    its charts (best epoch, early stop, learning-rate changes, checkpoints, alerts)."""
    run = get_run_summary(engine, run_ref)
    with transaction(engine) as conn:
        checkpoints = run_checkpoints(conn, run.run_id)
        # .all(): a CursorResult has keys(), so dict() would read it as a mapping, not as pairs.
        params = dict(
            conn.execute(
                sa.text("SELECT key, value FROM params WHERE run_id = :r ORDER BY key"), {"r": run.run_id}
            ).all()
        )
        alerts = []
        for row in conn.execute(
            sa.text(
                "SELECT rule, state, severity, channel, status, created_at, message FROM alerts WHERE run_id = :r ORDER BY created_at"
            ),
            {"r": run.run_id},
        ):
            alert = dict(row._mapping)
            alert["epoch"] = _epoch_of(alert.pop("message"))
            alerts.append(alert)
        # Where the learning rate changed, found by the database (a run may have 100,000 epochs).
        lr_changes = [
            {"epoch": epoch, "from": before, "to": after}
            for epoch, after, before in conn.execute(
                sa.text(
                    "SELECT epoch, learning_rate, prev FROM (SELECT epoch, learning_rate, "
                    "LAG(learning_rate) OVER (ORDER BY epoch) AS prev FROM epochs WHERE run_id = :r) AS steps "
                    "WHERE prev IS NOT NULL AND learning_rate IS NOT NULL AND learning_rate <> prev ORDER BY epoch"
                ),
                {"r": run.run_id},
            )
        ]
    versions = [v for v in list_versions(engine) if v.get("run_id") == run.run_id]
    return {
        "run": {k: _iso(v) for k, v in run.as_dict().items()},
        "params": params,
        "checkpoints": [{k: _iso(v) for k, v in c.items()} for c in checkpoints],
        "alerts": [{k: _iso(v) for k, v in a.items()} for a in alerts],
        "models": [{k: _iso(v) for k, v in m.items()} for m in versions],
        "marks": {
            "best_epoch": run.best_epoch,
            "stopped_epoch": run.stopped_epoch,
            "lr_changes": lr_changes,
            "checkpoints": sorted({c["epoch"] for c in checkpoints if c.get("epoch") is not None}),
            "alerts": [
                {"epoch": a["epoch"], "rule": a["rule"], "state": a["state"]}
                for a in alerts
                if a["epoch"] is not None
            ],
        },
    }


def _epoch_of(message: str | None) -> int | None:
    """The epoch an alert was about (its outbox message says), if any."""
    try:
        epoch = json.loads(message or "{}").get("epoch")
    except ValueError:
        return None
    return epoch if isinstance(epoch, int) else None


def compare_payload(engine: Engine, refs: list[str]) -> dict[str, Any]:
    """Runs (or sweeps' trials) side by side: each run's outcome and params, and the params that differ."""
    compared, differing = compare_runs(engine, refs)
    return {
        "runs": [
            {
                "run_id": c.run_id,
                "name": c.name,
                "status": c.status,
                "epochs": c.epochs,
                "metric": c.metric,
                "mode": c.mode,
                "best_value": c.best_value,
                "best_epoch": c.best_epoch,
                "params": c.params,
                "best": c.best,
            }
            for c in compared
        ],
        "differing": differing,
    }


def models_payload(engine: Engine) -> list[dict[str, Any]]:
    """Every model version with its aliases and lineage (run, epoch, metric, value, data fingerprint)."""
    return [{k: _iso(v) for k, v in m.items()} for m in list_versions(engine)]

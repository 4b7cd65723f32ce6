"""Read-side queries for experiments: sweeps, their trials, and runs compared side by side.

Everything here reads the history database through a read-only engine, like ``fitstream runs``;
the direction of a metric is the run's own (``runs.mode``, from Keras), or else its name's
(:func:`pipeline.monitor.infer_mode`).

Example:
    >>> engine = make_engine("sqlite:///fitstream.db", read_only=True)      # doctest: +SKIP
    >>> [t.run_id for t in sweep_trials(engine, "3f2c…").trials]            # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from pipeline.db.queries import resolve_run_id
from pipeline.db.session import transaction
from pipeline.errors import ConfigurationError, RunNotFoundError
from pipeline.monitor import Monitor


@dataclass(frozen=True)
class Sweep:
    id: str
    name: str | None
    state: str
    trials: int
    created_at: Any
    spec: dict[str, Any] | None


@dataclass
class Compared:
    """One run in a comparison: its outcome, the best value of the compared metric and when."""

    run_id: str
    name: str | None
    status: str
    epochs: int
    sweep_id: str | None
    metric: str | None
    mode: str | None
    best_value: float | None
    best_epoch: int | None
    params: dict[str, Any] = field(default_factory=dict)
    status_reason: str | None = None
    best: bool = False  # the best of the comparison by the metric, in its direction


@dataclass(frozen=True)
class SweepView:
    sweep: Sweep
    metric: str | None
    mode: str | None
    varied: list[str]  # the sweep's own keys (grid, random), as the trials' params name them
    trials: list[Compared]


def list_sweeps(engine: Engine, *, limit: int = 50) -> list[dict[str, Any]]:
    """Most recent sweeps first, with how many trials ended and the best one so far."""
    with transaction(engine) as conn:
        sweeps = [
            _sweep(row)
            for row in conn.execute(
                sa.text(
                    "SELECT id, name, state, trials, created_at, spec FROM sweeps ORDER BY created_at DESC, id LIMIT :limit"
                ),
                {"limit": limit},
            )
        ]
        out = []
        for sweep in sweeps:
            trials = _compared(conn, _sweep_run_ids(conn, sweep.id), None)
            _ranked(trials, next((t.mode for t in trials if t.mode), None))  # marks the best
            ended = sum(1 for t in trials if t.status in _terminal())
            best = next((t for t in trials if t.best), None)
            out.append(
                {
                    "sweep_id": sweep.id,
                    "name": sweep.name,
                    "state": sweep.state,
                    "trials": sweep.trials,
                    "ended": ended,
                    "created_at": sweep.created_at,
                    "monitor": best.metric if best else None,
                    "best_value": best.best_value if best else None,
                    "best_run_id": best.run_id if best else None,
                }
            )
    return out


def sweep_trials(engine: Engine, sweep_ref: str, *, metric: str | None = None) -> SweepView:
    """A sweep's trials, best first by ``metric`` (default: each trial's monitored metric) in its
    direction; trials without a value come last."""
    with transaction(engine) as conn:
        sweep = _resolve_sweep(conn, sweep_ref)
        trials = _compared(conn, _sweep_run_ids(conn, sweep.id), metric)
    varied = _sweep_keys(sweep.spec)
    mode = next((t.mode for t in trials if t.mode), None)
    return SweepView(sweep, trials[0].metric if trials else metric, mode, varied, _ranked(trials, mode))


def compare_runs(
    engine: Engine, refs: Sequence[str], *, metric: str | None = None
) -> tuple[list[Compared], list[str]]:
    """The runs that ``refs`` name (run ids or their first characters, sweep ids for all their
    trials), and the parameter keys whose values differ between them."""
    if not refs:
        raise ConfigurationError("name at least one run or sweep to compare")
    groups: list[list[str] | None] = []
    with transaction(engine) as conn:  # a sweep id first, then a run id
        for ref in refs:
            sweep = _find_sweep(conn, ref)
            groups.append(_sweep_run_ids(conn, sweep.id) if sweep is not None else None)
    resolved: list[str] = []
    for ref, group in zip(refs, groups):
        for run_id in group if group is not None else [resolve_run_id(engine, ref)]:
            if run_id not in resolved:
                resolved.append(run_id)
    with transaction(engine) as conn:
        compared = _compared(conn, resolved, metric)
    keys = sorted({k for c in compared for k in c.params})
    differing = [
        k for k in keys if len({json.dumps(c.params.get(k, "<unset>"), sort_keys=True) for c in compared}) > 1
    ]
    mode = next((c.mode for c in compared if c.mode), None)
    _ranked(compared, mode)  # marks the best
    return compared, differing


# -- helpers ----------------------------------------------------------------------------------
def _terminal() -> tuple[str, ...]:
    from pipeline.events import TERMINAL_STATUSES

    return TERMINAL_STATUSES


def _sweep(row: Any) -> Sweep:
    spec = json.loads(row.spec) if row.spec else None
    return Sweep(row.id, row.name, row.state, int(row.trials), row.created_at, spec)


def _find_sweep(conn: Connection, ref: str) -> Sweep | None:
    rows = conn.execute(
        sa.text(
            "SELECT id, name, state, trials, created_at, spec FROM sweeps WHERE id = :ref OR id LIKE :prefix ESCAPE '\\' ORDER BY id LIMIT 6"
        ),
        {"ref": ref, "prefix": ref.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"},
    ).all()
    exact = [r for r in rows if r.id == ref]
    if exact:
        return _sweep(exact[0])
    if len(rows) > 1:
        raise RunNotFoundError(
            f"{ref!r} matches several sweeps ({', '.join(r.id for r in rows[:5])}…); give more characters"
        )
    return _sweep(rows[0]) if rows and ref else None


def _resolve_sweep(conn: Connection, ref: str) -> Sweep:
    if not ref:
        raise ConfigurationError("a sweep id (or the start of one) is required")
    sweep = _find_sweep(conn, ref)
    if sweep is None:
        raise RunNotFoundError(f"no sweep with id {ref!r}; list sweeps with: fitstream sweeps")
    return sweep


def _sweep_run_ids(conn: Connection, sweep_id: str) -> list[str]:
    return list(
        conn.execute(
            sa.text("SELECT run_id FROM runs WHERE sweep_id = :id ORDER BY queued_at, run_id"),
            {"id": sweep_id},
        ).scalars()
    )


def _sweep_keys(section: dict[str, Any] | None) -> list[str]:
    if not section:
        return []
    random_keys = [k for k in (section.get("random") or {}) if k not in ("trials", "seed")]
    return [*(section.get("grid") or {}), *random_keys]


def _params(conn: Connection, run_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {run_id: {} for run_id in run_ids}
    if not run_ids:
        return out
    query = sa.text("SELECT run_id, key, value, value_num FROM params WHERE run_id IN :ids").bindparams(
        sa.bindparam("ids", expanding=True)
    )
    for row in conn.execute(query, {"ids": list(run_ids)}):
        # A number's text is its JSON (pipeline.params.param_row): read back as the int or float it was.
        out[row.run_id][row.key] = json.loads(row.value) if row.value_num is not None else row.value
    return out


def _compared(conn: Connection, run_ids: Sequence[str], metric: str | None) -> list[Compared]:
    if not run_ids:
        return []
    query = sa.text(
        "SELECT run_id, name, status, status_reason, epochs_completed, sweep_id, monitor, mode, best_value, best_epoch "
        "FROM runs WHERE run_id IN :ids"
    ).bindparams(sa.bindparam("ids", expanding=True))
    rows = {row.run_id: row for row in conn.execute(query, {"ids": list(run_ids)})}
    params = _params(conn, run_ids)
    out = []
    for run_id in run_ids:
        row = rows.get(run_id)
        if row is None:
            continue
        compared = Compared(
            run_id=run_id,
            name=row.name,
            status=row.status,
            epochs=int(row.epochs_completed or 0),
            sweep_id=row.sweep_id,
            metric=metric or row.monitor,
            mode=row.mode,
            best_value=row.best_value,
            best_epoch=row.best_epoch,
            params=params.get(run_id, {}),
            status_reason=row.status_reason,
        )
        if metric is not None and (metric != row.monitor or row.best_value is None):
            _best_from_epochs(conn, compared, metric, run_monitor=row.monitor)
        out.append(compared)
    return out


def _best_from_epochs(conn: Connection, compared: Compared, metric: str, *, run_monitor: str | None) -> None:
    """The best value of ``metric`` over the run's recorded epochs, in its direction (the run's own
    when ``metric`` is what its callbacks monitored, else the name's)."""
    mode = compared.mode if metric == run_monitor else None
    try:
        rule = Monitor(metric, mode=mode or "auto")
    except ConfigurationError:
        raise ConfigurationError(
            f"cannot tell whether {metric!r} should be minimised or maximised; compare by a metric whose name says "
            "(e.g. val_loss, val_accuracy) or by the runs' own monitor (leave out --metric)"
        ) from None
    epochs = conn.execute(
        sa.text("SELECT epoch, value FROM epoch_metrics WHERE run_id = :id AND name = :name ORDER BY epoch"),
        {"id": compared.run_id, "name": metric},
    ).all()
    best = rule.best_of(value for _, value in epochs)
    compared.mode = rule.mode
    compared.best_value, compared.best_epoch = (
        (epochs[best[0]][1], epochs[best[0]][0]) if best else (None, None)
    )


def _ranked(trials: list[Compared], mode: str | None) -> list[Compared]:
    """Best first in ``mode``'s direction (each trial's own mode when they have one); no value last.
    Marks the first with a value as the best."""

    def key(t: Compared) -> tuple[int, float]:
        value = t.best_value
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return 1, 0.0
        return 0, -value if (t.mode or mode) == "max" else value

    ranked = sorted(trials, key=key)
    for t in trials:
        t.best = False
    if ranked and key(ranked[0])[0] == 0:
        ranked[0].best = True
    return ranked

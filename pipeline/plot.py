"""Learning curves as a picture: ``fitstream plot`` and, for notebooks, :func:`plot_runs`.

One panel per metric family (``loss`` with ``val_loss``, ``accuracy`` with ``val_accuracy``, …),
epochs on the x axis, the runs overlaid (one colour each; validation dashed). Each run's best epoch
of its monitored metric is starred, the epoch EarlyStopping stopped at is a dotted vertical line,
and the learning rate is drawn as steps on a second axis of the monitored metric's panel. The file
type follows the extension (``.png``, ``.svg``, ``.pdf``). The data comes through the read-only
query layer; matplotlib's Agg canvas draws it, without a display and without pyplot's global state.

Example:
    >>> engine = make_engine("sqlite:///fitstream.db", read_only=True)        # doctest: +SKIP
    >>> plot_runs(engine, ["3f2a9c", "7b1e2d"], Path("curves.png"))          # doctest: +SKIP
    PosixPath('curves.png')
    >>> figure = build_figure(engine, ["3f2a9c"], metrics=["val_loss"])      # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine

from pipeline.db.entities import RunDetail
from pipeline.db.queries import get_run
from pipeline.errors import ConfigurationError

FORMATS = (".png", ".svg", ".pdf")
PREFIXES = ("val_",)


def family(metric: str) -> str:
    """The panel a metric is drawn in: its name without ``val_``.

    Example:
        >>> family("val_loss"), family("loss"), family("val_accuracy")
        ('loss', 'loss', 'accuracy')
    """
    for prefix in PREFIXES:
        if metric.startswith(prefix):
            return metric[len(prefix) :]
    return metric


def _series(detail: RunDetail, metric: str) -> tuple[list[int], list[float]]:
    points = [(e.epoch, e.metrics.get(metric)) for e in detail.epochs]
    kept = [(x, float(y)) for x, y in points if y is not None and math.isfinite(float(y))]
    return [x for x, _ in kept], [y for _, y in kept]


def build_figure(engine: Engine, run_refs: Sequence[str], *, metrics: Sequence[str] | None = None) -> Any:
    """A matplotlib ``Figure`` of the runs' curves (see the module docstring).

    Raises:
        RunNotFoundError: a run id (or prefix) matches no run, or several.
        ConfigurationError: no runs given, or a ``metrics`` name none of the runs recorded.
    """
    from matplotlib.figure import Figure

    if not run_refs:
        raise ConfigurationError("name at least one run to plot (fitstream runs lists them)")
    details = [get_run(engine, ref) for ref in run_refs]
    recorded = {name for d in details for e in d.epochs for name in e.metrics}
    wanted = list(metrics) if metrics else sorted(recorded)
    unknown = [m for m in wanted if m not in recorded]
    if unknown:
        raise ConfigurationError(
            f"no run here recorded the metric {unknown[0]!r}; recorded: {', '.join(sorted(recorded)) or 'none yet'}"
        )
    families: dict[str, list[str]] = {}
    for metric in sorted(wanted, key=lambda m: (family(m), m != family(m), m)):
        families.setdefault(family(metric), []).append(metric)
    monitored = {d.run.monitor for d in details if d.run.monitor}
    panels = sorted(families, key=lambda f: (not any(family(m) == f for m in monitored), f)) or [
        "(no metrics)"
    ]
    figure = Figure(figsize=(9, 2.8 * len(panels) + 0.6), layout="constrained")
    axes = figure.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    colours = [f"C{i % 10}" for i in range(len(details))]
    for ax, panel in zip(axes, panels):
        for detail, colour in zip(details, colours):
            short = f"{detail.run.name or detail.run.run_id[:8]} ({detail.run.run_id[:8]})"
            for metric in families.get(panel, []):
                xs, ys = _series(detail, metric)
                if xs:
                    ax.plot(
                        xs,
                        ys,
                        color=colour,
                        linestyle="--" if metric.startswith(PREFIXES) else "-",
                        marker="." if len(xs) < 40 else None,
                        label=f"{short} {metric}",
                    )
            _mark(ax, detail, colour, panel)
        ax.set_ylabel(panel)
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small", loc="best")
        if any(family(m) == panel for m in monitored):
            _learning_rates(ax, details, colours)
    axes[-1].set_xlabel("epoch")
    figure.suptitle(", ".join(d.run.name or d.run.run_id[:8] for d in details)[:120])
    return figure


def _mark(ax: Any, detail: RunDetail, colour: str, panel: str) -> None:
    """The best epoch of the monitored metric (a star) and where EarlyStopping stopped (dotted line)."""
    run = detail.run
    if not run.monitor or family(run.monitor) != panel:
        return
    if run.best_epoch is not None:
        best = next((e.metrics.get(run.monitor) for e in detail.epochs if e.epoch == run.best_epoch), None)
        value = run.best_value if run.best_value is not None else best
        if value is not None and math.isfinite(float(value)):
            ax.plot(
                [run.best_epoch],
                [float(value)],
                marker="*",
                markersize=14,
                color=colour,
                linestyle="none",
                label=f"best {run.monitor} (epoch {run.best_epoch})",
                gid="best-epoch",
            )
    if run.stopped_epoch is not None:
        ax.axvline(
            run.stopped_epoch,
            color=colour,
            linestyle=":",
            linewidth=1.2,
            label=f"early stop (epoch {run.stopped_epoch})",
            gid="early-stop",
        )


def _learning_rates(ax: Any, details: Sequence[RunDetail], colours: Sequence[str]) -> None:
    """Each run's learning rate as steps on a second y axis (log scale when it spans a decade)."""
    series = []
    for detail, colour in zip(details, colours):
        points = [
            (e.epoch, e.learning_rate)
            for e in detail.epochs
            if e.learning_rate is not None and e.learning_rate > 0
        ]
        if points:
            series.append((points, colour))
    if not series:
        return
    twin = ax.twinx()
    for points, colour in series:
        twin.step(
            [x for x, _ in points],
            [y for _, y in points],
            where="post",
            color=colour,
            alpha=0.45,
            linewidth=1,
            gid="learning-rate",
        )
    values = [y for points, _ in series for _, y in points]
    if max(values) / min(values) >= 10:
        twin.set_yscale("log")
    twin.set_ylabel("learning rate", alpha=0.7)
    ax.set_zorder(twin.get_zorder() + 1)  # the curves over the steps
    ax.patch.set_visible(False)


def plot_runs(
    engine: Engine, run_refs: Sequence[str], output: Path, *, metrics: Sequence[str] | None = None
) -> Path:
    """Draw :func:`build_figure` into ``output`` (PNG, SVG or PDF by its extension); returns the path."""
    output = Path(output)
    if output.suffix.lower() not in FORMATS:
        raise ConfigurationError(
            f"cannot tell the image type of {output.name!r}: end it in {', '.join(FORMATS)}"
        )
    figure = build_figure(engine, run_refs, metrics=metrics)
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=110)
    return output

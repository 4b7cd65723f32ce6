"""Fitstream and MLflow side by side: fit overhead and ingest, in the same rounds, on this machine.

Needs MLflow (``pip install -e ".[bench]"``: an optional extra, never a runtime dependency), Redis
and, for the PostgreSQL rows, ``FITSTREAM_TEST_POSTGRES_URL`` (a user that may CREATE DATABASE).

What is measured
----------------
**Fit overhead.** The digits MLP of ``examples/digits.py`` (hidden 64, Adam; 1,437 training and 360
validation samples, batch 32: 45 batches per epoch) is fitted ``--epochs`` epochs in five modes,
alternating in every round (the order rotates each round, so drift cancels out):

* ``baseline``: no tracking callback;
* ``fitstream epoch``: ``EventPublisher`` with its defaults, while a real ``fitstream consume
  recorder`` process writes the events to SQLite (the same machine, competing for its cores);
* ``mlflow epoch``: ``mlflow.keras.MlflowCallback()`` (what ``mlflow.keras.autolog()`` adds), in
  an active run, tracking into SQLite (``sqlite:///…/mlflow.db``);
* ``fitstream batch``: ``EventPublisher(batch_events_every=1)``: every batch's logs also go to
  ``batch_metrics``;
* ``mlflow batch``: ``MlflowCallback(log_every_epoch=False, log_every_n_steps=1)``: every step's logs.

Per mode: the median epoch time (epoch 0 with graph tracing excluded) and its overhead against the
baseline of the same round (paired, median over rounds), and the time spent inside the tool's Keras
hooks on the training thread per epoch (each hook an instance is called through, wrapped in two
``perf_counter`` calls): the tool's direct cost, steadier than wall time on a shared 2-core VM.

**Ingest.** ``--runs`` runs × ``--events`` epoch events × ``--metrics`` metrics (default 100 × 200
× 10 = 200,000 metric rows), per database (SQLite file, PostgreSQL database), each in a fresh
database, alternating in every round:

* ``fitstream recorder``: a real ``fitstream consume recorder`` process with its default settings
  is started and idle; the events are then published (pipelined, 1,000 per round trip); rows/s =
  metric rows / (first XADD → the group has nothing pending or unread: every batch committed);
* ``mlflow log_batch``: ``MlflowClient.log_batch`` with 1,000 metrics per call (MLflow's maximum);
* ``mlflow log_metric``: one ``MlflowClient.log_metric`` per row, on ``--log-metric-rows`` rows;
* ``fitstream ×N recorders`` (PostgreSQL, ``--scale``): N recorder processes in one group;
* ``ceiling``: the database itself taking the same rows into a table with the same key —
  PostgreSQL ``COPY``, SQLite ``executemany`` of keyed ``INSERT``s in one transaction.

Output: the tables below on stdout, and ``benchmarks/results/vs_mlflow-<date>.md`` and ``.json``.
No timing is asserted anywhere.

Run::

    .venv/bin/python benchmarks/vs_mlflow.py [--rounds 3] [--epochs 6] [--events 200] [--runs 100] \\
        [--metrics 10] [--backends sqlite,postgresql] [--skip-fit] [--skip-ingest]
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common
import _workloads
from _mlflow_fit_overhead import fit_overhead
from _mlflow_ingest import ingest

RESULTS = Path(__file__).resolve().parent / "results"


# -- report ---------------------------------------------------------------------------------------------------
def report(fit: dict[str, Any] | None, ing: dict[str, Any] | None) -> str:
    lines = [
        f"# Fitstream vs MLflow — {dt.date.today().isoformat()}",
        "",
        f"Machine: {_common.machine_line()}",
        "",
    ]
    import mlflow

    lines.append(f"MLflow {mlflow.__version__}; same process, same data, alternating in every round.")
    lines.append("")
    if fit is not None:
        lines += [
            f"## Fit overhead ({fit['epochs']} epochs × {fit['batches_per_epoch']} batches, {fit['rounds']} rounds; "
            "median epoch, paired overhead against the same round's baseline)",
            "",
            f"Model: {fit.get('workload', 'digits MLP')}, batch {fit.get('batch_size', 32)}. "
            f"{fit.get('accelerator', '')}",
            "",
            "| mode | epoch ms | overhead | in its hooks, ms/epoch | hooks / baseline epoch |",
            "|---|---|---|---|---|",
        ]
        for mode, m in fit["modes"].items():
            lines.append(
                f"| {mode} | {m['epoch_ms']:.1f} | {m['overhead_pct']:+.1f} % | {m['hooks_ms_per_epoch']:.2f} | "
                f"{m['hooks_pct_of_baseline_epoch']:.2f} % |"
            )
        lines.append("")
    if ing is not None:
        lines += [
            f"## Ingest ({ing['rows']:,} metric rows = {ing['runs']} runs × {ing['rows'] // ing['runs'] // ing['metrics']} "
            f"epochs × {ing['metrics']} metrics; log_metric on {ing['log_metric_rows']:,} rows; median rows/s)",
            "",
        ]
        backends = list(ing["rows_per_s"])
        lines += ["| peer | " + " | ".join(backends) + " |", "|---|" + "---|" * len(backends)]
        for name in next(iter(ing["rows_per_s"].values())):
            cells = []
            for backend in backends:
                value = ing["rows_per_s"][backend][name]
                ceiling = ing["rows_per_s"][backend]["ceiling"]
                cells.append("—" if value != value else f"{value:,.0f} ({value / ceiling:.2f}× ceiling)")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
        for backend in backends:
            fs, mb = (
                ing["rows_per_s"][backend]["fitstream recorder"],
                ing["rows_per_s"][backend]["mlflow log_batch"],
            )
            lines.append(
                f"- {backend}: Fitstream's recorder takes {fs / mb:.1f}× the rows/s of MLflow's log_batch."
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--events", type=int, default=200, help="epoch events per run (ingest)")
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--metrics", type=int, default=10)
    parser.add_argument("--log-metric-rows", type=int, default=2000)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument(
        "--scale", default="1,2,4", help="recorders in one group, side by side (PostgreSQL rows only)"
    )
    parser.add_argument(
        "--workload",
        choices=sorted(_workloads.WORKLOADS),
        default="digits",
        help="the fitted model: digits (CPU default) or convnet (big enough to keep a GPU busy)",
    )
    parser.add_argument("--skip-fit", action="store_true")
    parser.add_argument("--skip-ingest", action="store_true")
    parser.add_argument(
        "--results",
        type=Path,
        default=None,
        help="where to write the .md and .json (default benchmarks/results/vs_mlflow-<date>)",
    )
    args = parser.parse_args(argv)
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    args.scale = [int(n) for n in args.scale.split(",") if n.strip()]
    if importlib.util.find_spec("mlflow") is None:
        print('MLflow is not installed: pip install -e ".[bench]"', file=sys.stderr)
        return 2
    with _common.temp_dir() as scratch:
        fit = None if args.skip_fit else fit_overhead(args, scratch)
        ing = None if args.skip_ingest else ingest(args, scratch)
    text = report(fit, ing)
    print(text)
    stamp = dt.date.today().isoformat()
    base = args.results or RESULTS / f"vs_mlflow-{stamp}"
    base.parent.mkdir(parents=True, exist_ok=True)
    base.with_suffix(".md").write_text(text)
    base.with_suffix(".json").write_text(
        json.dumps(
            {
                "date": stamp,
                "machine": _common.machine_line(),
                "fit": fit,
                "ingest": None if ing is None else dict(ing.items()),
            },
            indent=2,
        )
    )
    print(f"written: {base.with_suffix('.md')} and .json", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

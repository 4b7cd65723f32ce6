"""Commands that need the Celery app: ``submit``, ``cancel``, ``worker``, ``status``.

Registered as ``fitstream.cli`` entry points (see pyproject.toml)."""

from __future__ import annotations

import os
import socket
import sys
import time

import click

from pipeline import events as ev
from pipeline.bus import EventStream, connect
from pipeline.cli.output import print_json, print_rows
from pipeline.config import get_settings
from pipeline.run_watch import follow_run


@click.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--queue", default=None, help="Queue to use instead of the spec's (default gpu).")
@click.option(
    "--wait", is_flag=True, help="Wait until the run (every trial of a sweep) ends and report its status."
)
@click.option("--timeout", type=float, default=None, help="With --wait: give up after this many seconds.")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help='One JSON object: {"run_id": …} or, for a sweep, {"sweep_id": …, "run_ids": [...]}.',
)
def submit(spec: str, queue: str | None, wait: bool, timeout: float | None, as_json: bool) -> None:
    """Validate the job file SPEC and queue it. Prints the run id.

    A job file with a `sweep:` section queues every trial (all are validated first) and prints
    the sweep id; see: fitstream sweep show SWEEP_ID.
    """
    from pipeline.sweeps import Sweep, load_job_file
    from workers.submit import submit_job, submit_sweep

    settings = get_settings()
    job = load_job_file(spec)
    if isinstance(job, Sweep):
        submitted_sweep = submit_sweep(job, queue=queue, settings=settings)
        result: dict[str, object] = {
            "sweep_id": submitted_sweep.sweep_id,
            "run_ids": list(submitted_sweep.run_ids),
            "queue": submitted_sweep.queue,
        }
        if not as_json:
            click.echo(submitted_sweep.sweep_id)
            waiting = len(submitted_sweep.run_ids) - submitted_sweep.queued_now
            click.echo(
                f"queued sweep {job.name!r}: {len(submitted_sweep.run_ids)} trials on '{submitted_sweep.queue}'"
                + (
                    f" ({submitted_sweep.queued_now} now, {waiting} waiting for max_parallel)"
                    if waiting
                    else ""
                )
                + f"; follow it with: fitstream sweep show {submitted_sweep.sweep_id}",
                err=True,
            )
        run_ids, start_id = list(submitted_sweep.run_ids), submitted_sweep.stream_id
    else:
        submitted = submit_job(job, queue=queue, settings=settings)
        result = {"run_id": submitted.run_id, "queue": submitted.queue}
        if not as_json:
            click.echo(submitted.run_id)
            click.echo(
                f"queued {job.name!r} on '{submitted.queue}'; follow it with: fitstream watch {submitted.run_id}",
                err=True,
            )
        run_ids, start_id = [submitted.run_id], submitted.stream_id
    ok = True
    if wait:
        deadline = None if timeout is None else time.monotonic() + timeout
        statuses = {}
        for run_id in run_ids:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            final = None
            for event in follow_run(EventStream(settings=settings), run_id, start_id=start_id, timeout=left):
                final = event
            statuses[run_id] = (
                final.status if final is not None and final.type == "run_finished" else "unknown"
            )
        # A sweep's trial may end pruned: that is the sweep working, not a failure.
        fine = ev.SUCCESSFUL_STATUSES if "run_id" in result else (*ev.SUCCESSFUL_STATUSES, "pruned")
        ok = all(status in fine for status in statuses.values())
        if "run_id" in result:
            result["status"] = statuses[run_ids[0]]
        else:
            result["statuses"] = statuses
        if not as_json:
            for run_id, status in statuses.items():
                click.echo(f"status: {status}" if len(statuses) == 1 else f"{run_id}: {status}", err=True)
    if as_json:
        print_json(result)
    if not ok:
        sys.exit(1)


@click.command()
@click.argument("run")
def cancel(run: str) -> None:
    """Cancel RUN: a queued job is revoked; a running one stops at the next batch as `cancelled`.
    RUN may be a sweep id: every trial of the sweep that has not ended is cancelled."""
    from workers.submit import cancel_job

    outcome = cancel_job(run)
    if outcome == "revoked":
        click.echo(f"run {run}: revoked before it started (cancelled)", err=True)
    elif outcome == "stopping":
        click.echo(f"run {run}: cancel requested; it stops at the next batch boundary", err=True)
    else:
        click.echo(f"sweep {run}: {outcome} (running trials stop at their next batch boundary)", err=True)


@click.command()
@click.option("--queues", "-Q", default="gpu", show_default=True, help="Comma-separated queues to consume.")
@click.option(
    "--name", "-n", default=None, help="Worker name, e.g. gpu0@%h (default fitstream-<pid>@<host>)."
)
@click.option("--gpu", "gpu", default=None, help="Pin this worker to one GPU (sets CUDA_VISIBLE_DEVICES).")
@click.option("--loglevel", default="INFO", show_default=True)
def worker(queues: str, name: str | None, gpu: str | None, loglevel: str) -> None:
    """Run a Celery worker: one training job at a time, each in a fresh child process.

    Run one worker per GPU: `fitstream worker --gpu 0`, `fitstream worker --gpu 1`, …
    """
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu  # inherited by every job's child process
        name = name or f"gpu{gpu}@%h"
    from workers.celery_app import app, worker_processes

    node = name or f"fitstream-{os.getpid()}@{socket.gethostname()}"
    # One job at a time in any case; the other children are warm spares (FITSTREAM_WORKER_WARM_SPARES).
    processes = str(worker_processes(get_settings()))
    app.worker_main(
        [
            "worker",
            "-Q",
            queues,
            "-n",
            node,
            "--loglevel",
            loglevel,
            "--pool",
            "prefork",
            "--concurrency",
            processes,
            "--max-tasks-per-child",
            "1",
            "--without-gossip",
            "--without-mingle",
        ]
    )


@click.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
def status(as_json: bool) -> None:
    """Queue lengths, workers seen, consumer-group lag and pending counts, dead letters."""
    from pipeline.stream_status import stream_report
    from workers.celery_app import Queue, app

    settings = get_settings()
    broker = connect(settings.celery_broker_url)
    stream = EventStream(settings=settings)
    from workers.submit import QUEUES_USED_KEY

    builtin = [q.value for q in Queue]
    queues = [{"queue": name, "waiting": int(broker.llen(name))} for name in builtin]
    for name in sorted({_text(raw) for raw in broker.smembers(QUEUES_USED_KEY)} - set(builtin)):
        waiting = int(broker.llen(name))
        if waiting:  # other queues jobs were submitted to, while jobs wait there
            queues.append({"queue": name, "waiting": waiting})
    try:
        replies = app.control.inspect(timeout=1.0).ping() or {}
    except Exception:
        replies = {}
    report = {
        "alerts": _alert_counts(settings.database_url),
        "queues": queues,
        "workers": sorted(replies),
        **stream_report(stream),
    }
    groups = report["consumer_groups"]
    if as_json:
        print_json(report)
        return
    print_rows(["queue", "waiting"], [(q["queue"], q["waiting"]) for q in queues], title="queues")
    click.echo(f"workers seen: {', '.join(report['workers']) or 'none'}")
    print_rows(
        ["group", "consumers", "pending", "lag", "leader"],
        [(g["group"], g["consumers"], g["pending"], g["lag"], g["leader"] or "—") for g in groups],
        title=f"stream {stream.base_stream} ({report['stream']['length']} events)",
    )
    if len(report["shards"]) > 1:
        names = [g["group"] for g in groups]
        print_rows(
            ["shard", "stream", "events", *[f"{name} lag" for name in names], "dead letters"],
            [
                (
                    s["shard"],
                    s["stream"],
                    s["length"],
                    *[
                        next((g["lag"] for g in s["consumer_groups"] if g["group"] == name), "—")
                        for name in names
                    ],
                    s["dead_letters"],
                )
                for s in report["shards"]
            ],
            title="shards",
        )
    for g in groups:
        for consumer, state in g["paused"].items():
            click.echo(
                f"WARNING: {g['group']} consumer {consumer} is paused since {_ago(state.get('since'))}: {state.get('reason')}",
                err=True,
            )
    by_reason = ", ".join(
        f"{kind} {count}" for kind, count in sorted(report["dead_letters_by_reason"].items())
    )
    click.echo(
        f"dead letters: {report['dead_letters']}"
        + (f" ({by_reason}; see: fitstream dead-letters list)" if by_reason else "")
    )
    alerts = report["alerts"]
    if alerts:
        click.echo(f"alerts: {alerts.get('pending', 0)} pending, {alerts.get('undelivered', 0)} undelivered")
        if alerts.get("undelivered"):
            click.echo(
                "WARNING: some alerts could not be delivered; see: fitstream alerts list --status undelivered",
                err=True,
            )
    for warning in report["redis_warnings"]:
        click.echo(f"WARNING: {warning}", err=True)
    if report["forced_trims"]:
        trims = report["forced_trims"]
        last = (
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(trims["last_at"]))
            if "last_at" in trims
            else "?"
        )
        click.echo(
            f"WARNING: the stream was force-trimmed {trims.get('times', 0)} time(s), dropping {trims.get('events_dropped', 0)} "
            f"events some consumer group had not acknowledged (last at {last}); start more consumers or raise "
            "FITSTREAM_STREAM_MAX_EVENTS",
            err=True,
        )


def _ago(since: float | None) -> str:
    import time

    return f"{time.time() - since:.0f}s ago" if since else "(unknown)"


def _text(raw: bytes | None) -> str | None:
    return raw.decode() if raw is not None else None


def _alert_counts(database_url: str) -> dict[str, int]:
    """Alerts by delivery status ({} when the database or its alerts table is not there)."""
    from pipeline.db.alert_history import alert_counts_by_status
    from pipeline.db.session import make_engine

    engine = make_engine(database_url, read_only=True)
    try:
        return alert_counts_by_status(engine)
    except Exception:
        return {}
    finally:
        engine.dispose()

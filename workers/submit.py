"""Queueing and cancelling jobs: plain functions behind ``fitstream submit`` and ``fitstream cancel``.

Example:
    >>> run_id = submit_job(load_spec("examples/digits_mlp.yaml"))   # doctest: +SKIP
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from pipeline import events as ev
from pipeline.bus import EventStream, connect
from pipeline.config import Settings, get_settings
from pipeline.errors import ConfigurationError, RunNotFoundError
from pipeline.job_store import JobStore
from pipeline.jobs import JobSpec, JobSpecError, check_importable
from workers.celery_app import TRAIN_TASK, make_app


@dataclass(frozen=True)
class Submitted:
    run_id: str
    queue: str
    stream_id: str


#: The broker's set of every queue a job was ever submitted to (the built-in ones are always shown).
QUEUES_USED_KEY = "fitstream:queues"


def submit_job(spec: JobSpec, *, queue: str | None = None, settings: Settings | None = None) -> Submitted:
    """Validate ``spec`` against the deployment, record it, announce it, and queue it."""
    settings = settings or get_settings()
    check_importable(spec, settings.allowed_module_prefixes)
    if spec.alerts:
        check_job_alerts(spec, settings)
    queue = queue or spec.queue
    run_id = uuid.uuid4().hex
    client = connect(settings.redis_url)
    store = JobStore(client)
    store.save(run_id, spec, queue=queue)
    store.set_state(run_id, "queued")
    stream = EventStream(client=client, settings=settings)
    event = ev.build(
        ev.RunQueued, run_id=run_id, seq=ev.QUEUED_SEQ, name=spec.name, queue=queue,
        spec=spec.model_dump(mode="json", by_alias=True), tags=spec.tags,
    )
    stream_id = stream.publish([event])[0]
    connect(settings.celery_broker_url).sadd(QUEUES_USED_KEY, queue)  # so that `fitstream status` lists it
    make_app(settings).send_task(TRAIN_TASK, args=[run_id], task_id=run_id, queue=queue)
    return Submitted(run_id, queue, stream_id)


def cancel_job(run_id: str, *, settings: Settings | None = None) -> str:
    """Cancel a queued or running job. Returns what happened: ``revoked`` or ``stopping``."""
    settings = settings or get_settings()
    client = connect(settings.redis_url)
    store = JobStore(client)
    state = store.state(run_id)
    if state is None:
        raise RunNotFoundError(f"no queued or running job with run id {run_id!r}; list runs with: fitstream runs")
    if state == "finished":
        raise ConfigurationError(f"run {run_id} has already finished; nothing to cancel")
    store.request_cancel(run_id)
    if state == "queued":
        make_app(settings).control.revoke(run_id)
        store.set_state(run_id, "finished")
        EventStream(client=client, settings=settings).publish(
            [ev.build(ev.RunFinished, run_id=run_id, seq=ev.CANCELLED_BEFORE_START_SEQ, status="cancelled", epochs_completed=0)]
        )
        return "revoked"
    return "stopping"


def check_job_alerts(spec: JobSpec, settings: Settings) -> None:
    """A job's ``alerts:`` must be valid rules over the rules file's channels, with their own names."""
    from alerts.rules import RulesError, load_rules, parse_rules

    if settings.alert_rules is None:
        raise JobSpecError(["alerts: the job defines alert rules, but FITSTREAM_ALERT_RULES is not set (channels are defined there)"])
    global_rules = load_rules(settings.alert_rules)
    try:
        job_rules = parse_rules({"channels": dict(global_rules.channels), "rules": spec.alerts}, source="alerts")
    except RulesError as exc:
        raise JobSpecError([line.strip().removeprefix("- ").replace("rules.", "alerts.", 1) for line in str(exc).splitlines()[1:]]) from None
    clashes = sorted({r.name for r in job_rules.rules} & {r.name for r in global_rules.rules})
    if clashes:
        raise JobSpecError([f"alerts: rule name(s) {', '.join(clashes)} already used in {settings.alert_rules}; pick other names"])

"""Job specs: defaults, and a table of bad specs that each give a clear error and queue nothing."""

from __future__ import annotations

import pytest
import redis

from pipeline.jobs import JobSpecError, check_importable, load_spec_text
from tests.conftest import REPO, run_cli

BASE = "name: t\nmodel: examples.digits:build_model\ndata: examples.digits:load_data\n"

BAD_SPECS = [
    ("not a mapping", "- a\n- b\n", "must be a mapping"),
    ("invalid yaml", "name: [unclosed\n", "not valid YAML"),
    (
        "missing name",
        "model: examples.digits:build_model\ndata: examples.digits:load_data\n",
        "name: required",
    ),
    ("missing model", "name: t\ndata: examples.digits:load_data\n", "model: required"),
    ("misspelled top key", BASE + "earlystopping: {patience: 2}\n", "did you mean 'early_stopping'?"),
    ("section key at top level", BASE + "epochs: 3\n", "did you mean 'fit.epochs'?"),
    ("misspelled nested key", BASE + "fit: {epoch: 3}\n", "fit.epoch: unknown key; did you mean 'epochs'?"),
    ("wrong type", BASE + "fit: {epochs: many}\n", "fit.epochs: Input should be a valid integer"),
    ("zero epochs", BASE + "fit: {epochs: 0}\n", "fit.epochs: Input should be greater than or equal to 1"),
    (
        "mode contradicts monitor",
        BASE + "early_stopping: {monitor: val_accuracy, mode: min}\n",
        "is a metric to maximise, but mode is 'min'",
    ),
    ("unknown direction", BASE + "early_stopping: {monitor: val_weirdness}\n", "set mode: min or mode: max"),
    (
        "checkpoint outside run dir",
        BASE + "checkpoint: {filename: ../../elsewhere.keras}\n",
        "relative path inside the run's directory",
    ),
    (
        "absolute checkpoint",
        BASE + "checkpoint: {filename: /tmp/x.keras}\n",
        "relative path inside the run's directory",
    ),
    (
        "bad callable shape",
        "name: t\nmodel: examples.digits\ndata: examples.digits:load_data\n",
        "must look like 'package.module:function'",
    ),
    ("validation split out of range", BASE + "fit: {validation_split: 1.5}\n", "fit.validation_split"),
    ("negative patience", BASE + "early_stopping: {patience: -1}\n", "early_stopping.patience"),
    ("step schedule without every", BASE + "lr_schedule: {kind: step, factor: 0.5}\n", "needs every"),
    ("bad queue name", BASE + "queue: 'gpu queue!'\n", "not a valid queue name"),
    ("bad reduce_lr factor", BASE + "reduce_lr: {factor: 2}\n", "reduce_lr.factor"),
]

BAD_IMPORTS = [
    (
        "module not allowed",
        "name: t\nmodel: os:system\ndata: examples.digits:load_data\n",
        "module 'os' is not allowed on this deployment",
    ),
    (
        "module missing",
        "name: t\nmodel: examples.nothing_here:f\ndata: examples.digits:load_data\n",
        "cannot import module 'examples.nothing_here'",
    ),
    (
        "function missing",
        "name: t\nmodel: examples.digits:build_modle\ndata: examples.digits:load_data\n",
        "has no 'build_modle'; did you mean 'build_model'?",
    ),
    (
        "callback not allowed",
        BASE + "callbacks: [{class: 'subprocess:Popen'}]\n",
        "callbacks.0.class: module 'subprocess' is not allowed",
    ),
]


@pytest.mark.parametrize(("case", "text", "expected"), BAD_SPECS, ids=[c[0] for c in BAD_SPECS])
def test_bad_spec_is_refused_with_a_clear_error(case, text, expected):
    with pytest.raises(JobSpecError) as info:
        load_spec_text(text)
    assert expected in str(info.value), str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(("case", "text", "expected"), BAD_IMPORTS, ids=[c[0] for c in BAD_IMPORTS])
def test_bad_references_are_refused_without_importing(case, text, expected):
    spec = load_spec_text(text)
    with pytest.raises(JobSpecError) as info:
        check_importable(spec, ("examples",))
    assert expected in str(info.value)


def test_defaults_follow_established_practice():
    spec = load_spec_text(BASE)
    assert spec.early_stopping.monitor == "val_loss" and spec.early_stopping.restore_best_weights is True
    assert spec.checkpoint.save_best_only is True and spec.checkpoint.monitor == "val_loss"
    assert spec.terminate_on_nan is True and spec.queue == "gpu"
    off = load_spec_text(BASE + "early_stopping: false\ncheckpoint: false\n")
    assert off.early_stopping is None and off.checkpoint is None


@pytest.mark.parametrize(
    "path",
    sorted(p for p in (REPO / "examples").glob("*.yaml") if p.name != "alerts.yaml"),
    ids=lambda p: p.name,
)
def test_bundled_examples_are_valid(path):
    from pipeline.sweeps import Sweep, load_job_file

    job = load_job_file(path)
    for spec in [t.spec for t in job.trials] if isinstance(job, Sweep) else [job]:
        check_importable(spec, ("examples",))


def test_submit_refuses_bad_specs_and_queues_nothing(tmp_path, redis_url, stream_name, queue_name):
    client = redis.Redis.from_url(redis_url)
    env = {"FITSTREAM_STREAM": stream_name, "FITSTREAM_REDIS_URL": redis_url}
    for case, text, expected in BAD_SPECS[:6] + BAD_IMPORTS:
        path = tmp_path / f"{case.replace(' ', '_')}.yaml"
        path.write_text(text)
        result = run_cli("submit", str(path), "--queue", queue_name, "--json", env_extra=env, check=False)
        assert result.returncode == 1, case
        assert expected in result.stderr, (case, result.stderr)
        assert result.stdout == ""
    assert client.llen(queue_name) == 0
    assert client.xlen(stream_name) == 0
    missing = run_cli("submit", str(tmp_path / "nope.yaml"), env_extra=env, check=False)
    assert missing.returncode != 0 and "nope.yaml" in missing.stderr

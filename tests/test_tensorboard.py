"""`tensorboard:` in a job spec (issue 11): a queued job writes TensorBoard logs in its run's
directory with Keras' own settings, and they read back with TensorBoard's own reader."""

from __future__ import annotations

import json

import pytest

from tests.conftest import RecorderThread, run_cli

pytestmark = pytest.mark.slow


def read_logs(directory):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(
        str(directory), size_guidance={"histograms": 0, "scalars": 0, "tensors": 0}
    )
    accumulator.Reload()
    return accumulator


def test_a_queued_job_writes_tensorboard_logs_with_histograms(
    settings, engine, job_env, queue_name, start_worker, tmp_path, database_url
):
    if database_url.startswith("postgresql"):
        pytest.skip("TensorBoard's files do not depend on the database; checked once, on SQLite")
    spec = tmp_path / "tb.yaml"
    spec.write_text(
        "name: tb\nmodel: tests.job_fixtures:small_model\ndata: tests.job_fixtures:slow_data\n"
        "fit: {epochs: 3, batch_size: 64}\n"
        "tensorboard: {histogram_freq: 1, write_graph: false, update_freq: epoch}\n"
    )
    start_worker()
    with RecorderThread(settings, engine):
        done = json.loads(
            run_cli(
                "submit",
                str(spec),
                "--queue",
                queue_name,
                "--json",
                "--wait",
                "--timeout",
                "180",
                env_extra=job_env,
            ).stdout
        )
    assert done["status"] == "completed"
    logs = settings.home / "runs" / done["run_id"] / "tensorboard"
    train = read_logs(logs / "train")
    scalars = {
        tag: [event.step for event in train.Tensors(tag)]
        for tag in train.Tags()["tensors"]
        if tag.startswith("epoch_")
    }
    assert scalars["epoch_loss"] == [0, 1, 2]
    histograms = [tag for tag in train.Tags()["tensors"] if "kernel" in tag or "bias" in tag]
    assert histograms, train.Tags()  # histogram_freq: 1 wrote the weights' histograms
    assert not train.Tags()["graph"], "write_graph: false"
    validation = read_logs(logs / "validation")
    assert [event.step for event in validation.Tensors("epoch_loss")] == [0, 1, 2]


def test_tensorboard_settings_are_keras_own_and_checked_at_submit(tmp_path):
    from pipeline.jobs import JobSpecError, load_spec_text

    base = "name: tb\nmodel: examples.digits:build_model\ndata: examples.digits:load_data\n"
    assert load_spec_text(base + "tensorboard: true\n").tensorboard.histogram_freq == 0
    assert load_spec_text(base + "tensorboard: false\n").tensorboard is None
    custom = load_spec_text(
        base + "tensorboard: {histogram_freq: 2, profile_batch: [2, 4], update_freq: 50}\n"
    ).tensorboard
    assert (custom.histogram_freq, custom.profile_batch, custom.update_freq) == (2, [2, 4], 50)
    with pytest.raises(
        JobSpecError, match="tensorboard.histogram_frq: unknown key; did you mean 'histogram_freq'"
    ):
        load_spec_text(base + "tensorboard: {histogram_frq: 1}\n")
    with pytest.raises(JobSpecError, match="tensorboard.update_freq"):
        load_spec_text(base + "tensorboard: {update_freq: sometimes}\n")

"""`fitstream plot` and `plot_runs`: real images from recorded runs (through the real recorder)."""

from __future__ import annotations

import json
import struct

import pytest

from pipeline import events as ev
from pipeline.bus import EventStream
from pipeline.errors import ConfigurationError, RunNotFoundError
from pipeline.plot import build_figure, plot_runs
from tests.conftest import run_cli, settings_env, wait_for

sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _run(
    stream: EventStream,
    run_id: str,
    losses: list[float],
    *,
    stop_at: int | None = None,
    lr_drop_at: int | None = None,
) -> None:
    best = losses.index(min(losses))
    items: list[ev.Event] = [
        ev.build(
            ev.RunStarted, run_id=run_id, seq=0, name=f"net-{run_id[:4]}", monitor="val_loss", mode="min"
        )
    ]
    for epoch, loss in enumerate(losses):
        lr = 1e-3 if lr_drop_at is None or epoch < lr_drop_at else 1e-4
        items.append(
            ev.build(
                ev.EpochEnd,
                run_id=run_id,
                seq=epoch + 1,
                epoch=epoch,
                learning_rate=lr,
                metrics={
                    "loss": loss * 0.9,
                    "val_loss": loss,
                    "accuracy": 1 - loss * 0.8,
                    "val_accuracy": 1 - loss,
                },
            )
        )
    seq = len(losses) + 1
    if stop_at is not None:
        items.append(
            ev.build(
                ev.EarlyStopped,
                run_id=run_id,
                seq=seq,
                stopped_epoch=stop_at,
                best_epoch=best,
                best_value=min(losses),
                monitor="val_loss",
                mode="min",
            )
        )
        seq += 1
    items.append(
        ev.build(
            ev.RunFinished,
            run_id=run_id,
            seq=seq,
            status="early_stopped" if stop_at is not None else "completed",
            epochs_completed=len(losses),
            best_epoch=best,
            best_value=min(losses),
            monitor="val_loss",
            mode="min",
        )
    )
    stream.publish(items)


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_MAGIC
    width, height = struct.unpack(">II", data[16:24])
    return width, height


@pytest.fixture
def two_runs(settings, engine, recorder) -> tuple[str, str]:
    stream = EventStream(settings=settings)
    a, b = "a1" * 16, "b2" * 16
    _run(stream, a, [0.9, 0.6, 0.45, 0.4, 0.42, 0.44], stop_at=5, lr_drop_at=3)
    _run(stream, b, [0.8, 0.5, 0.35, 0.3, 0.28, 0.27, 0.26, 0.25])
    env = settings_env(settings)
    wait_for(
        lambda: (
            len(json.loads(run_cli("runs", "--json", env_extra=env).stdout)) == 2
            and all(
                r["status"] != "running" for r in json.loads(run_cli("runs", "--json", env_extra=env).stdout)
            )
        ),
        message="runs recorded",
    )
    return a, b


@sqlite_only
def test_plot_writes_a_png_that_changes_with_the_runs_and_the_metrics(settings, two_runs, tmp_path):
    a, b = two_runs
    env = settings_env(settings)
    one, both, val_only = tmp_path / "one.png", tmp_path / "both.png", tmp_path / "val.png"
    result = run_cli("plot", a[:6], "-o", str(one), env_extra=env)
    assert f"wrote {one}" in result.stderr
    run_cli("plot", a[:6], b[:6], "-o", str(both), env_extra=env)
    run_cli("plot", a, b, "--metric", "val_loss", "-o", str(val_only), env_extra=env)
    images = {p.name: p.read_bytes() for p in (one, both, val_only)}
    sizes = {name: _png_size(data) for name, data in images.items()}
    assert all(w >= 600 and h >= 200 for w, h in sizes.values()), sizes
    assert len(set(images.values())) == 3  # different runs, different metrics: different pictures
    assert sizes["val.png"][1] < sizes["both.png"][1]  # one panel (loss) instead of two (loss, accuracy)
    svg = tmp_path / "curves.svg"
    run_cli("plot", a, "-o", str(svg), env_extra=env)
    assert svg.read_text().lstrip().startswith(("<?xml", "<svg")) and "<svg" in svg.read_text()


@sqlite_only
def test_the_figure_marks_best_and_early_stop_epochs_and_draws_the_learning_rate_as_steps(
    settings, engine, two_runs
):
    a, b = two_runs
    figure = build_figure(engine, [a, b])
    panels = [ax for ax in figure.axes if ax.get_ylabel() in ("loss", "accuracy")]
    assert [ax.get_ylabel() for ax in panels] == ["loss", "accuracy"]  # the monitored metric's family first
    loss = panels[0]
    stars = [line for line in loss.get_lines() if line.get_gid() == "best-epoch"]
    assert sorted((float(s.get_xdata()[0]), round(float(s.get_ydata()[0]), 6)) for s in stars) == [
        (3.0, 0.4),
        (7.0, 0.25),
    ]
    stops = [line for line in loss.get_lines() if line.get_gid() == "early-stop"]
    assert [float(s.get_xdata()[0]) for s in stops] == [5.0]  # only run a stopped early
    (twin,) = [ax for ax in figure.axes if ax.get_ylabel() == "learning rate"]
    steps = [line for line in twin.get_lines() if line.get_gid() == "learning-rate"]
    assert len(steps) == 2 and twin.get_yscale() == "log"  # 1e-3 -> 1e-4 spans a decade
    assert any(line.get_linestyle() == "--" and "val_loss" in line.get_label() for line in loss.get_lines())


@sqlite_only
def test_plot_says_what_is_wrong(settings, engine, two_runs, tmp_path):
    a, _ = two_runs
    with pytest.raises(ConfigurationError, match="recorded: accuracy, loss, val_accuracy, val_loss"):
        plot_runs(engine, [a], tmp_path / "x.png", metrics=["val_acc"])
    with pytest.raises(ConfigurationError, match=r"\.png, \.svg, \.pdf"):
        plot_runs(engine, [a], tmp_path / "x.jpg2")
    with pytest.raises(RunNotFoundError):
        plot_runs(engine, ["nope"], tmp_path / "x.png")
    result = run_cli(
        "plot", "nope", "-o", str(tmp_path / "y.png"), env_extra=settings_env(settings), check=False
    )
    assert (
        result.returncode == 1
        and "no run with id 'nope'" in result.stderr
        and not (tmp_path / "y.png").exists()
    )

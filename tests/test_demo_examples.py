"""Every bundled example job, run through the README's `./dev demo --spec …` path (a real worker,
recorder and promoter started by the demo), promotes its best model and evaluates it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import requests
import sqlalchemy as sa

from pipeline.jobs import load_spec
from tests.conftest import REPO, free_port, settings_env, wait_for

pytestmark = pytest.mark.slow

#: Job files (a sweep is trained by tests/test_sweeps.py, through a worker, not by the demo).
EXAMPLES = sorted(
    p
    for p in (REPO / "examples").glob("*.yaml")
    if p.name != "alerts.yaml" and "\nsweep:" not in p.read_text()
)


def test_the_examples_are_found():
    assert {p.name for p in EXAMPLES} >= {
        "digits_mlp.yaml",
        "digits_all_callbacks.yaml",
        "breast_cancer_auc.yaml",
    }


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_demo_promotes_the_best_model_of_every_example(example, settings, engine, database_url):
    if database_url.startswith("postgresql"):
        pytest.skip("the demo runs on its embedded defaults (SQLite); checked once")
    env = {**os.environ, **settings_env(settings), "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.cli.main",
            "demo",
            "--spec",
            str(example),
            "--curves",
            str(settings.home / "curves.png"),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=420,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (
        "registered; champion is" in done.stdout
        and "champion loaded back from the store and evaluated" in done.stdout
    )
    # Not in a terminal: it says where the dashboard would show the run, and exits.
    assert "see it in the dashboard: fitstream ui, then open http://127.0.0.1:8765/runs/" in done.stdout
    spec = load_spec(example)
    with engine.connect() as conn:
        version = conn.execute(
            sa.text("SELECT v.metric, v.mode, v.source, v.epoch, v.run_id FROM model_versions v")
        ).one()
        kept = conn.execute(
            sa.text("SELECT epoch, value FROM epoch_metrics WHERE run_id = :r AND name = :m ORDER BY epoch"),
            {"r": version.run_id, "m": spec.checkpoint.monitor},
        ).all()
    # The file ModelCheckpoint kept, by its own monitor and direction.
    assert (version.metric, version.source) == (spec.checkpoint.monitor, "model_checkpoint")
    values = [value for _epoch, value in kept]
    best = max(values) if version.mode == "max" else min(values)
    assert version.epoch == values.index(best)


def test_demo_in_process_trains_here_promotes_and_evaluates_the_champion(settings, engine, database_url):
    if database_url.startswith("postgresql"):
        pytest.skip("the demo runs on its embedded defaults (SQLite); checked once")
    env = {**os.environ, **settings_env(settings), "TF_CPP_MIN_LOG_LEVEL": "2"}
    curves = settings.home / "curves.png"
    port = free_port()
    log = open(
        settings.home.parent / "demo-stderr.log", "w"
    )  # read afterwards: a pipe nobody reads could fill up
    # --ui: what a terminal gets by default — the dashboard at the run's page, served until Ctrl-C.
    demo = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipeline.cli.main",
            "demo",
            "--in-process",
            "--curves",
            str(curves),
            "--ui",
            "--ui-port",
            str(port),
        ],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        env=env,
        cwd=REPO,
    )
    lines: list[str] = []
    try:
        for line in demo.stdout:  # type: ignore[union-attr]
            lines.append(line)
            if line.startswith("dashboard: "):
                break
        assert lines and lines[-1].startswith("dashboard: "), "".join(lines)[-3000:]
        url = lines[-1].split()[1]
        assert url.startswith(f"http://127.0.0.1:{port}/runs/"), lines[-5:]
        wait_for(lambda: _answers(url), timeout=30, message="the demo's dashboard")
        page = requests.get(url, timeout=10)
        assert page.status_code == 200 and "<title>Fitstream — run" in page.text
        listed = requests.get(f"http://127.0.0.1:{port}/api/runs", timeout=10).json()
        assert [r["run_id"] for r in listed] == [url.rsplit("/", 1)[1]]
    finally:
        demo.send_signal(signal.SIGINT)
        rest, _ = demo.communicate(timeout=60)
        log.close()
    errors = (settings.home.parent / "demo-stderr.log").read_text()
    stdout = "".join(lines) + rest
    assert demo.returncode == 0, stdout[-3000:] + errors[-3000:]
    done = subprocess.CompletedProcess(demo.args, demo.returncode, stdout, errors)
    assert "champion loaded back from the store and evaluated" in done.stdout
    assert f"learning curves: {curves}" in done.stdout and curves.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with engine.connect() as conn:
        run = conn.execute(
            sa.text("SELECT run_id, name, status, best_epoch, epochs_completed FROM runs")
        ).one()
        version = conn.execute(sa.text("SELECT run_id, epoch, metric FROM model_versions")).one()
    assert run.name == "demo-digits-mlp" and run.status == "early_stopped"
    assert (version.run_id, version.epoch, version.metric) == (run.run_id, run.best_epoch, "val_loss")
    assert f"status=early_stopped epochs_completed={run.epochs_completed}" in done.stdout
    assert processes_with(f"FITSTREAM_STREAM={settings.stream}") == [], "the demo stops what it started"


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).ok
    except requests.RequestException:
        return False


def processes_with(variable: str) -> list[int]:
    """Live processes whose environment holds ``variable`` (NAME=value)."""
    import pathlib

    found = []
    for proc in pathlib.Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and variable.encode() in (proc / "environ").read_bytes().split(b"\0"):
                if (proc / "stat").read_text().split()[2] != "Z":
                    found.append(int(proc.name))
        except OSError:
            continue
    return found

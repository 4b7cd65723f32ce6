"""`fitstream runs` and `fitstream show` as a person reads them on a 100-column terminal (a real pty)."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios

import pytest

from pipeline import events as ev
from pipeline.bus import EventStream
from pipeline.cli.runs import narrow_row
from pipeline.db.entities import Run
from pipeline.sparkline import BARS, sparkline
from tests.conftest import REPO, run_cli, settings_env, wait_for

sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def _on_a_terminal(args: list[str], env: dict[str, str], columns: int = 100) -> str:
    """Run ``fitstream ARGS`` with stdout on a pseudo-terminal ``columns`` wide; its output."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    environment = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli.main", *args],
        stdout=follower,
        stderr=subprocess.PIPE,
        env={**environment, **env, "TERM": "xterm", "NO_COLOR": "1"},
        cwd=REPO,
    )
    os.close(follower)
    chunks = []
    while True:
        ready, _, _ = select.select([leader], [], [], 60)
        if not ready:
            break
        try:
            data = os.read(leader, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=60)
    os.close(leader)
    assert proc.returncode == 0, proc.stderr.read().decode() if proc.stderr else ""
    text = b"".join(chunks).decode("utf-8", "replace").replace("\r\n", "\n")
    return re.sub(r"\x1b\[[0-9;]*m", "", text)  # bold and italics: what a person sees is the text


def _publish_run(
    stream: EventStream, run_id: str, name: str, losses: list[float], *, checkpoint: str | None = None
) -> None:
    events: list[ev.Event] = [
        ev.build(
            ev.RunStarted, run_id=run_id, seq=0, name=name, monitor="val_loss", mode="min", epochs=len(losses)
        )
    ]
    for epoch, loss in enumerate(losses):
        events.append(
            ev.build(
                ev.EpochEnd,
                run_id=run_id,
                seq=epoch + 1,
                epoch=epoch,
                metrics={"loss": loss * 1.1, "val_loss": loss, "val_accuracy": 1 - loss},
                learning_rate=1e-3,
                wall_time_s=0.5,
            )
        )
    seq = len(losses) + 1
    if checkpoint:
        events.append(
            ev.build(
                ev.CheckpointSaved,
                run_id=run_id,
                seq=seq,
                epoch=len(losses) - 1,
                path=checkpoint,
                monitor="val_loss",
                value=losses[-1],
                size_bytes=1_234_567,
                sha256="ab" * 32,
            )
        )
        seq += 1
    events.append(
        ev.build(
            ev.RunFinished,
            run_id=run_id,
            seq=seq,
            status="early_stopped",
            epochs_completed=len(losses),
            best_epoch=losses.index(min(losses)),
            best_value=min(losses),
            wall_time_s=65.0,
        )
    )
    stream.publish(events)


@sqlite_only
def test_runs_fits_a_100_column_terminal_with_a_sparkline_and_wide_and_json_keep_everything(
    settings, engine, recorder
):
    stream = EventStream(settings=settings)
    curves = {
        "0f3a9c1e7d2b4a6f8e0c1d2e3f4a5b6c": (
            "digits-mlp-early-stopping",
            [0.9, 0.7, 0.52, 0.41, 0.37, 0.36, 0.38],
        ),
        "7b1e2d3c4f5a6b7c8d9e0f1a2b3c4d5e": ("breast-cancer-logreg", [0.6, 0.45, 0.3, 0.29]),
    }
    for run_id, (name, losses) in curves.items():
        _publish_run(stream, run_id, name, losses)
    wait_for(
        lambda: len(json.loads(run_cli("runs", "--json", env_extra=settings_env(settings)).stdout)) == 2,
        message="runs recorded",
    )
    env = settings_env(settings)
    text = _on_a_terminal(["runs"], env, columns=100)
    lines = [line for line in text.splitlines() if line.strip()]
    assert max(len(line) for line in lines) <= 100, text
    assert "…" not in text, text  # nothing cut
    for run_id, (name, losses) in curves.items():
        (line,) = [line for line in lines if run_id[:8] in line]
        assert (
            name in line and f"val_loss↓={min(losses):.5g}" in line and sparkline(losses, width=12) in line
        ), line
        assert "early_stopped" in line and str(len(losses)) in line
    # A name too long for the terminal is the one thing cut.
    _publish_run(stream, "99" * 16, "a-" * 40 + "end", [0.5, 0.4])
    wait_for(
        lambda: len(json.loads(run_cli("runs", "--json", env_extra=env).stdout)) == 3,
        message="third run recorded",
    )
    text = _on_a_terminal(["runs"], env, columns=100)
    (line,) = [line for line in text.splitlines() if "99999999" in line]
    assert "…" in line and "val_loss↓=0.4" in line and "early_stopped" in line and len(line) <= 100, text
    # --wide: every column and the whole run id; --json unchanged.
    wide = _on_a_terminal(["runs", "--wide"], env, columns=400)
    assert all(run_id in wide for run_id in curves) and "stopped_epoch" in wide
    listing = json.loads(run_cli("runs", "--json", env_extra=env).stdout)
    assert set(listing[0]) == {
        "run_id",
        "name",
        "status",
        "started_at",
        "finished_at",
        "epochs_completed",
        "best_epoch",
        "stopped_epoch",
        "monitor",
        "best_value",
    }


@sqlite_only
def test_show_keeps_each_checkpoints_epoch_value_and_size_on_a_narrow_terminal(settings, engine, recorder):
    stream = EventStream(settings=settings)
    run_id = "c0ffee00112233445566778899aabbcc"
    path = (
        "/var/lib/fitstream/runs/"
        + run_id
        + "/checkpoints/a-rather-long-directory-name/best-epoch-0005.keras"
    )
    _publish_run(stream, run_id, "with-checkpoint", [0.5, 0.4, 0.3, 0.25, 0.24, 0.2], checkpoint=path)
    wait_for(
        lambda: json.loads(
            run_cli("show", run_id, "--json", env_extra=settings_env(settings), check=False).stdout or "{}"
        ).get("checkpoints"),
        message="checkpoint recorded",
    )
    text = _on_a_terminal(["show", run_id[:8]], settings_env(settings), columns=100)
    (row,) = [line for line in text.splitlines() if line.lstrip().startswith("5 ")]
    assert "val_loss" in row and "0.2" in row and "1.2 MB" in row, text
    assert max(len(line) for line in text.splitlines()) <= 100, text
    assert "best-epoch-0005.keras" in text.replace("\n", "")  # the path folds over lines, whole


def test_the_narrow_row_says_the_direction_and_leaves_out_what_is_unknown():
    run = Run(
        run_id="abcdef0123456789",
        name="x",
        status="running",
        started_at=None,
        finished_at=None,
        epochs_completed=0,
        best_epoch=None,
        stopped_epoch=None,
        monitor="val_accuracy",
        best_value=None,
        mode="max",
    )
    row = narrow_row(run, [])
    assert row[0] == "abcdef01" and row[4] == "val_accuracy↑=–" and row[6] == "" and row[7] == ""
    assert set(narrow_row(run, [0.1, 0.5, 0.9])[7]) <= set(BARS)

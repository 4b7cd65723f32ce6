"""A real `fitstream ui` process for the dashboard's tests, and runs to show in it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import requests

from pipeline import events as ev
from pipeline.bus import EventStream
from tests.conftest import REPO, free_port, wait_for


class UiServer:
    def __init__(self, env: dict[str, str], log: Path, *args: str, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(log, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli.main", "ui", "--port", str(self.port), *args],
            env={**os.environ, **env},
            cwd=REPO,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_for(self._up, timeout=30, message="fitstream ui to answer")

    def _up(self) -> bool:
        assert self.proc.poll() is None, Path(self.log.name).read_text()
        try:
            return requests.get(self.url + "/healthz", timeout=1).ok
        except requests.RequestException:
            return False

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def start_run(stream: EventStream, run_id: str, name: str = "digits-mlp") -> None:
    stream.publish(
        [ev.build(ev.RunStarted, run_id=run_id, seq=0, name=name, monitor="val_loss", mode="min", epochs=50)]
    )


def epoch(stream: EventStream, run_id: str, n: int, loss: float) -> ev.Event:
    event = ev.build(
        ev.EpochEnd,
        run_id=run_id,
        seq=n + 1,
        epoch=n,
        learning_rate=1e-3,
        metrics={"loss": loss * 0.9, "val_loss": loss, "accuracy": 1 - loss * 0.8, "val_accuracy": 1 - loss},
    )
    stream.publish([event])
    return event


def finish(stream: EventStream, run_id: str, seq: int, epochs: int, best: tuple[int, float]) -> None:
    stream.publish(
        [
            ev.build(
                ev.RunFinished,
                run_id=run_id,
                seq=seq,
                status="completed",
                epochs_completed=epochs,
                best_epoch=best[0],
                best_value=best[1],
                monitor="val_loss",
                mode="min",
            )
        ]
    )

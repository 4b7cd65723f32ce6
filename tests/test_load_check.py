"""The promoter's Keras load check: a real helper process loading real .keras files with safe_mode=True."""

from __future__ import annotations

import os

import keras
import pytest

from pipeline.promotion.load_check import KerasLoadCheck


def _save(path, *, unsafe: bool = False) -> str:
    middle = keras.layers.Lambda(lambda t: t * 2) if unsafe else keras.layers.Dense(3)
    keras.Sequential([keras.Input((4,)), middle, keras.layers.Dense(2)]).save(str(path))
    return str(path)


@pytest.fixture
def checker():
    check = KerasLoadCheck(timeout_s=120)
    yield check
    check.close()


def test_an_answer_is_reused_until_the_file_changes(checker, tmp_path):
    path = _save(tmp_path / "best.keras")
    checker.prefetch(path)  # as on checkpoint_saved
    first = checker.submit(path)  # as on early_stopped: the same load, not a second one
    assert checker.submit(path) is first and checker.result(first) is None
    before = os.stat(path).st_mtime_ns
    _save(tmp_path / "best.keras", unsafe=True)  # overwritten by a later epoch (here: an unsafe model)
    os.utime(
        path, ns=(before + 10**9, before + 10**9)
    )  # a later modification time, whatever the clock's grain
    again = checker.submit(path)
    assert again is not first
    problem = checker.result(again)
    assert problem is not None and "Lambda" in problem and "safe_mode=False" in problem


def test_a_missing_file_is_reported(checker, tmp_path):
    missing = str(tmp_path / "gone.keras")
    assert checker.submit(missing).identity is None
    assert "not found" in checker.check(missing).lower() or "no such file" in checker.check(missing).lower()


def test_a_load_that_hangs_is_refused_after_its_timeout_and_the_helper_goes_on(tmp_path):
    # A FIFO nobody writes to: opening it blocks for ever, as a load from a hung network mount would.
    path = _save(tmp_path / "m.keras")
    hang = tmp_path / "hang.keras"
    os.mkfifo(hang)
    checker = KerasLoadCheck(timeout_s=3)
    try:
        assert checker.check(path) is None  # the helper is up (its Keras import is not timed)
        assert (
            checker.check(str(hang))
            == "loading took longer than 3 s (FITSTREAM_PROMOTER_LOAD_TIMEOUT_SECONDS)"
        )
        os.utime(path)
        assert checker.check(path) is None  # the same helper answers the next one
        assert str(hang) not in checker._answers and path in checker._answers  # failures are not remembered
    finally:
        checker.close()


def test_a_helper_killed_mid_load_is_replaced_and_asked_again(checker, tmp_path):
    path = _save(tmp_path / "m.keras")
    assert checker.check(path) is None  # helper up
    os.utime(path)  # a new identity: the next submit really loads
    pending = checker.submit(path)
    for process in list(checker._pool._processes.values()):
        process.kill()
    assert checker.result(pending) is None


class RecordingCheck(KerasLoadCheck):
    """Records what the promoter asks to load ahead (a unit test of its policy: nothing is loaded)."""

    def __init__(self):
        super().__init__()
        self.prefetched = []

    def warm(self):
        pass

    def prefetch(self, path):
        self.prefetched.append(path)


def test_the_promoter_loads_ahead_only_checkpoints_that_may_be_promoted(sqlite_url, tmp_path):
    from pipeline import events as ev
    from pipeline.consumers.base import Received
    from pipeline.consumers.promoter import Promoter
    from pipeline.db import migrate
    from pipeline.db.session import make_engine
    from pipeline.store import open_store

    migrate.upgrade(sqlite_url)
    engine = make_engine(sqlite_url)
    check = RecordingCheck()
    promoter = Promoter(engine, open_store(str(tmp_path / "store")), load_check=check)
    values = {"r1": [0.5, 0.4, 0.45, 0.3], "r2": [0.9, 0.95]}  # val_loss: lower is better
    batch = [
        Received(
            f"{i}-{j}",
            ev.build(
                ev.CheckpointSaved,
                run_id=run_id,
                seq=j + 1,
                path=f"/ckpt/{run_id}-{j}.keras",
                epoch=j,
                monitor="val_loss",
                value=v,
            ),
            "",
        )
        for i, (run_id, vals) in enumerate(values.items())
        for j, v in enumerate(vals)
    ]
    promoter.handle(batch)
    assert check.prefetched == [
        "/ckpt/r1-0.keras",
        "/ckpt/r1-1.keras",
        "/ckpt/r1-3.keras",
        "/ckpt/r2-0.keras",
    ]
    engine.dispose()

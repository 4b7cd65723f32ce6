"""The promoter's Keras load check: a real helper process loading real .keras files with safe_mode=True."""

from __future__ import annotations

import os
import time

import keras
import pytest

from pipeline.consumers.load_check import KerasLoadCheck


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
    time.sleep(0.01)
    _save(tmp_path / "best.keras", unsafe=True)  # overwritten by a later epoch (here: an unsafe model)
    again = checker.submit(path)
    assert again is not first
    problem = checker.result(again)
    assert problem is not None and "Lambda" in problem and "safe_mode=False" in problem


def test_a_missing_file_is_reported(checker, tmp_path):
    missing = str(tmp_path / "gone.keras")
    assert checker.submit(missing).identity is None
    assert "not found" in checker.check(missing).lower() or "no such file" in checker.check(missing).lower()


def test_a_hung_load_times_out_and_the_helper_is_replaced(tmp_path):
    path = _save(tmp_path / "m.keras")
    slow = KerasLoadCheck(timeout_s=0.001)  # the first load also waits for the helper's Keras import
    try:
        assert "loading took longer than 0.001 s" in slow.check(path)
        slow.timeout_s = 120
        assert slow.check(path) is None  # a fresh helper answers
    finally:
        slow.close()


def test_a_helper_killed_mid_load_is_replaced_and_asked_again(checker, tmp_path):
    path = _save(tmp_path / "m.keras")
    assert checker.check(path) is None  # helper up
    os.utime(path)  # a new identity: the next submit really loads
    pending = checker.submit(path)
    for process in list(checker._pool._processes.values()):
        process.kill()
    assert checker.result(pending) is None

"""A job's process trains only once the previous job's process on the same worker has exited (its GPU
memory back with the driver): real processes, a real lock file."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from tests.conftest import REPO
from workers.handover import _exited, handover_path

HOLD = """
import sys, time
from pathlib import Path
from workers.handover import wait_for_previous_job
wait_for_previous_job(Path(sys.argv[1]))
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
"""

NEXT = """
import json, sys
from pathlib import Path
from workers.handover import _exited, wait_for_previous_job
previous = int(sys.argv[2])
before = _exited(previous)
waited = wait_for_previous_job(Path(sys.argv[1]))
print(json.dumps({"previous_exited_before": before, "previous_exited_after": _exited(previous), "waited": waited}))
"""


def _python(code: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=REPO, stdout=subprocess.PIPE, text=True)


def test_the_next_job_waits_until_the_previous_jobs_process_has_exited(tmp_path):
    lock = handover_path("gpu0@host", root=tmp_path)
    previous = _python(HOLD, str(lock), "1.0")
    assert previous.stdout.readline().strip() == "locked"
    following = _python(NEXT, str(lock), str(previous.pid))
    out, _ = following.communicate(timeout=30)
    result = json.loads(out)
    assert result["previous_exited_before"] is False  # it really had to wait
    assert result["previous_exited_after"] is True
    assert previous.wait(timeout=5) == 0
    # The lock file names the process holding it now (gone too): a third job does not wait for it.
    third = _python(NEXT, str(lock), str(following.pid))
    assert json.loads(third.communicate(timeout=30)[0])["previous_exited_before"] is True


def test_a_zombie_counts_as_exited_and_a_live_process_does_not(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 10
    while not _exited(child.pid):  # not reaped yet: a zombie, its files and memory already released
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert child.poll() == 0
    assert _exited(child.pid)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert not _exited(sleeper.pid)
    finally:
        sleeper.kill()
        sleeper.wait()


def test_each_worker_has_its_own_handover_file(tmp_path):
    assert handover_path("gpu0@box", root=tmp_path) != handover_path("gpu1@box", root=tmp_path)
    assert handover_path("../../etc/x y", root=tmp_path).parent == tmp_path
    assert (
        handover_path("w1@test").parent.name == "fitstream-handover"
    )  # local temp dir, never shared storage

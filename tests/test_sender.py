"""Unit tests of the publisher's sender: order, bounded memory, spooling (a fake publish, no Redis)."""

from __future__ import annotations

import threading

from pipeline.callbacks.sender import EventSender
from pipeline.errors import StreamUnavailableError
from tests.conftest import wait_for


class FlakyStream:
    def __init__(self) -> None:
        self.up = True
        self.received: list[int] = []
        self.lock = threading.Lock()

    def publish(self, items):
        if not self.up:
            raise StreamUnavailableError("down")
        with self.lock:
            self.received.extend(int(i["n"]) for i in items)


def test_outage_spools_in_order_and_drains_when_back(tmp_path):
    stream = FlakyStream()
    sender = EventSender(
        publish=stream.publish, spool_path=tmp_path / "s.jsonl", buffer_size=50, send_batch=10
    )
    sender.start()
    for n in range(100):
        sender.submit({"n": str(n)})
    wait_for(lambda: len(stream.received) == 100, timeout=10, message="the first 100 sent")
    stream.up = False
    for n in range(100, 1100):
        sender.submit({"n": str(n)})
    wait_for((tmp_path / "s.jsonl").exists, timeout=10, message="the outage spooled to disk")
    stream.up = True
    for n in range(1100, 1200):
        sender.submit({"n": str(n)})
    report = sender.close(timeout=20)
    assert report.complete and report.spooled_total > 0
    assert stream.received == list(range(1200))
    assert not (tmp_path / "s.jsonl").exists()


def test_a_full_buffer_spills_to_disk_instead_of_blocking(tmp_path):
    stream = FlakyStream()
    gate = threading.Event()

    def slow_publish(items):
        gate.wait()
        stream.publish(items)

    sender = EventSender(publish=slow_publish, spool_path=tmp_path / "s.jsonl", buffer_size=10, send_batch=5)
    sender.start()
    submitting = threading.Thread(target=lambda: [sender.submit({"n": str(n)}) for n in range(1000)])
    submitting.start()
    submitting.join(timeout=60)
    # Every submit returned while the network was still stalled: nothing waits on it.
    assert not submitting.is_alive() and not gate.is_set()
    assert sender._queue.qsize() <= 10 and (tmp_path / "s.jsonl").exists()
    gate.set()
    report = sender.close(timeout=20)
    assert report.complete and report.spooled_total > 0
    assert stream.received == list(range(1000))


def test_unreachable_until_the_end_leaves_a_spool_with_everything(tmp_path):
    stream = FlakyStream()
    stream.up = False
    sender = EventSender(publish=stream.publish, spool_path=tmp_path / "s.jsonl")
    sender.start()
    for n in range(25):
        sender.submit({"n": str(n)})
    report = sender.close(timeout=0.5)
    assert not report.complete and report.left_in_spool == 25
    lines = (tmp_path / "s.jsonl").read_text().splitlines()
    assert [int(__import__("json").loads(line)["n"]) for line in lines] == list(range(25))


def test_a_broken_deferred_event_never_reaches_training(tmp_path):
    stream = FlakyStream()
    sender = EventSender(publish=stream.publish, spool_path=tmp_path / "s.jsonl")
    sender.start()

    def explode():
        raise RuntimeError("hashing failed")

    sender.submit(explode)
    sender.submit({"n": "1"})
    report = sender.close(timeout=5)
    assert sender.errors >= 1 and report.left_in_spool == 0

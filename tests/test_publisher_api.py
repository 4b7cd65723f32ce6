"""The README's "Use it in your own training script", word for word: the signatures it prints (parsed
from README.md and compared with the code's, so a change to either fails), the arguments a caller
gives reaching the published events, the 10,000-event buffer, the spool's path while Redis is
unreachable, and the fail-fast message for a monitor the model does not log.

Events are read back from a real Redis stream (or the real spool file); the fits are one epoch of
the small digits model.
"""

from __future__ import annotations

import ast
import inspect
import json
import re
import uuid

import keras
import pytest
import redis

from pipeline import EventPublisher, ResumableBackup
from pipeline import events as ev
from pipeline.callbacks.sender import DEFAULT_BUFFER_SIZE, EventSender
from pipeline.config import Settings, get_settings
from pipeline.errors import MonitorNotFoundError
from tests.conftest import REPO, free_port, wait_for
from tests.training_helpers import small_digits, small_model

README = (REPO / "README.md").read_text(encoding="utf-8")
SECTION = README.split("## Use it in your own training script", 1)[1].split("\n## ", 1)[0]
#: The section with its line breaks as spaces, for phrases that a line break may split.
PROSE = " ".join(SECTION.split())
#: Keyword-only parameters of EventPublisher that the README does not print (the worker's: the stream
#: it was given, and where a resumed run's sequence numbers go on). Anything else must be in the README.
UNDOCUMENTED = {"stream": None, "seq_start": 0}


def readme_signature(name: str) -> inspect.Signature:
    """The signature the README prints as `name(…)`, read as Python (defaults are literals)."""
    found = re.search(rf"`{name}\((.*?)\)`", SECTION, re.S)
    assert found, f"the README no longer prints {name}(…)"
    args = ast.parse(f"def {name}({' '.join(found.group(1).split())}): pass").body[0].args
    parameters = []
    positional = args.posonlyargs + args.args
    required = len(positional) - len(args.defaults)
    defaults = [inspect.Parameter.empty] * required + [ast.literal_eval(d) for d in args.defaults]
    for arg, default in zip(positional, defaults):
        parameters.append(
            inspect.Parameter(arg.arg, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default)
        )
    for arg, default in zip(args.kwonlyargs, args.kw_defaults):
        value = inspect.Parameter.empty if default is None else ast.literal_eval(default)
        parameters.append(inspect.Parameter(arg.arg, inspect.Parameter.KEYWORD_ONLY, default=value))
    return inspect.Signature(parameters)


def shape(signature: inspect.Signature) -> list[tuple[str, str, object]]:
    return [(p.name, p.kind.name, p.default) for p in signature.parameters.values()]


def stream_events(redis_url: str, stream: str) -> list[ev.Event]:
    return [ev.decode(fields) for _id, fields in redis.Redis.from_url(redis_url).xrange(stream)]


# -- the signatures --------------------------------------------------------------------------------


def test_event_publisher_takes_the_arguments_the_readme_prints_in_its_order_and_with_its_defaults():
    code = inspect.signature(EventPublisher)
    extra = {name: p for name, p in code.parameters.items() if name in UNDOCUMENTED}
    documented = code.replace(
        parameters=[p for name, p in code.parameters.items() if name not in UNDOCUMENTED]
    )
    assert shape(documented) == shape(readme_signature("EventPublisher"))
    # What the README leaves out cannot change a call written as the README says.
    assert {name: (p.kind.name, p.default) for name, p in extra.items()} == {
        name: ("KEYWORD_ONLY", default) for name, default in UNDOCUMENTED.items()
    }


def test_resumable_backup_takes_the_arguments_the_readme_prints():
    assert shape(inspect.signature(ResumableBackup)) == shape(readme_signature("ResumableBackup"))
    assert shape(readme_signature("ResumableBackup")) == [
        ("backup_dir", "POSITIONAL_OR_KEYWORD", inspect.Parameter.empty),
        ("keep", "POSITIONAL_OR_KEYWORD", ()),
        ("delete_checkpoint", "KEYWORD_ONLY", True),
    ]


# -- what the caller gives ends up in the events ----------------------------------------------------


def test_run_id_redis_url_and_tags_given_by_the_caller_are_what_the_events_carry(
    tmp_path, redis_url, stream_name
):
    # The settings point at a closed port: the events reach Redis only through the redis_url argument.
    settings = Settings(
        redis_url=f"redis://127.0.0.1:{free_port()}/0", stream=stream_name, home=tmp_path / "home"
    )
    run_id = f"caller-{uuid.uuid4().hex}"
    tags = {"team": "vision", "owner": "ada"}
    publisher = EventPublisher("api-arguments", run_id, redis_url, tags=tags, settings=settings)
    buffer_bounds = []

    class BufferBound(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            buffer_bounds.append(publisher._sender._queue.maxsize)

    (x, y), _ = small_digits(64)
    small_model().fit(x, y, epochs=1, batch_size=32, verbose=0, callbacks=[publisher, BufferBound()])
    assert publisher.run_id == run_id
    assert publisher.last_report.complete and publisher.last_report.left_in_spool == 0
    events = stream_events(redis_url, stream_name)
    assert [e.type for e in events] == ["run_started", "epoch_end", "run_finished"]
    assert {e.run_id for e in events} == {run_id}
    assert events[0].name == "api-arguments" and events[0].tags == tags
    assert not settings.spool_dir.exists(), "nothing was spooled for the settings' unreachable Redis"
    assert buffer_bounds == [DEFAULT_BUFFER_SIZE], "the publisher buffers as many events as the README says"


# -- the bounded buffer and the spool --------------------------------------------------------------


def test_the_buffer_holds_10000_events_and_a_full_buffer_spills_to_the_spool_in_order(tmp_path):
    documented = re.search(r"bounded in-memory buffer \(([\d,]+) events\)", PROSE).group(1)
    size = int(documented.replace(",", ""))
    assert size == DEFAULT_BUFFER_SIZE == 10_000
    # Not started: no thread takes events out of the buffer, so what it holds stays there.
    sender = EventSender(publish=lambda fields: None, spool_path=tmp_path / "run.jsonl")
    for n in range(size):
        sender.submit({"n": str(n)})
    assert not (tmp_path / "run.jsonl").exists(), f"{size} events fit in the buffer"
    sender.submit({"n": str(size)})
    spooled = [json.loads(line) for line in (tmp_path / "run.jsonl").read_text().splitlines()]
    assert spooled == [{"n": str(n)} for n in range(size + 1)], "the buffer spilled to the spool, in order"


@pytest.fixture
def fitstream_home(tmp_path, monkeypatch, stream_name):
    """FITSTREAM_HOME (and the test's stream) set in the environment that the publisher reads."""
    home = tmp_path / "fitstream-home"
    for name in ("FITSTREAM_SPOOL_DIR", "FITSTREAM_REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FITSTREAM_HOME", str(home))
    monkeypatch.setenv("FITSTREAM_STREAM", stream_name)
    get_settings.cache_clear()
    yield home
    get_settings.cache_clear()


def test_while_redis_is_unreachable_events_go_to_fitstream_home_spool_run_id_jsonl_in_order(fitstream_home):
    closed = f"redis://127.0.0.1:{free_port()}/0"
    publisher = EventPublisher("offline", redis_url=closed, flush_timeout=0.5)
    (x, y), _ = small_digits(64)
    small_model().fit(x, y, epochs=1, batch_size=32, verbose=0, callbacks=[publisher])
    documented = re.search(r"appended to `\$FITSTREAM_HOME/([^`]+)`", PROSE).group(1)
    assert documented == "spool/<run_id>.jsonl"
    path = fitstream_home / documented.replace("<run_id>", publisher.run_id)
    assert publisher.last_report.spool_path == path
    spooled = [ev.decode(json.loads(line)) for line in path.read_text().splitlines()]
    assert [(e.run_id, e.seq, e.type) for e in spooled] == [
        (publisher.run_id, 0, "run_started"),
        (publisher.run_id, 1, "epoch_end"),
        (publisher.run_id, 2, "run_finished"),
    ]
    assert publisher.last_report.left_in_spool == len(spooled)


# -- fail fast ------------------------------------------------------------------------------------


def test_a_watched_monitor_the_model_does_not_log_stops_the_run_after_one_epoch_with_the_readmes_message(
    tmp_path, redis_url, stream_name
):
    message = re.search(r"the run stops after the first epoch's validation with `([^`]+)`", PROSE).group(1)
    monitor = re.match(r"EarlyStopping monitors '(\w+)'", message).group(1)
    assert monitor == "val_acc"
    settings = Settings(redis_url=redis_url, stream=stream_name, home=tmp_path / "home")
    stop = keras.callbacks.EarlyStopping(monitor=monitor, patience=2)
    publisher = EventPublisher("typo", watch=[stop], settings=settings)
    epochs, batches = [], []
    count = keras.callbacks.LambdaCallback(
        on_epoch_begin=lambda epoch, logs: epochs.append(epoch),
        on_train_batch_end=lambda batch, logs: batches.append((epochs[-1], batch)),
    )
    (x, y), (x_val, y_val) = small_digits(200)
    with pytest.raises(MonitorNotFoundError) as stopped:
        small_model().fit(
            x,
            y,
            validation_data=(x_val, y_val),
            epochs=5,
            batch_size=50,
            verbose=0,
            callbacks=[stop, count, publisher],
        )
    assert str(stopped.value) == message
    assert epochs == [0] and batches == [(0, b) for b in range(4)], "one whole epoch trained, then it stopped"
    events = wait_for(
        lambda: (
            (found := stream_events(redis_url, stream_name)) and found[-1].type == "run_finished" and found
        ),
        message="the run's end published",
    )
    assert [e.type for e in events] == ["run_started", "run_failed", "run_finished"], "no epoch was published"
    assert (events[1].error_type, events[1].message) == ("MonitorNotFoundError", message)
    assert events[2].status == "failed"

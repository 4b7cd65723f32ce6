"""What the fuzz tests found, as plain regression tests: each of these failed before its fix.

* A payload nested 10,000 deep raised RecursionError out of ``events.decode``: every consumer
  thread died on it. Payloads whose bytes are not UTF-8 (UTF-16 with its BOM) were accepted by
  ``json.loads``' encoding detection and then killed the consumer when it decoded them as UTF-8;
  a UTF-8 BOM was recorded as part of the payload; a stream entry whose field names are not
  UTF-8 killed it while the reason was written.
* Missing ``v``, ``"v": true`` and ``"v": 1.0`` were taken for version 1; ``"seq": "3"``,
  ``"epoch": true``, ``"ts": "1"`` were silently coerced instead of refused.
* A NaN, infinite, negative or year-10000 ``ts`` passed the schema and then failed the recorder
  (or, NaN, made a nonsense ``last_event_at``).
* Text holding U+0000 passed the schema; PostgreSQL refuses it client-side without a SQLSTATE,
  which the consumer took for a database outage: the recorder paused forever on one event.
  Unpaired surrogates failed every insert.
* A reason quoting a 1 MB field name was 1 MB long; one quoting a name holding a surrogate could
  not be written to Redis, and killed the consumer.
* The ``runs`` row depended on how events were batched: within one batch the last ``run_started``
  set ``started_at`` (across batches the first), a batch holding ``run_queued`` and ``epoch_end``
  left the run ``queued``, and on SQLite a NaN best value erased the known one only when both
  came in the same batch.
* Job specs: nesting a few hundred deep raised RecursionError; YAML aliases nested in one another
  (a few hundred bytes standing for a billion values) were accepted, and ``submit`` would have
  written them all out; a spec containing itself was accepted; a JSON spec lost characters beyond
  U+FFFF (PyYAML reads their escapes as two surrogates); text SQL cannot store was accepted, to be
  dead-lettered later; a 1 MB value was quoted whole in the error, and a key holding a line break
  broke the error's lines; a file that is not UTF-8, or a path with a NUL, raised a raw exception.
* Alert rules: the same reading failures; a NaN or infinite threshold, and a gap between a metric
  and itself, were accepted — rules that could never fire; errors gave a rule's index, not its name.
* The command line: ``[/bold]`` in a run id made rich raise a MarkupError (and ``[red]`` vanished
  from the message); errors were wrapped at 80 columns when stderr is not a terminal; ``models show
  NAME@99999999999999999999`` and ``NAME@²``, ``alias NAME 99999999999999999999 …``, ``db upgrade
  --revision junk``, ``dead-letters purge --older-than 999…9d`` or ``99999w``, ``dead-letters show
  99999999999999999999-0``, and any argument that is not UTF-8 ended in a traceback.
"""

from __future__ import annotations

import json
import math
import time
from datetime import datetime, timezone

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from alerts.rules import RulesError, load_rules, parse_rules
from pipeline import events as ev
from pipeline.bus import EventStream
from pipeline.cli.main import cli
from pipeline.config import get_settings
from pipeline.consumers.base import Received
from pipeline.consumers.recorder import write_batch
from pipeline.db.models import SqlRun
from pipeline.db.session import transaction
from pipeline.errors import InvalidEventError
from pipeline.jobs import (
    MAX_SPEC_DEPTH,
    JobSpecError,
    load_spec,
    load_spec_text,
    spec_to_json,
)
from tests.conftest import settings_env, wait_for
from tests.stream_helpers import RECORDED_EVENT_IDS

VALID = {
    "v": 1,
    "type": "run_failed",
    "id": "e1",
    "run_id": "r1",
    "seq": 3,
    "ts": 1_700_000_000.5,
    "error_type": "OSError",
    "message": "m",
}


def _refused(payload: bytes | str, match: str) -> str:
    with pytest.raises(InvalidEventError, match=match) as info:
        ev.decode({b"event": payload.encode() if isinstance(payload, str) else payload})
    return str(info.value)


def _with(**changes: object) -> bytes:
    data = {**VALID, **changes}
    return json.dumps({k: v for k, v in data.items() if v is not _DROP}).encode()


_DROP = object()


# -- decoding -------------------------------------------------------------------------------------
@pytest.mark.parametrize("payload", [b"[" * 10_000 + b"]" * 10_000, b'{"a":' * 10_000 + b"1" + b"}" * 10_000])
def test_a_payload_nested_10000_deep_is_refused_not_a_recursion_error(payload):
    _refused(payload, f"nested more than {ev.MAX_NESTING} levels deep")


def test_the_nesting_limit_is_exact_on_the_fast_and_the_slow_path():
    def queued(depth: int) -> bytes:  # the event object and its spec are two levels
        lists = depth - 2
        return _with(type="run_queued", error_type=_DROP, message=_DROP, name="n", queue="q")[:-1] + (
            b',"spec":{"x":' + b"[" * lists + b"]" * lists + b"}}"
        )

    assert ev.decode({b"event": queued(ev.MAX_NESTING)}).type == "run_queued"
    _refused(queued(ev.MAX_NESTING + 1), "nested more than")


@pytest.mark.parametrize("encoding", ["utf-16", "utf-32", "utf-8-sig", "utf-16-le"])
def test_a_payload_must_be_utf8_json(encoding):
    _refused(json.dumps(VALID).encode(encoding), "UTF-8|not valid JSON")


def test_field_names_that_are_not_utf8_get_a_reason():
    reason = str(pytest.raises(InvalidEventError, ev.decode, {b"\xff\xfe": b"1", b"ev\xc3\x28": b"x"}).value)
    assert "no 'event' field" in reason and "\\xff" in reason
    reason.encode("utf-8")


@pytest.mark.parametrize("version", [_DROP, True, 1.0, "1", 2])
def test_the_version_is_the_integer_1(version):
    _refused(_with(v=version), "unknown schema version")


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"seq": "3"}, "seq"),
        ({"ts": "1"}, "ts"),
        ({"type": "epoch_end", "error_type": _DROP, "message": _DROP, "epoch": True, "metrics": {}}, "epoch"),
        (
            {
                "type": "run_finished",
                "error_type": _DROP,
                "message": _DROP,
                "status": "completed",
                "epochs_completed": 3.0,
            },
            "epochs_completed",
        ),
        (
            {
                "type": "run_finished",
                "error_type": _DROP,
                "message": _DROP,
                "status": "completed",
                "epochs_completed": 3,
                "restored_best_weights": 1,
            },
            "restored_best_weights",
        ),
        ({"message": 12}, "message"),
    ],
)
def test_a_value_of_another_type_is_refused_not_coerced(changes, field):
    _refused(_with(**changes), f"(?<![\\w.]){field}: ")


@pytest.mark.parametrize("ts", ["NaN", "Infinity", "-Infinity", "-1", "1e300", str(ev.MAX_TS + 1)])
def test_a_timestamp_is_finite_and_between_1970_and_9999(ts):
    _refused(json.dumps(VALID).replace('"ts": 1700000000.5', f'"ts": {ts}'), "ts: ")


def test_the_last_timestamp_allowed_is_recordable():
    event = ev.decode({b"event": _with(ts=ev.MAX_TS)})
    assert event.ts == ev.MAX_TS


@pytest.mark.parametrize(
    ("changes", "where", "what"),
    [
        ({"message": "bad\u0000text"}, "message: text", "U\\+0000"),
        ({"error_type": "x\ud800"}, "error_type: text", "unpaired surrogate \\(U\\+D800\\)"),
        (
            {
                "type": "epoch_end",
                "error_type": _DROP,
                "message": _DROP,
                "epoch": 0,
                "metrics": {"lo\u0000ss": 1.0},
            },
            "metrics.'lo\\\\x00ss': a key",
            "U\\+0000",
        ),
        (
            {
                "type": "run_queued",
                "error_type": _DROP,
                "message": _DROP,
                "name": "n",
                "queue": "q",
                "spec": {"a": [{"b": "\udfff"}]},
            },
            "spec.a.0.b: text",
            "surrogate",
        ),
    ],
)
def test_text_sql_cannot_store_is_refused_saying_where(changes, where, what):
    reason = _refused(_with(**changes), f"^{where} holds .*{what}")
    reason.encode("utf-8")  # the reason itself is storable


def test_a_valid_surrogate_pair_is_text_like_any_other():
    payload = _with(message="🚀")
    assert b"\\ud83d\\ude80" in payload  # JSON spells it as a surrogate pair
    assert ev.decode({b"event": payload}).message == "🚀"


def test_reasons_stay_short_and_storable():
    huge_type = _refused(_with(type="t" * 2**20), "unknown event type")
    strange_key = _refused(_with(**{"k\ud800" * 1000: 1}), "a key holds an unpaired surrogate")
    for reason in (huge_type, strange_key):
        assert len(reason) < 500
        reason.encode("utf-8")


# -- through a real recorder ------------------------------------------------------------------------
def test_poison_payloads_are_dead_lettered_and_the_recorder_goes_on(settings, engine, recorder):
    stream = EventStream(settings=settings)
    poison = [
        {b"event": b"[" * 10_000 + b"]" * 10_000},
        {
            b"event": ev.encode(ev.build(ev.RunFailed, run_id="p", seq=1, error_type="E", message="m"))[
                "event"
            ].encode("utf-16")
        },
        {b"\xff": b"no payload here"},
        {b"event": _with(run_id="p", id="nul", message="a\u0000b")},
    ]
    for fields in poison:
        stream.client.xadd(stream.stream, fields)
    good = ev.build(ev.EpochEnd, run_id="p", seq=2, epoch=0, metrics={"loss": 0.5})
    stream.publish([good])

    def recorded() -> bool:
        with engine.connect() as conn:
            return (
                conn.execute(
                    sa.text(f"SELECT count(*) FROM ({RECORDED_EVENT_IDS}) AS recorded WHERE event_id = :e"),
                    {"e": good.id},
                ).scalar()
                == 1
            )

    wait_for(recorded, timeout=30, message="the event after the poison to be recorded")
    assert recorder.thread.is_alive()
    assert stream.dead_letter_count("recorder") == len(poison) and stream.dead_letter_kinds() == {
        "invalid_event": len(poison)
    }


# -- the runs row does not depend on batching ------------------------------------------------------------
def _run_events(run_id: str) -> list[ev.Event]:
    return [
        ev.build(ev.RunQueued, run_id=run_id, seq=0, ts=100.0, name="job", queue="gpu"),
        ev.build(ev.RunStarted, run_id=run_id, seq=1_000_000, ts=200.0, name="job", host="first"),
        ev.build(
            ev.RunStarted, run_id=run_id, seq=2_000_000, ts=300.0, name="job", host="second"
        ),  # a resumed attempt
        ev.build(
            ev.EarlyStopped,
            run_id=run_id,
            seq=2_000_001,
            ts=301.0,
            stopped_epoch=4,
            best_epoch=1,
            best_value=0.25,
            monitor="val_loss",
            mode="min",
        ),
        ev.build(
            ev.RunFinished,
            run_id=run_id,
            seq=2_000_002,
            ts=302.0,
            status="early_stopped",
            epochs_completed=5,
            best_value=math.nan,
        ),
    ]


def _write(engine, batches: list[list[ev.Event]]) -> None:  # type: ignore[no-untyped-def]
    for batch in batches:
        with transaction(engine) as conn:
            write_batch(conn, [Received(f"0-{i}", e, ev.encode(e)["event"]) for i, e in enumerate(batch)])


def _row(engine, run_id: str) -> dict:  # type: ignore[no-untyped-def]
    """The run's row, its times as Unix timestamps (SQLite gives them back naive, in UTC)."""
    with engine.connect() as conn:
        row = dict(conn.execute(sa.select(SqlRun.__table__).where(SqlRun.run_id == run_id)).mappings().one())
    row.pop("run_id")
    return {
        k: (v if v.tzinfo else v.replace(tzinfo=timezone.utc)).timestamp() if isinstance(v, datetime) else v
        for k, v in row.items()
    }


def test_the_runs_row_is_the_same_in_one_batch_or_many(engine):
    _write(engine, [_run_events("one-batch")])
    _write(engine, [[e] for e in _run_events("event-by-event")])
    one, many = _row(engine, "one-batch"), _row(engine, "event-by-event")
    assert one == many
    assert (one["queued_at"], one["started_at"], one["finished_at"], one["last_event_at"]) == (
        100.0,
        200.0,
        302.0,
        302.0,
    )
    assert one["host"] == "second" and one["best_value"] == 0.25 and one["status"] == "early_stopped"


def test_a_run_whose_events_left_the_queue_is_running_in_one_batch_or_many(engine):
    queued = ev.build(ev.RunQueued, run_id="q1", seq=0, ts=1.0, name="job", queue="gpu")
    epoch = ev.build(ev.EpochEnd, run_id="q1", seq=1_000_001, ts=2.0, epoch=0, metrics={"loss": 1.0})
    _write(engine, [[queued, epoch]])
    _write(engine, [[e.model_copy(update={"run_id": "q2"})] for e in (queued, epoch)])
    assert _row(engine, "q1")["status"] == _row(engine, "q2")["status"] == "running"


# -- job specs ---------------------------------------------------------------------------------------
SPEC = "name: t\nmodel: examples.digits:build_model\ndata: examples.digits:load_data\n"


def _laughs(depth: int) -> str:
    """YAML aliases nested ``depth`` deep, ten to a level: a few hundred bytes that stand for 10^depth values."""
    levels = ['a0: &a0 ["lol"]'] + [
        f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, depth + 1)
    ]
    return (
        "name: t\nmodel: {fn: 'examples.digits:build_model', kwargs: {"
        + ", ".join(levels)
        + "}}\ndata: examples.digits:load_data\n"
    )


def _spec_refused(text: str, match: str) -> str:
    with pytest.raises(JobSpecError, match=match) as info:
        load_spec_text(text)
    return str(info.value)


def test_a_spec_nested_thousands_deep_is_refused_not_a_recursion_error():
    _spec_refused(SPEC + "tags: " + "[" * 5000 + "]" * 5000, f"nested more than {MAX_SPEC_DEPTH} levels deep")
    _spec_refused('{"name": "t", "tags": ' + "[" * 5000 + "]" * 5000 + "}", "nested more than")


def test_yaml_aliases_that_stand_for_billions_of_values_are_refused_at_once():
    started = time.monotonic()
    _spec_refused(_laughs(9), "stands for more than 100,000 values")
    assert time.monotonic() - started < 2
    assert spec_to_json(load_spec_text(_laughs(3)))  # a thousand values: a spec like any other


def test_a_spec_that_contains_itself_is_refused():
    _spec_refused(
        "name: t\nmodel: {fn: 'examples.digits:build_model', kwargs: {a: &a [*a]}}\ndata: examples.digits:load_data\n",
        "contains itself",
    )


def test_a_json_spec_keeps_characters_beyond_ffff():
    spec = load_spec_text(
        json.dumps(
            {
                "name": "𐀀",
                "model": "examples.digits:build_model",
                "data": "examples.digits:load_data",
                "tags": {"team": "🚀"},
            }
        )
    )
    assert (spec.name, spec.tags) == ("𐀀", {"team": "🚀"})


def test_text_sql_cannot_store_is_refused_in_a_spec():
    _spec_refused(SPEC + 'tags: {team: "a\\0b"}\n', "tags.team: text holds U\\+0000")
    _spec_refused(
        json.dumps(
            {
                "name": "t",
                "model": "examples.digits:build_model",
                "data": "examples.digits:load_data",
                "tags": {"x": "\ud800"},
            }
        ),
        "unpaired surrogate",
    )


def test_a_spec_error_quotes_a_long_value_briefly_and_quotes_keys_that_would_blur_the_path():
    message = _spec_refused(SPEC + "queue: " + "q" * 2**20 + "\n", "queue: not a valid queue name")
    assert len(message) < 400
    assert "  - 'a.b': unknown key" in _spec_refused(SPEC + "a.b: 1\n", "unknown key")
    assert "  - '\\n': unknown key" in _spec_refused(SPEC + '"\\n": 1\n', "unknown key")


@pytest.mark.parametrize(
    ("content", "match"), [(b"name: \xff\xfe\n", "not UTF-8 text"), (None, "embedded null byte")]
)
def test_a_spec_file_that_cannot_be_read_as_text_is_refused(content, match, tmp_path):
    path = tmp_path / "job.yaml"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(JobSpecError, match=match):
        load_spec(path if content is not None else str(path) + "\x00")


# -- alert rules ----------------------------------------------------------------------------------------
CHANNELS = {"team": {"type": "slack", "url_env": "X"}}


def _rules_refused(data: object, match: str) -> str:
    with pytest.raises(RulesError, match=match) as info:
        parse_rules(data)
    return str(info.value)


@pytest.mark.parametrize(
    ("rule", "match"),
    [
        ({"metric": "loss", "above": math.nan}, "above: Input should be a finite number"),
        ({"metric": "loss", "below": -math.inf}, "below: Input should be a finite number"),
        ({"gap": {"metric": "val_loss", "minus": "val_loss", "above": 0.1}}, "a gap is between two metrics"),
        ({"stalled_seconds": math.inf}, "stalled_seconds: Input should be a finite number"),
    ],
)
def test_a_rule_that_could_never_fire_is_refused(rule, match):
    _rules_refused(
        {"channels": CHANNELS, "rules": [{"name": "never", "channels": ["team"], **rule}]},
        f"rules.0 \\(never\\).*{match}",
    )


def test_a_rules_error_names_the_rule_and_quotes_keys_that_would_blur_the_path():
    message = _rules_refused(
        {
            "channels": CHANNELS,
            "rules": [
                {"name": "ok", "nan": "loss", "channels": ["team"]},
                {"name": "no-condition", "channels": ["team"]},
            ],
        },
        "exactly one condition",
    )
    assert "  - rules.1 (no-condition): a rule needs exactly one condition" in message
    message = _rules_refused(
        {"channels": CHANNELS, "rules": [{"name": "r", "nan": "loss", "channels": ["team"], "\x1e": 1}]},
        "Extra inputs",
    )
    assert len(message.splitlines()) == 2 and "rules.0 (r).'\\x1e'" in message


def test_text_sql_cannot_store_is_refused_in_a_rules_file():
    _rules_refused(
        {"channels": CHANNELS, "rules": [{"name": "a\x00b", "nan": "loss", "channels": ["team"]}]},
        "rules.0.name: text holds U\\+0000",
    )


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"rules: " + b"[" * 5000 + b"]" * 5000, "nested too deeply"),
        (b"\xff\xfe rules", "not UTF-8 text"),
        (_laughs(7).replace("name: t\n", "").encode(), "stands for more than"),
        (None, "embedded null byte"),
    ],
)
def test_a_rules_file_that_cannot_be_read_is_refused_with_a_reason(content, match, tmp_path):
    path = tmp_path / "rules.yaml"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(RulesError, match=match):
        load_rules(path if content is not None else str(path) + "\x00")


def test_a_json_rules_file_keeps_characters_beyond_ffff(tmp_path):
    path = tmp_path / "rules.json"
    path.write_text(
        json.dumps(
            {"channels": CHANNELS, "rules": [{"name": "🚀 diverged", "nan": "loss", "channels": ["team"]}]}
        )
    )
    assert load_rules(path).rules[0].name == "🚀 diverged"


# -- the command line ---------------------------------------------------------------------------------------
@pytest.fixture
def invoke(settings, engine, monkeypatch):  # type: ignore[no-untyped-def]
    """Run ``fitstream ARGS`` in-process against the test's own Redis stream and database."""
    for key, value in settings_env(settings).items():
        monkeypatch.setenv(key, value)

    def _invoke(*args: str):  # type: ignore[no-untyped-def]
        get_settings.cache_clear()
        try:
            result = CliRunner().invoke(cli, list(args))
        finally:
            get_settings.cache_clear()
        assert result.exception is None or isinstance(result.exception, SystemExit), (
            result.exception
        )  # no traceback
        return result

    return _invoke


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (["show", "[/bold]"], 1, "no run with id '[/bold]'"),
        (["show", "[red]x"], 1, "no run with id '[red]x'"),
        (["models", "show", "x@99999999999999999999"], 1, "a model version is a number from 1 to 2147483647"),
        (["models", "show", "x@²"], 1, "a model version is a number from 1 to 2147483647"),
        (["alias", "x", "99999999999999999999", "y"], 2, "is not in the range 1<=x<=2147483647"),
        (["db", "upgrade", "--revision", "junk"], 1, "Can't locate revision identified by 'junk'"),
        (["dead-letters", "purge", "--older-than", "9" * 400 + "d"], 1, "longer than 10,000 years"),
        (["dead-letters", "purge", "--older-than", "99999w"], 0, "purged 0"),
        (["dead-letters", "show", "99999999999999999999-0"], 1, "not a dead-letter id"),
        (["show", "caf\udce9"], 2, "is not UTF-8 text"),
    ],
)
def test_arguments_that_used_to_end_in_a_traceback(invoke, args, code, says):
    result = invoke(*args)
    assert result.exit_code == code and says in result.output, result.output[-1000:]


def test_an_error_stays_one_line_however_long(invoke):
    result = invoke("cancel", "r" * 300)
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1, result.output

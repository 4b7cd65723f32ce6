"""Issue 10: dead letters are an operator's tool — list, show, replay (once, nothing doubles), purge —
and `fitstream status` counts them by reason; against a real recorder, Redis and SQL."""

from __future__ import annotations

import json

import sqlalchemy as sa

from pipeline import events as ev
from pipeline.bus import EventStream, StreamMessage
from tests.conftest import run_cli, settings_env, wait_for
from tests.stream_helpers import RECORDED_EVENT_IDS


def _cli(settings, *args, check=True):
    return run_cli("dead-letters", *args, env_extra=settings_env(settings), check=check)


def _events_in_sql(engine, event_id):
    with engine.connect() as conn:
        return conn.execute(
            sa.text(f"SELECT count(*) FROM ({RECORDED_EVENT_IDS}) AS recorded WHERE event_id = :e"),
            {"e": event_id},
        ).scalar()


def test_list_show_and_status_count_dead_letters_by_reason(settings, engine, recorder):
    stream = EventStream(settings=settings)
    good = ev.build(ev.EpochEnd, run_id="dl", seq=1, epoch=0, metrics={"loss": 0.5})
    poison = ev.build(ev.EpochEnd, run_id="dl", seq=2, epoch=2**70, metrics={"loss": 0.4})
    stream.publish([good, poison])
    stream.client.xadd(stream.stream, {ev.VERSION_FIELD: "1", ev.PAYLOAD_FIELD: "{not json"})
    wait_for(lambda: stream.dead_letter_count() == 2, message="two dead letters")
    letters = json.loads(_cli(settings, "list", "--json").stdout)
    assert {letter["kind"] for letter in letters} == {"invalid_event", "handler_failed"}
    assert all(letter["group"] == "recorder" for letter in letters)
    failed = next(letter for letter in letters if letter["kind"] == "handler_failed")
    assert (failed["event_type"], failed["run_id"], failed["event_id"]) == ("epoch_end", "dl", poison.id)
    shown = json.loads(_cli(settings, "show", failed["id"], "--json").stdout)
    assert json.loads(shown["payload"])["id"] == poison.id and "recorder handler failed" in shown["reason"]
    status = json.loads(run_cli("status", "--json", env_extra=settings_env(settings)).stdout)
    assert status["dead_letters"] == 2 and status["dead_letters_by_reason"] == {
        "handler_failed": 1,
        "invalid_event": 1,
    }
    assert _events_in_sql(engine, good.id) == 1


def test_replay_puts_the_event_back_once_and_nothing_doubles(settings, engine, recorder):
    stream = EventStream(settings=settings)
    # As a consumer with a since-fixed bug would have left it: a valid event, dead-lettered.
    lost = ev.build(ev.EpochEnd, run_id="replayed", seq=1, epoch=0, metrics={"loss": 0.25})
    stream.dead_letter(
        "recorder",
        StreamMessage("1-1", ev.encode(lost)),
        "recorder handler failed: a bug, since fixed",
        kind="handler_failed",
    )
    [letter] = json.loads(_cli(settings, "list", "--json", "--group", "recorder").stdout)
    _cli(settings, "replay", letter["id"])
    wait_for(lambda: _events_in_sql(engine, lost.id) == 1, message="the replayed event recorded")
    again = _cli(settings, "replay", letter["id"], check=False)
    assert again.returncode == 1 and "no dead letter" in again.stderr
    assert stream.dead_letter_count() == 0 and stream.dead_letter_kinds() == {}
    # Replaying an event the consumers already have records nothing twice (same event id).
    stream.dead_letter("recorder", StreamMessage("1-2", ev.encode(lost)), "again", kind="handler_failed")
    _cli(settings, "replay", "--all", "--group", "recorder")
    wait_for(
        lambda: stream.groups()[0]["lag"] == 0 and stream.groups()[0]["pending"] == 0,
        message="replay consumed",
    )
    assert _events_in_sql(engine, lost.id) == 1
    with engine.connect() as conn:
        assert (
            conn.execute(sa.text("SELECT count(*) FROM epoch_metrics WHERE run_id = 'replayed'")).scalar()
            == 1
        )


def test_purge_and_bad_arguments(settings):
    stream = EventStream(settings=settings)
    for index in range(3):
        stream.dead_letter(
            "alerter", StreamMessage(f"1-{index}", {b"event": b"{}"}), "invalid", kind="invalid_event"
        )
    assert "purged 0" in _cli(settings, "purge", "--older-than", "1h").stderr
    assert "purged 3" in _cli(settings, "purge", "--older-than", "0s").stderr
    assert stream.dead_letter_count() == 0 and stream.dead_letter_kinds() == {}
    for args, message in (
        (["purge", "--older-than", "soon"], "not a duration"),
        (["show", "../etc"], "not a dead-letter id"),
        (["show", "1-0"], "no dead letter 1-0"),
        (["replay"], "give dead-letter ids, or --all"),
    ):
        result = _cli(settings, *args, check=False)
        assert result.returncode in (1, 2) and message in " ".join(result.stderr.split()), (
            args,
            result.stderr,
        )

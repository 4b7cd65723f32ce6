"""`fitstream ui` over HTTP (a real server process, real Redis and database): the API's shapes, the
token on every route, and the event stream resuming after a reconnect with nothing missed or doubled."""

from __future__ import annotations

import json

import pytest
import requests

from pipeline import events as ev
from pipeline.bus import EventStream
from tests.conftest import run_cli, settings_env, wait_for
from tests.ui_helpers import UiServer, epoch, finish, start_run

sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
RUN = "d1" * 16


def _sse(url: str, *, headers: dict[str, str] | None = None, count: int) -> list[tuple[str, str, dict]]:
    """The first ``count`` messages (id, event, data) of an event stream."""
    out: list[tuple[str, str, dict]] = []
    with requests.get(url, headers=headers or {}, stream=True, timeout=20) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith(
            "text/event-stream"
        )
        message: dict[str, str] = {}
        for line in response.iter_lines(decode_unicode=True):
            if line == "" and "data" in message:
                out.append((message["id"], message["event"], json.loads(message["data"])))
                message = {}
                if len(out) == count:
                    break
            elif line and not line.startswith(":") and ":" in line:
                key, _, value = line.partition(":")
                message[key] = value.strip()
    return out


@pytest.fixture
def ui(settings, engine, recorder, tmp_path):
    server = UiServer(settings_env(settings), tmp_path / "ui.log")
    yield server
    server.stop()


@sqlite_only
def test_the_api_answers_in_the_contracts_shapes(settings, ui):
    stream = EventStream(settings=settings)
    start_run(stream, RUN)
    for n, loss in enumerate([0.9, 0.6, 0.5]):
        epoch(stream, RUN, n, loss)
    finish(stream, RUN, 4, 3, (2, 0.5))
    wait_for(
        lambda: (
            requests.get(ui.url + "/api/runs", timeout=5).json()[:1]
            and requests.get(ui.url + "/api/runs", timeout=5).json()[0]["status"] == "completed"
        ),
        message="run recorded",
    )
    (row,) = requests.get(ui.url + "/api/runs", timeout=5).json()
    assert {
        "run_id",
        "name",
        "status",
        "epochs_completed",
        "monitor",
        "mode",
        "best_value",
        "best_epoch",
        "started_at",
        "finished_at",
        "sweep_id",
    } <= set(row)
    assert (row["run_id"], row["epochs_completed"], row["best_value"], row["best_epoch"]) == (RUN, 3, 0.5, 2)
    metrics = requests.get(ui.url + f"/api/runs/{RUN[:6]}/metrics", timeout=5)
    assert metrics.json()["val_loss"] == [[0, 0.9], [1, 0.6], [2, 0.5]]
    assert set(metrics.json()) == {"loss", "val_loss", "accuracy", "val_accuracy"}
    assert requests.get(ui.url + f"/api/runs/{RUN}/metrics?level=batch", timeout=5).json() == {}
    for page in ("/", f"/runs/{RUN}", f"/compare?runs={RUN}", "/models"):
        response = requests.get(ui.url + page, timeout=5)
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/html"), page
    missing = requests.get(ui.url + "/api/runs/nope/metrics", timeout=5)
    assert missing.status_code == 404 and "no run with id 'nope'" in missing.json()["error"]
    assert requests.get(ui.url + "/api/runs?status=failed", timeout=5).json() == []


@sqlite_only
def test_the_event_stream_resumes_after_the_last_event_id_with_nothing_missed_or_doubled(settings, ui):
    stream = EventStream(settings=settings)
    start_run(stream, RUN)
    other = "e2" * 16
    start_run(stream, other, name="other")  # not this run's: never sent on this run's stream
    sent = [epoch(stream, RUN, n, 1.0 / (n + 1)) for n in range(3)]
    first = _sse(ui.url + f"/api/runs/{RUN}/events?after=0-0", count=4)
    assert [(kind, data.get("epoch")) for _id, kind, data in first] == [
        ("run_started", None),
        ("epoch_end", 0),
        ("epoch_end", 1),
        ("epoch_end", 2),
    ]
    assert all(data["run_id"] == RUN for _id, _kind, data in first)
    # The connection drops after epoch 1; meanwhile epochs 3 and 4 are published; the browser
    # reconnects with Last-Event-ID = the last id it saw.
    last_seen = first[2][0]
    sent += [epoch(stream, RUN, n, 1.0 / (n + 1)) for n in (3, 4)]
    resumed = _sse(ui.url + f"/api/runs/{RUN}/events", headers={"Last-Event-ID": last_seen}, count=3)
    assert [data["epoch"] for _id, _kind, data in resumed] == [2, 3, 4]
    assert [data["id"] for _id, _kind, data in first[1:3] + resumed] == [e.id for e in sent]
    bad = requests.get(ui.url + f"/api/runs/{RUN}/events", headers={"Last-Event-ID": "x; DROP"}, timeout=5)
    assert bad.status_code == 400


@sqlite_only
def test_a_token_is_needed_on_every_route_but_healthz_and_for_any_address_but_loopback(
    settings, engine, tmp_path
):
    refused = run_cli(
        "ui",
        "--host",
        "0.0.0.0",
        "--port",
        "0",
        env_extra={**settings_env(settings), "FITSTREAM_UI_TOKEN": ""},
        check=False,
    )
    assert refused.returncode == 1 and "--token" in refused.stderr and "FITSTREAM_UI_TOKEN" in refused.stderr
    server = UiServer({**settings_env(settings), "FITSTREAM_UI_TOKEN": "s3cret-token"}, tmp_path / "ui.log")
    try:
        routes = [
            "/",
            f"/runs/{RUN}",
            "/compare?runs=x",
            "/models",
            "/api/runs",
            f"/api/runs/{RUN}/metrics",
            f"/api/runs/{RUN}/events",
            "/api/models",
            "/static/app.js",
        ]
        for route in routes:
            assert requests.get(server.url + route, timeout=5).status_code == 401, route
            assert (
                requests.get(
                    server.url + route, headers={"Authorization": "Bearer wrong"}, timeout=5
                ).status_code
                == 401
            ), route
        assert requests.get(server.url + "/healthz", timeout=5).status_code == 200
        assert (
            requests.get(
                server.url + "/api/runs", headers={"Authorization": "Bearer s3cret-token"}, timeout=5
            ).status_code
            == 200
        )
        assert requests.get(server.url + "/api/runs?token=s3cret-token", timeout=5).status_code == 200
        with requests.get(
            server.url + f"/api/runs/{RUN}/events?token=s3cret-token&after=0-0", stream=True, timeout=5
        ) as live:
            assert live.status_code == 200
    finally:
        server.stop()


@sqlite_only
def test_the_run_api_carries_the_runs_params_and_marks(settings, ui):
    """`/api/runs/{id}` (the run page's data): params as recorded, the best epoch marked."""
    stream = EventStream(settings=settings)
    run_id = "e2" * 16
    stream.publish(
        [
            ev.build(
                ev.RunStarted,
                run_id=run_id,
                seq=0,
                name="digits-mlp",
                monitor="val_loss",
                mode="min",
                epochs=50,
                params={"model.kwargs.hidden": 64, "fit.batch_size": 32},
            )
        ]
    )
    for n, loss in enumerate([0.9, 0.4, 0.5]):
        epoch(stream, run_id, n, loss)
    finish(stream, run_id, 4, 3, (1, 0.4))
    wait_for(
        lambda: requests.get(ui.url + f"/api/runs/{run_id}", timeout=5).status_code == 200,
        message="run recorded",
    )
    wait_for(
        lambda: (
            requests.get(ui.url + f"/api/runs/{run_id}", timeout=5).json()["run"]["status"] == "completed"
        ),
        message="run finished",
    )
    payload = requests.get(ui.url + f"/api/runs/{run_id}", timeout=5).json()
    assert {k: str(v) for k, v in payload["params"].items()} == {
        "model.kwargs.hidden": "64",
        "fit.batch_size": "32",
    }
    assert payload["run"]["best_epoch"] == 1

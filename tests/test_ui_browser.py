"""The dashboard in a real headless browser: Debian's chromium, driven by Playwright (no browser
download). Screenshots are kept under the test's temp dir (and the run page's in docs/)."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
import requests

from pipeline.bus import EventStream
from tests.conftest import REPO, settings_env, wait_for
from tests.ui_helpers import UiServer, epoch, finish, start_run

sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
A, B = "a7" * 16, "b8" * 16
README_SCREENSHOT = REPO / "docs" / "run-page.png"


@pytest.fixture
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed; ./dev test installs Debian's chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def ui(settings, engine, recorder, tmp_path):
    server = UiServer(settings_env(settings), tmp_path / "ui.log")
    yield server
    server.stop()


def _page(browser, errors: list[str]):
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    return page


def _points(page, family: str) -> int:
    return int(page.get_attribute(f'.chart[data-family="{family}"]', "data-points") or 0)


@sqlite_only
def test_runs_page_run_page_live_points_reconnect_and_compare_in_chromium(settings, ui, browser, tmp_path):
    stream = EventStream(settings=settings)
    for run_id, losses in ((A, [0.9, 0.6, 0.45]), (B, [0.8, 0.5, 0.4, 0.35])):
        start_run(stream, run_id, name=f"net-{run_id[:2]}")
        for n, loss in enumerate(losses):
            epoch(stream, run_id, n, loss)
    finish(stream, B, 5, 4, (3, 0.35))
    wait_for(lambda: len(requests.get(ui.url + "/api/runs", timeout=5).json()) == 2, message="runs recorded")
    wait_for(
        lambda: (
            len(requests.get(ui.url + f"/api/runs/{A}/metrics", timeout=5).json().get("val_loss", [])) == 3
        ),
        message="epochs recorded",
    )
    errors: list[str] = []
    page = _page(browser, errors)

    # Runs page: both runs, the finished one with its status and best value.
    page.goto(ui.url + "/")
    page.wait_for_selector("#runs-table tbody tr")
    text = page.inner_text("#runs-table")
    assert "net-a7" in text and "net-b8" in text and "completed" in text and "val_loss↓ 0.35" in text
    page.screenshot(path=str(tmp_path / "runs-page.png"), full_page=True)

    # Run page: the chart of the loss family has 2 metrics × 3 epochs; a new epoch_end shows within 2 s.
    page.goto(ui.url + f"/runs/{A}")
    page.wait_for_selector('.chart[data-family="loss"]')
    page.wait_for_function("document.getElementById('live').className === 'on'", timeout=10_000)
    wait_for(lambda: _points(page, "loss") == 6, timeout=10, message="history drawn")
    published = time.monotonic()
    epoch(stream, A, 3, 0.42)
    page.wait_for_function(
        "document.querySelector('.chart[data-family=\"loss\"]').dataset.points === '8'", timeout=2_000
    )
    assert time.monotonic() - published < 2.0

    # Cut the connection: the server goes away while the page stays open; epochs 4 and 5 are published
    # meanwhile; a server comes back on the same port. The browser's EventSource reconnects by itself
    # with Last-Event-ID, and the server resumes after it: every epoch arrives once, in order.
    assert errors == []
    ui.stop()
    page.wait_for_function("document.getElementById('live').className === 'off'", timeout=10_000)
    epoch(stream, A, 4, 0.41)
    epoch(stream, A, 5, 0.43)
    back = UiServer(settings_env(settings), tmp_path / "ui.log", port=ui.port)
    try:
        page.wait_for_function(
            "document.querySelector('.chart[data-family=\"loss\"]').dataset.points === '12'", timeout=15_000
        )
        epoch(stream, A, 6, 0.44)
        page.wait_for_function(
            "document.querySelector('.chart[data-family=\"loss\"]').dataset.points === '14'", timeout=5_000
        )
        received = page.evaluate("window.fitstreamReceived")
        ids = [r[0] for r in received]
        assert len(ids) == len(set(ids)), "an event was delivered twice"
        assert [r[2] for r in received if r[1] == "epoch_end"] == [0, 1, 2, 3, 4, 5, 6]
        page.screenshot(path=str(tmp_path / "run-page.png"), full_page=True)
        _compare_and_models(page, back.url, errors, tmp_path)
    finally:
        back.stop()
    # While the server was away, only its absence: the stream it cut, the connections it refused.
    outage = [
        e
        for e in errors
        if "net::ERR_CONNECTION_REFUSED" not in e and "net::ERR_INCOMPLETE_CHUNKED_ENCODING" not in e
    ]
    assert outage == [], outage
    errors.clear()
    if os.environ.get(
        "FITSTREAM_UPDATE_SCREENSHOTS"
    ):  # the README's picture: FITSTREAM_UPDATE_SCREENSHOTS=1 ./dev test -k browser
        shutil.copyfile(tmp_path / "run-page.png", README_SCREENSHOT)


def _compare_and_models(page, url: str, errors: list[str], shots: Path) -> None:
    """Compare: both runs, one series per run and metric; then the models page, on a quiet console."""
    errors_before = len(errors)
    page.goto(url + f"/compare?runs={A[:6]},{B[:6]}")
    page.wait_for_selector("#compare-table tbody tr")
    assert page.locator("#compare-table tbody tr").count() == 2
    assert _points(page, "loss") == 2 * (7 + 4)
    page.screenshot(path=str(shots / "compare-page.png"), full_page=True)
    page.goto(url + "/models")
    page.wait_for_selector("#models-table")
    assert errors[errors_before:] == []

"""Every SQL example in the README runs against a real training history (issue 11): two real fits
that early-stop, recorded by the real recorder and promoted by the real promoter, queried through
the real `fitstream sql` (the read-only path) on SQLite and on PostgreSQL. A schema change that
breaks an example fails here."""

from __future__ import annotations

import json
import re
import shlex

import keras
import pytest

from pipeline import EventPublisher
from tests.conftest import REPO, RecorderThread, run_cli, settings_env, wait_for
from tests.test_promotion import PromoterThread
from tests.training_helpers import small_digits, small_model

pytestmark = pytest.mark.slow
README = (REPO / "README.md").read_text()
EXAMPLE_RUN_ID = "3f2c…"  # the README's stand-in for a run id


def sql_examples() -> list[str]:
    """Each statement of each ```sql block, and each `fitstream sql "…"` query in a shell block."""
    statements = [
        statement.strip()
        for block in re.findall(r"```sql\n(.*?)```", README, re.S)
        for statement in block.split(";")
        if re.sub(r"--[^\n]*", "", statement).strip()
    ]
    for block in re.findall(r"```(?:bash|sh|console)\n(.*?)```", README, re.S):
        for line in block.splitlines():
            if line.startswith("fitstream sql "):
                query = shlex.split(line.split("#")[0])[2]
                if query not in ("…", "-"):  # lines that show the output flags and standard input
                    statements.append(query)
    return statements


def test_the_examples_are_found():
    found = sql_examples()
    assert len(found) >= 4, found
    assert any("model_aliases" in s for s in found) and any(EXAMPLE_RUN_ID in s for s in found)


def train(name: str, settings, learning_rate: float) -> str:
    (x, y), (x_val, y_val) = small_digits(300)
    model = small_model(learning_rate=learning_rate)
    # min_delta far above any real improvement: EarlyStopping fires after `patience` epochs.
    stop = keras.callbacks.EarlyStopping(
        monitor="val_loss", patience=2, min_delta=5.0, restore_best_weights=True
    )
    checkpoint = keras.callbacks.ModelCheckpoint(
        str(settings.home / f"{name}-{learning_rate}.keras"), monitor="val_loss", save_best_only=True
    )
    publisher = EventPublisher(
        name=name, watch=[stop, checkpoint], settings=settings, batch_size=32, batch_events_every=5
    )
    model.fit(
        x,
        y,
        validation_data=(x_val, y_val),
        epochs=10,
        batch_size=32,
        verbose=0,
        callbacks=[stop, checkpoint, publisher],
    )
    assert stop.stopped_epoch == 2
    return publisher.run_id


def test_every_readme_query_answers_from_a_real_history(settings, engine):
    settings.home.mkdir(parents=True, exist_ok=True)
    env = {**settings_env(settings), "FITSTREAM_MODEL_STORE": settings.model_store_url}
    with RecorderThread(settings, engine), PromoterThread(settings, engine):
        runs = [train("digits-mlp", settings, 1e-2), train("digits-mlp", settings, 3e-2)]
        wait_for(
            lambda: (
                json.loads(
                    run_cli("sql", "SELECT count(*) AS n FROM model_versions", "--json", env_extra=env).stdout
                )[0]["n"]
                >= 1
            ),
            timeout=90,
            message="a model promoted",
        )
        wait_for(
            lambda: (
                json.loads(
                    run_cli(
                        "sql",
                        "SELECT count(*) AS n FROM runs WHERE status = 'early_stopped'",
                        "--json",
                        env_extra=env,
                    ).stdout
                )[0]["n"]
                == 2
            ),
            timeout=60,
            message="both runs recorded",
        )
    for query in sql_examples():
        runnable = query.replace(EXAMPLE_RUN_ID, runs[0])
        done = run_cli("sql", runnable, "--json", env_extra=env, check=False)
        assert done.returncode == 0, f"README query failed:\n{query}\n{done.stderr}"
        rows = json.loads(done.stdout)
        assert rows, f"README query answered nothing from a history that should answer it:\n{query}"
        if "model_aliases" in query:
            assert rows[0]["run_id"] in runs and rows[0]["version"] >= 1
        if "early_stopped" in query:
            assert {row["stopped_epoch"] for row in rows} == {2}
        if "batch_metrics" in query:  # 300 samples, 10 batches of 32 per epoch, every 5th: 4, 9, 14, …
            assert [row["step"] for row in rows] == list(range(4, 30, 5))
    # The README's `fitstream runs [--status S]`, and --name.
    listed = json.loads(run_cli("runs", "--status", "early_stopped", "--json", env_extra=env).stdout)
    assert sorted(r["run_id"] for r in listed) == sorted(runs)
    assert json.loads(run_cli("runs", "--status", "failed", "--json", env_extra=env).stdout) == []
    assert sorted(
        r["run_id"]
        for r in json.loads(run_cli("runs", "--name", "digits-mlp", "--json", env_extra=env).stdout)
    ) == sorted(runs)
    assert json.loads(run_cli("runs", "--name", "someone-else", "--json", env_extra=env).stdout) == []


def test_a_query_may_start_with_a_comment_or_come_from_standard_input(settings, engine, database_url):
    import os
    import subprocess
    import sys

    if database_url.startswith("postgresql"):
        pytest.skip("argument parsing does not depend on the database; checked once, on SQLite")
    env = settings_env(settings)
    commented = run_cli("sql", "-- how many runs?\nSELECT count(*) AS n FROM runs", "--json", env_extra=env)
    assert json.loads(commented.stdout) == [{"n": 0}]
    piped = subprocess.run(
        [sys.executable, "-m", "pipeline.cli.main", "sql", "-", "--csv"],
        input="SELECT 41 + 1 AS answer\n",
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        cwd=REPO,
        timeout=60,
    )
    assert piped.returncode == 0 and piped.stdout.split() == ["answer", "42"], piped.stderr


def test_db_upgrade_and_current_as_commands_on_an_empty_database(tmp_path, database_url):
    from pipeline.db.migrate import head_revision

    env = {"FITSTREAM_DATABASE_URL": database_url, "FITSTREAM_HOME": str(tmp_path / "home")}
    before = run_cli("db", "current", env_extra=env)
    assert before.stdout.split() == ["current:", "(none)", "head:", head_revision()], before.stdout
    run_cli("db", "upgrade", env_extra=env)
    again = run_cli("db", "upgrade", env_extra=env)  # a second upgrade changes nothing and says so calmly
    assert again.returncode == 0
    current = run_cli("db", "current", env_extra=env)
    assert current.stdout.split() == ["current:", head_revision(), "head:", head_revision()], current.stdout
    tables = json.loads(run_cli("sql", "SELECT count(*) AS n FROM runs", "--json", env_extra=env).stdout)
    assert tables == [{"n": 0}]

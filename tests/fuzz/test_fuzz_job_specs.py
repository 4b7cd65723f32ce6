"""Issue 10, fuzzing: 500 generated job specs (``ci`` profile; see ``fuzzing.py``) through the
validation ``fitstream submit`` runs before it queues anything — the file read as YAML or JSON
(``load_spec_text``), the references checked against the deployment (``check_importable``), a job's
own alert rules against the rules file (``check_job_alerts``) — and a handful through the real
``fitstream submit``.

Each spec is a valid one with a few keys changed (a wrong value, a misspelt or unknown key, a
section where a value goes, a required key removed, megabytes of text, NaN, a date), or raw text
(not YAML, nested thousands deep, YAML aliases that stand for billions of values). It is accepted,
or refused with a ``JobSpecError`` whose every problem names the key it is about — never another
exception. An accepted spec is written out as the ``run_queued`` event carries it and read back
the same.
"""

from __future__ import annotations

import copy
import json
import uuid
from typing import Any

import pytest
import redis
import yaml
from hypothesis import given
from hypothesis import strategies as st

from pipeline import events as ev
from pipeline.config import Settings
from pipeline.jobs import (
    JobSpec,
    JobSpecError,
    check_importable,
    load_spec_text,
    parse_spec,
    spec_to_json,
)
from tests.conftest import run_cli, settings_env
from tests.fuzz.fuzzing import examples, fuzz_settings
from tests.fuzz.stream_messages import long_texts, text
from workers.submit import check_job_alerts

ALLOWED = ("examples",)
MONITORS = {"val_loss": "min", "loss": "min", "val_accuracy": "max", "accuracy": "max", "val_auc": "max"}
REFERENCES = [
    "examples.digits:build_model",
    "examples.digits:load_data",
    "examples.breast_cancer:build_model",
    "examples.breast_cancer:load_data",
]
RULES_FILE = """
channels:
  team: {type: slack, url_env: FUZZ_SLACK_URL}
rules:
  - {name: global-diverged, nan: loss, channels: [team]}
"""
#: Problems about the spec as a whole (they name no key: there is none to name).
WHOLE_SPEC = (
    "not valid YAML/JSON",
    "must be a mapping",
    "nested more than",
    "stands for more than",
    "contains itself",
)

# -- valid specs ---------------------------------------------------------------------------------
monitored = st.sampled_from(sorted(MONITORS)).flatmap(
    lambda m: st.fixed_dictionaries(
        {"monitor": st.just(m)}, optional={"mode": st.sampled_from(["auto", MONITORS[m]])}
    )
)


def _with(base: st.SearchStrategy[dict], **optional: st.SearchStrategy[Any]) -> st.SearchStrategy[dict]:
    return st.builds(lambda a, b: {**a, **b}, base, st.fixed_dictionaries({}, optional=optional))


references = st.sampled_from(REFERENCES) | st.builds(
    lambda fn, kwargs: {"fn": fn, "kwargs": kwargs},
    st.sampled_from(REFERENCES),
    st.dictionaries(text(10, 1), st.integers() | text(10), max_size=3),
)
valid_specs = st.fixed_dictionaries(
    {
        "name": st.from_regex(r"[\w.:-]{1,20}( [\w.:-]{1,10})?", fullmatch=True),
        "model": references,
        "data": references,
    },
    optional={
        "fit": st.fixed_dictionaries(
            {},
            optional={
                "epochs": st.integers(1, 100_000),
                "batch_size": st.none() | st.integers(1, 4096),
                "validation_split": st.none() | st.floats(0.01, 0.99),
                "shuffle": st.booleans(),
                "verbose": st.sampled_from([0, 1, 2]),
            },
        ),
        "early_stopping": st.booleans()
        | _with(
            monitored,
            patience=st.integers(0, 50),
            min_delta=st.floats(0, 1),
            restore_best_weights=st.booleans(),
        ),
        "checkpoint": st.booleans()
        | _with(
            monitored,
            save_best_only=st.booleans(),
            save_freq=st.just("epoch") | st.integers(1, 1000),
            filename=st.sampled_from(["best.keras", "ckpt-{epoch:02d}.keras", "sub/dir/w.weights.h5"]),
        ),
        "reduce_lr": _with(
            monitored, factor=st.floats(0.01, 0.99), patience=st.integers(0, 20), cooldown=st.integers(0, 5)
        ),
        "lr_schedule": st.sampled_from(
            [
                {"kind": "step", "every": 3, "factor": 0.5},
                {"kind": "exponential", "factor": 0.9},
                {"kind": "cosine", "total_epochs": 40},
            ]
        ),
        "terminate_on_nan": st.booleans(),
        "csv_log": st.booleans(),
        "tensorboard": st.booleans(),
        "batch_events_every": st.integers(1, 1000),
        "queue": st.from_regex(r"[A-Za-z0-9_.:-]{1,20}", fullmatch=True),
        "tags": st.dictionaries(text(10, 1), text(20), max_size=3),
        "seed": st.integers(0, 2**32 - 1),
        "promote": st.fixed_dictionaries(
            {}, optional={"on_early_stop": st.booleans(), "on_complete": st.booleans(), "name": text(20, 1)}
        ),
        "alerts": st.lists(
            st.sampled_from(
                [
                    {"name": "job-diverged", "nan": "loss", "channels": ["team"]},
                    {"name": "job-high", "metric": "val_loss", "above": 0.5, "channels": ["team"]},
                ]
            ),
            max_size=1,
        ),
    },
)

# -- what gets changed ----------------------------------------------------------------------------
KNOWN_KEYS = [
    "name",
    "model",
    "data",
    "fit",
    "early_stopping",
    "checkpoint",
    "reduce_lr",
    "lr_schedule",
    "terminate_on_nan",
    "csv_log",
    "tensorboard",
    "callbacks",
    "batch_events_every",
    "queue",
    "tags",
    "alerts",
    "promote",
    "seed",
]
SECTION_KEYS = {
    "fit": ["epochs", "batch_size", "validation_split", "shuffle", "steps_per_epoch", "verbose"],
    "early_stopping": [
        "monitor",
        "mode",
        "patience",
        "min_delta",
        "baseline",
        "start_from_epoch",
        "restore_best_weights",
    ],
    "checkpoint": ["monitor", "mode", "save_best_only", "save_weights_only", "save_freq", "filename"],
    "reduce_lr": ["monitor", "mode", "factor", "patience", "min_delta", "cooldown", "min_lr"],
    "lr_schedule": ["kind", "fn", "every", "factor", "total_epochs", "min_lr"],
    "model": ["fn", "kwargs"],
    "data": ["fn", "kwargs"],
    "promote": ["on_early_stop", "on_complete", "force", "name", "save_restored_model"],
}
DELETE = object()


def _misspelt(key: str, index: int) -> str:
    i = index % len(key)
    return key[:i] + key[i + 1 :] if len(key) > 2 else key + "s"


keys = (
    st.sampled_from(KNOWN_KEYS)
    | st.builds(_misspelt, st.sampled_from(KNOWN_KEYS), st.integers(0, 30))
    | text(12, 1)
)
values = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | text(30)
    | st.sampled_from(
        [
            "examples.os:system",
            "os:system",
            "examples.digits:build_modle",
            "../../x.keras",
            "/tmp/x.keras",
            "val_acc",
            "max",
        ]
    )
    | long_texts
    | st.dates()
    | st.lists(st.integers() | text(5), max_size=3)
    | st.dictionaries(text(8), st.integers() | text(5), max_size=3)
)
changes = st.lists(
    st.one_of(
        st.tuples(keys, values),  # a top-level key
        st.sampled_from(sorted(SECTION_KEYS)).flatmap(  # a key inside a section
            lambda section: st.tuples(
                st.just(section), st.sampled_from(SECTION_KEYS[section]) | text(10, 1), values
            )
        ),
        st.tuples(st.sampled_from(["name", "model", "data"]), st.just(DELETE)),
    ),
    max_size=3,
)
BILLION_LAUGHS = (
    "name: t\nmodel: {{fn: 'examples.digits:build_model', kwargs: {{{}}}}}\ndata: examples.digits:load_data\n"
)
raw_texts = st.one_of(
    text(200),
    st.sampled_from([33, 200, 20_000]).map(
        lambda d: (
            "name: t\nmodel: examples.digits:build_model\ndata: examples.digits:load_data\ntags: "
            + "[" * d
            + "]" * d
        )
    ),
    st.integers(3, 9).map(
        lambda depth: BILLION_LAUGHS.format(
            ", ".join(
                ['a0: &a0 ["lol"]']
                + [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, depth + 1)]
            )
        )
    ),
    st.just(
        "name: t\nmodel: {fn: 'examples.digits:build_model', kwargs: {a: &a [*a]}}\ndata: examples.digits:load_data\n"
    ),
    st.just(
        "name: !!python/object/apply:os.system [echo pwned]\nmodel: examples.digits:build_model\ndata: examples.digits:load_data\n"
    ),
    st.just(
        'name: t\nmodel: examples.digits:build_model\ndata: examples.digits:load_data\ntags: {team: "a\\0b"}\n'
    ),
)


def _apply(spec: dict[str, Any], edits: list[tuple]) -> list[tuple[str, ...]]:
    """Make the edits; returns the key paths they touched."""
    touched = []
    for edit in edits:
        if len(edit) == 2 and edit[1] is DELETE:
            spec.pop(edit[0], None)
            touched.append((edit[0],))
        elif len(edit) == 2:
            spec[edit[0]] = edit[1]
            touched.append((edit[0],))
        else:
            section, key, value = edit
            if not isinstance(spec.get(section), dict):
                spec[section] = {}
                touched.append((section,))
            spec[section][key] = value
            touched.append((section, key))
    return touched


def _rendered(path: tuple[str, ...]) -> str:
    """A key path as errors write it: keys joined by dots, a key quoted when it is empty or holds a
    dot or something unprintable."""
    return ".".join(
        p if p and p.isprintable() and "." not in p and p.strip() == p and len(p) <= 80 else repr(p)[:80]
        for p in path
    )


def _names_a_touched_key(problem: str, touched: list[tuple[str, ...]]) -> bool:
    """The problem is about a changed key: at it, at a section holding it, or inside it."""
    for path in touched:
        for n in range(1, len(path) + 1):
            where = _rendered(path[:n])
            if problem.startswith(where + ": ") or (n == len(path) and problem.startswith(where + ".")):
                return True
    return False


def _as_read(key: str, how: str) -> str:
    """``key`` as the validator sees it. (PyYAML writes some line breaks, U+0085, raw and reads them back
    as a space: a PyYAML quirk, not Fitstream's.)"""
    if how != "yaml":
        return key
    return next(iter(yaml.safe_load(yaml.safe_dump({key: 0}, allow_unicode=True))))


def _as_text(spec: dict[str, Any], how: str) -> str:
    if how == "yaml":
        return yaml.safe_dump(spec, allow_unicode=True, sort_keys=False)
    return json.dumps(spec, default=str)


# -- the target -------------------------------------------------------------------------------------
@pytest.fixture
def alert_settings(tmp_path) -> Settings:
    rules = tmp_path / "alerts.yaml"
    rules.write_text(RULES_FILE)
    return Settings(alert_rules=rules, home=tmp_path / "home")


def _validate(text_or_spec: str | dict, settings: Settings) -> JobSpec:
    """What `fitstream submit` checks before queueing, in its order."""
    spec = load_spec_text(text_or_spec) if isinstance(text_or_spec, str) else parse_spec(text_or_spec)
    check_importable(spec, ALLOWED)
    if spec.alerts:
        check_job_alerts(spec, settings)
    return spec


def test_generated_job_specs_are_accepted_or_refused_naming_the_key(alert_settings):
    outcomes: dict[str, int] = {"accepted": 0, "refused": 0}

    edited_specs = st.tuples(valid_specs, changes, st.sampled_from(["dict", "yaml", "json"]))

    @fuzz_settings(examples("job_specs"))
    @given(
        st.integers(0, 9).flatmap(lambda i: raw_texts if i == 9 else edited_specs)
    )  # one in ten is raw text
    def check(case):  # type: ignore[no-untyped-def]
        if isinstance(case, str):
            source, touched = case, None
        else:
            spec, edits, how = case
            spec = copy.deepcopy(spec)  # sampled_from hands out the same dicts every time
            touched = [tuple(_as_read(key, how) for key in path) for path in _apply(spec, edits)]
            source = spec if how == "dict" else _as_text(spec, how)
        try:
            accepted = _validate(source, alert_settings)
        except JobSpecError as exc:
            outcomes["refused"] += 1
            assert exc.problems and "Traceback" not in str(exc)
            for problem in exc.problems:
                assert len(problem) <= 600, problem[:700]
                if touched is not None and not problem.startswith(WHOLE_SPEC):
                    assert _names_a_touched_key(problem, touched), (
                        f"{problem[:300]!r} names no key that was changed ({touched})"
                    )
            if touched == []:
                raise AssertionError(f"an unchanged valid spec was refused: {exc}") from exc
            return
        outcomes["accepted"] += 1
        # Accepted: it goes out as submit writes it (job record, run_queued event) and reads back the same.
        written = spec_to_json(accepted)
        assert spec_to_json(parse_spec(json.loads(written))) == written
        queued = ev.build(
            ev.RunQueued,
            run_id="r",
            seq=0,
            name=accepted.name,
            queue=accepted.queue,
            spec=accepted.model_dump(mode="json", by_alias=True),
            tags=accepted.tags,
        )
        assert ev.encode(ev.decode(ev.encode(queued))) == ev.encode(queued)  # as JSON: NaN == NaN there

    check()
    print(f"job specs: {outcomes}")
    assert sum(outcomes.values()) == examples("job_specs")
    # Both outcomes in earnest: the generator is neither all valid nor all broken.
    assert min(outcomes.values()) >= examples("job_specs") // 10, outcomes


# -- a handful through the real `fitstream submit` ----------------------------------------------------
CLI_SPECS = [
    (
        "unknown key",
        "name: t\nmodel: examples.digits:build_model\ndata: examples.digits:load_data\nfit: {epoch: 3}\n",
        "fit.epoch",
    ),
    (
        "not allowed",
        "name: t\nmodel: os:system\ndata: examples.digits:load_data\n",
        "model: module 'os' is not allowed",
    ),
    (
        "billion laughs",
        BILLION_LAUGHS.format(
            ", ".join(
                ['a0: &a0 ["lol"]']
                + [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 10)]
            )
        ),
        "stands for more than",
    ),
    ("nested 20,000 deep", "name: t\ntags: " + "[" * 20_000 + "]" * 20_000 + "\n", "nested more than"),
    ("a NUL in the file", "name: t\x00\n", "#x0000"),
    (
        "a NUL in a tag",
        'name: t\nmodel: examples.digits:build_model\ndata: examples.digits:load_data\ntags: {a: "x\\0y"}\n',
        "tags.a: text holds U+0000",
    ),
    (
        "a 1 MB queue name",
        "name: t\nmodel: examples.digits:build_model\ndata: examples.digits:load_data\nqueue: "
        + "q" * 2**20
        + "\n",
        "queue: not a valid queue name",
    ),
    ("python tag", "name: !!python/object/apply:os.system [echo pwned]\n", "not valid YAML/JSON"),
    ("not UTF-8", b"name: \xff\xfe\n", "not UTF-8 text"),
    (
        "a date for a name",
        "name: 2024-01-01\nmodel: examples.digits:build_model\ndata: examples.digits:load_data\n",
        "name: Input should be a valid string",
    ),
    (
        "a job alert on an unknown channel",
        "name: t\nmodel: examples.digits:build_model\ndata: examples.digits:load_data\nalerts: [{name: a, nan: loss, channels: [pager]}]\n",
        "unknown channel(s) pager",
    ),
]


@pytest.fixture
def submit_settings(redis_url, stream_name, tmp_path) -> Settings:
    """Submitting touches Redis only (the history database is the recorder's): one run, no database variants."""
    return Settings(
        redis_url=redis_url,
        stream=stream_name,
        home=tmp_path / "home",
        database_url=f"sqlite:///{tmp_path / 'unused.db'}",
    )


def _queued_anything(client: redis.Redis, settings: Settings, queue: str) -> bool:
    return bool(client.exists(settings.stream) or client.llen(queue))


@pytest.mark.parametrize(("case", "content", "expected"), CLI_SPECS, ids=[c[0] for c in CLI_SPECS])
def test_bad_specs_through_the_real_cli_give_one_clear_error_and_queue_nothing(
    case, content, expected, submit_settings, tmp_path
):
    settings = submit_settings
    path = tmp_path / "job.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    rules = tmp_path / "alerts.yaml"
    rules.write_text(RULES_FILE)
    queue = f"fuzz-{uuid.uuid4().hex[:8]}"
    env = {
        **settings_env(settings),
        "FITSTREAM_ALERT_RULES": str(rules),
        "FITSTREAM_ALLOWED_MODULES": "examples",
    }
    result = run_cli("submit", str(path), "--queue", queue, env_extra=env, check=False)
    assert result.returncode == 1, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr and expected in result.stderr, result.stderr[-2000:]
    assert len(result.stderr) < 3000 and result.stdout == ""
    client = redis.Redis.from_url(settings.redis_url)
    assert not _queued_anything(client, settings, queue)


def test_a_valid_spec_through_the_real_cli_is_queued_once(submit_settings, tmp_path):
    """The counterpart: the same command queues a valid spec (so the refusals above are the spec's doing)."""
    settings = submit_settings
    path = tmp_path / "job.yaml"
    path.write_text(
        "name: fuzz-ok\nmodel: examples.digits:build_model\ndata: examples.digits:load_data\ntags: {a: 'x'}\n"
    )
    queue = f"fuzz-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(settings.redis_url)
    try:
        result = run_cli(
            "submit", str(path), "--queue", queue, "--json", env_extra=settings_env(settings), check=False
        )
        assert result.returncode == 0, result.stderr
        run_id = json.loads(result.stdout)["run_id"]
        [(_id, fields)] = client.xrange(settings.stream)
        assert ev.decode(fields).run_id == run_id and client.llen(queue) == 1
    finally:
        client.delete(queue)

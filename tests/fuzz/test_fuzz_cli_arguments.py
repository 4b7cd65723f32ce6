"""Issue 10, fuzzing: generated arguments through the real ``fitstream`` commands that take them —
run ids (``show``, ``cancel``, ``promote``, ``watch``), model references (``models show
name@alias``, ``name@7``), ``alias``, dead-letter ids and durations, job file paths (``..``,
absolute, missing, a directory, not UTF-8) — each in its own process (48 in the ``ci`` profile,
split between the SQLite and the PostgreSQL variant, two at a time).

Every invocation ends with exit code 1 or 2 and one clear line saying what is wrong (listing
commands may find nothing and exit 0), never a traceback; and nothing is written: no row in any
table, no stream entry, no Redis key, no file.

NUL cannot be passed in argv; it goes through the CLI's own parser in-process (click's runner),
and through the Python functions the commands call.
"""

from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from pipeline.bus import EventStream
from pipeline.cli.main import cli
from pipeline.config import get_settings
from pipeline.db.models import Base
from pipeline.db.queries import get_run
from pipeline.dead_letters import get_dead_letter, parse_duration
from pipeline.errors import FitstreamError
from pipeline.job_records import KEY_PREFIX
from pipeline.jobs import load_spec
from tests.conftest import run_cli, settings_env
from tests.fuzz.fuzzing import examples, fuzz_settings
from tests.fuzz.stream_messages import text

# -- arguments -----------------------------------------------------------------------------------
NASTY = [
    "",
    "-",
    "..",
    "../..",
    "../../etc/passwd",
    "/etc/passwd",
    "/",
    "%",
    "_",
    "*",
    "[/bold]",
    "[red]x",
    "' OR 1=1 --",
    "a" * 5000,
    "🚀",
    "ünïcødé",
    "caf\udce9",
    "\udcff\udcfe",
    " leading space",
    "line\nbreak",
    "tab\there",
]
run_ids = st.sampled_from(NASTY) | st.uuids().map(lambda u: u.hex) | text(40, 1)
numbers = st.sampled_from(
    ["0", "-1", "7", "2147483648", "99999999999999999999", "1e3", "nan", "inf", "0x10", "²", " 7", ""]
) | st.integers().map(str)
names = st.sampled_from(["digits-mlp", "a" * 300, "", "x@y"]) | run_ids
references = st.one_of(
    st.builds(
        lambda n, a: f"{n}@{a}",
        names,
        st.sampled_from(["champion", "latest", "", "@", "7", "0", "99999999999999999999", "²", "-1"])
        | text(10),
    ),
    names,
)
letter_ids = (
    st.sampled_from(
        [
            "1-0",
            "0-0",
            "99999999999999999999-0",
            "1-99999999999999999999999",
            "18446744073709551615-18446744073709551615",
            "-1-0",
            "1795664000000-0",
        ]
    )
    | run_ids
)
durations = st.sampled_from(
    ["30m", "0s", "7d", "99999w", "9" * 400 + "d", "1.5h", "-1d", "1e9d", "soon", "", "12 h"]
) | text(8)
paths = st.sampled_from(
    [
        "../x.yaml",
        "../../etc/passwd",
        "/etc/passwd",
        "/etc",
        "/nonexistent/job.yaml",
        "..",
        "/",
        "job\udcff.yaml",
        "x" * 5000,
    ]
) | text(30, 1)
#: One strategy per command; each example draws one invocation of every command (a one_of would
#: favour the first ones). Job file paths get two: the nasty ones, and generated text.
COMMANDS = [
    st.tuples(st.just("show"), run_ids),
    st.tuples(st.just("cancel"), run_ids),
    st.tuples(st.just("promote"), run_ids),
    st.tuples(
        st.just("watch"), run_ids, st.just("--timeout"), st.sampled_from(["0.2", "0", "-1", "nan", "x"])
    ),
    st.tuples(st.just("models"), st.just("show"), references),
    st.tuples(st.just("models"), names),
    st.tuples(st.just("alias"), names, numbers, names),
    st.tuples(st.just("runs"), st.sampled_from(["--name", "--limit", "--status"]), names | numbers),
    st.tuples(st.just("dead-letters"), st.sampled_from(["show", "replay"]), letter_ids),
    st.tuples(
        st.just("dead-letters"), st.sampled_from(["purge", "list"]), st.just("--older-than"), durations
    ).map(lambda args: args if args[1] == "purge" else (*args[:2], "--limit", args[3])),
    st.tuples(st.just("submit"), paths),
    st.tuples(
        st.just("submit"), text(30, 1) | st.sampled_from(["../" * 50 + "etc/passwd", "/proc/self/environ"])
    ),
]
#: What may succeed: looking up a list that comes back empty, purging nothing.
MAY_SUCCEED = {("models",), ("runs",), ("dead-letters", "list"), ("dead-letters", "purge")}


@functools.lru_cache(maxsize=1)
def generated_invocations() -> tuple[tuple[str, ...], ...]:
    out: list[tuple[str, ...]] = []

    @fuzz_settings(examples("cli_arguments") // len(COMMANDS))
    @given(st.tuples(*COMMANDS))
    def generate(one_of_each):  # type: ignore[no-untyped-def]
        out.extend(one_of_each)

    generate()
    return tuple(out)


# -- what "nothing written" means ------------------------------------------------------------------
def _snapshot(engine: sa.Engine, client: redis.Redis, stream: str, home: Path, run_ids: list[str]) -> dict:
    with engine.connect() as conn:
        rows = {
            t: conn.execute(sa.select(sa.func.count()).select_from(Base.metadata.tables[t])).scalar()
            for t in sorted(Base.metadata.tables)
        }
    job_keys = [
        f"{KEY_PREFIX}:{kind}:{run}" for run in run_ids for kind in ("job", "state", "cancel", "attempts")
    ]
    return {
        "rows": rows,
        "redis keys": sorted(client.scan_iter(match=f"{stream}*")),
        "stream entries": {
            k.decode(): client.xlen(k) for k in client.scan_iter(match=f"{stream}*", _type="stream")
        },
        "job keys": [k for k in job_keys if client.exists(k.encode("utf-8", "surrogateescape"))],
        "files": sorted(str(p.relative_to(home)) for p in home.rglob("*")) if home.exists() else [],
    }


def _env(settings, tmp_path: Path) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {
        **settings_env(settings),
        "FITSTREAM_MODEL_STORE": str(tmp_path / "home" / "model-store"),
        "FITSTREAM_PROMOTER_LOAD_CHECK": "false",  # no TensorFlow helper for promote
        "FITSTREAM_ALLOWED_MODULES": "examples",
        "FITSTREAM_ALERT_RULES": "",
    }


def _one_clear_error(stderr: str) -> str | None:
    """The error of a failed command: exactly one line that starts with "error:" (ours) or "Error:"
    (click's), followed by nothing but its indented list of problems (a job file's) — or None."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    starts = [i for i, line in enumerate(lines) if line.startswith(("error: ", "Error: "))]
    if len(starts) != 1 or not all(line.startswith("  - ") for line in lines[starts[0] + 1 :]):
        return None
    return lines[starts[0]]


def test_generated_arguments_give_one_clear_error_and_write_nothing(settings, engine, database_url, tmp_path):
    # Half the generated invocations run against each database.
    mine = generated_invocations()[database_url.startswith("postgresql") :: 2]
    assert len(mine) >= examples("cli_arguments") // 2
    (tmp_path / "home").mkdir(exist_ok=True)
    client = redis.Redis.from_url(settings.redis_url)
    EventStream(settings=settings).ensure_group("recorder")  # a stream and a group to leave alone
    every_run_id = [a for args in mine for a in args]
    before = _snapshot(engine, client, settings.stream, tmp_path / "home", every_run_id)
    env = _env(settings, tmp_path)
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda args: (args, run_cli(*args, env_extra=env, check=False)), mine))
    problems = []
    for args, result in results:
        shown = " ".join(repr(a)[:60] for a in args)
        if "Traceback" in result.stderr or result.returncode not in (0, 1, 2):
            problems.append(f"fitstream {shown}: exit {result.returncode}\n{result.stderr[-1500:]}")
        elif result.returncode == 0 and args[:1] not in MAY_SUCCEED and args[:2] not in MAY_SUCCEED:
            problems.append(f"fitstream {shown} succeeded:\n{result.stdout[-300:]}{result.stderr[-300:]}")
        elif result.returncode != 0 and _one_clear_error(result.stderr) is None:
            problems.append(
                f"fitstream {shown}: exit {result.returncode} without one clear error line:\n{result.stderr[-1500:]}"
            )
    assert not problems, f"{len(problems)} of {len(mine)}:\n" + "\n".join(problems[:10])
    assert _snapshot(engine, client, settings.stream, tmp_path / "home", every_run_id) == before
    assert sum(r.returncode != 0 for _a, r in results) >= len(mine) // 2  # mostly refusals, as they should be


# -- NUL: through the CLI's parser, and the Python functions behind the commands ----------------------
NUL_COMMANDS = [
    ("show", "a\x00b"),
    ("cancel", "a\x00b"),
    ("promote", "a\x00b"),
    ("watch", "a\x00b", "--timeout", "0.1"),
    ("models", "show", "x\x00@champion"),
    ("alias", "x\x00", "1", "y"),
    ("dead-letters", "show", "1-0\x00"),
    ("dead-letters", "purge", "--older-than", "1d\x00"),
    ("submit", "/tmp/job\x00.yaml"),
    ("runs", "--name", "\x00"),
]


@pytest.mark.parametrize("args", NUL_COMMANDS, ids=[a[0] + "-" + a[1] for a in NUL_COMMANDS])
def test_nul_in_an_argument_is_refused_by_the_parser(args, redis_url, stream_name, tmp_path, monkeypatch):
    # Settings of the test's own, should a command get past the parser.
    for key, value in {
        "FITSTREAM_REDIS_URL": redis_url,
        "FITSTREAM_STREAM": stream_name,
        "FITSTREAM_HOME": str(tmp_path),
        "FITSTREAM_DATABASE_URL": f"sqlite:///{tmp_path / 'h.db'}",
        "FITSTREAM_PROMOTER_LOAD_CHECK": "false",
    }.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(cli, list(args))
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), (
        result.exit_code,
        result.exception,
        result.output,
    )
    assert "holds a NUL character" in result.output.splitlines()[-1]


def test_nul_through_the_python_functions_the_commands_call(settings, engine):
    stream = EventStream(settings=settings)
    calls = [
        lambda: get_run(engine, "a\x00b"),
        lambda: load_spec("job\x00.yaml"),
        lambda: get_dead_letter(stream, "1-0\x00"),
        lambda: parse_duration("1d\x00"),
    ]
    for call in calls:
        with pytest.raises(FitstreamError) as info:  # one of Fitstream's errors, with a message; nothing else
            call()
        assert str(info.value)

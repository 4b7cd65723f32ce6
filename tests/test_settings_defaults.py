"""The README's settings table is the truth: every Settings field has a row, and every default the
table shows is the one a process gets with no FITSTREAM_* variable set (issue 11)."""

from __future__ import annotations

import re

import pytest

from pipeline.config import Settings
from tests.conftest import REPO

README = (REPO / "README.md").read_text()
ROW = re.compile(r"^\| `(FITSTREAM_[A-Z_]+)` \| (.+?) \| .+\|$", re.M)
TEST_ONLY = {"FITSTREAM_TEST_POSTGRES_URL"}


def table() -> dict[str, str]:
    section = README.split("## Settings", 1)[1].split("\n## ", 1)[0]
    return dict(ROW.findall(section))


@pytest.fixture
def no_fitstream_env(monkeypatch, tmp_path):
    import os

    for name in list(os.environ):
        if name.startswith("FITSTREAM_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_every_setting_has_a_row_and_every_row_a_setting():
    documented = set(table()) - TEST_ONLY
    fields = {f"FITSTREAM_{name.upper()}" for name in Settings.model_fields}
    assert documented == fields, (
        f"undocumented: {sorted(fields - documented)}; not settings: {sorted(documented - fields)}"
    )


def test_the_defaults_the_table_shows_are_the_defaults(no_fitstream_env):
    settings = Settings()
    cwd = no_fitstream_env
    for variable, shown in table().items():
        if variable in TEST_ONLY:
            continue
        value = getattr(settings, variable.removeprefix("FITSTREAM_").lower())
        literal = re.match(r"^`([^`]*)`", shown)
        if shown.startswith("—"):
            assert value is None, variable
        elif variable == "FITSTREAM_BROKER_URL":
            assert value is None and settings.celery_broker_url == settings.redis_url
        elif variable == "FITSTREAM_READER_DATABASE_URL":
            assert value is None  # derived from the database URL where it is needed
        elif literal is None:
            pytest.fail(f"{variable}: the table shows no default literal: {shown!r}")
        else:
            expected = (
                literal.group(1).replace("$PWD", str(cwd)).replace("$FITSTREAM_HOME", str(settings.home))
            )
            if variable == "FITSTREAM_MODEL_STORE":
                assert settings.model_store_url == expected, variable
            elif isinstance(value, bool):
                assert str(value).lower() == expected, variable
            elif isinstance(value, tuple):  # a list setting: comma-separated in its variable
                assert ",".join(value) == expected, variable
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                assert value == float(expected), variable
            else:
                assert str(value) == expected, variable

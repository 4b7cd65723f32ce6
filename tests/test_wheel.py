"""The wheel `pip install fitstream` gets: Fitstream's own top-level packages and nothing else.

The repository keeps `migrations/` and `examples/` at its top level (the design fixes the layout);
the wheel ships them inside `pipeline` (`pipeline.migrations`, `pipeline.examples`), where they
cannot collide with another project's `migrations` or `examples` in site-packages.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

from tests.conftest import REPO

OWN_PACKAGES = {"pipeline", "workers", "alerts"}
SOURCES = ("pyproject.toml", "README.md", "pipeline", "workers", "alerts", "migrations", "examples")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built offline from a copy of the tree (so that no build/ lands in the checkout)."""
    source = tmp_path_factory.mktemp("source")
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(path, source / name)
    out = tmp_path_factory.mktemp("dist")
    command = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "-w",
        str(out),
        str(source),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (built,) = out.glob("fitstream-*.whl")
    return built


def _expected_files() -> set[str]:
    """Every file the wheel must carry, at its installed path."""
    expected = set()
    for package in OWN_PACKAGES:
        for path in (REPO / package).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts:
                expected.add(path.relative_to(REPO).as_posix())
    for directory, installed in (("migrations", "pipeline/migrations"), ("examples", "pipeline/examples")):
        for path in (REPO / directory).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts:
                expected.add(f"{installed}/{path.relative_to(REPO / directory).as_posix()}")
    return expected


def test_the_wheel_holds_only_fitstreams_packages_and_all_of_them(wheel: Path):
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top_level == OWN_PACKAGES
    missing = _expected_files() - set(names)
    assert missing == set(), f"the wheel misses {sorted(missing)} (pyproject.toml [tool.setuptools] packages)"


def test_scikit_learn_is_an_extra_not_a_dependency(wheel: Path):
    with zipfile.ZipFile(wheel) as archive:
        (metadata_name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        metadata = Parser().parsestr(archive.read(metadata_name).decode())
    requires = metadata.get_all("Requires-Dist")
    sklearn = [r for r in requires if r.lower().startswith("scikit-learn")]
    assert sklearn and all("extra ==" in r for r in sklearn), sklearn
    assert any('extra == "examples"' in r for r in sklearn)
    assert "examples" in metadata.get_all("Provides-Extra")


def test_the_installed_wheel_finds_its_migrations_and_examples(wheel: Path, tmp_path: Path):
    """Installed elsewhere (not the checkout), the schema migrates and the examples import; the
    generic names `migrations` and `examples` are not importable."""
    site = tmp_path / "site"
    install = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--no-deps",
        "--no-index",
        "--target",
        str(site),
        str(wheel),
    ]
    result = subprocess.run(install, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    database = tmp_path / "history.db"
    script = f"""
import importlib.util, pipeline
assert pipeline.__file__.startswith({str(site)!r}), pipeline.__file__
from pipeline.db import migrate
migrate.upgrade("sqlite:///{database}")
import sqlalchemy as sa
engine = sa.create_engine("sqlite:///{database}")
with engine.connect() as conn:
    version = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
assert version == migrate.head_revision(), version
from pipeline.examples import digits
assert callable(digits.build_model)
assert importlib.util.find_spec("migrations") is None and importlib.util.find_spec("examples") is None
print("installed ok", version)
"""
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120
    )
    assert result.returncode == 0 and "installed ok" in result.stdout, result.stdout + result.stderr[-3000:]

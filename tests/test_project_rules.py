"""Rules of the codebase that are easy to break silently: dependency direction,
no TensorFlow where it does not belong, a valid compose file."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def test_pipeline_never_imports_workers_or_alerts():
    offenders = [
        f"{path.relative_to(REPO)} imports {name}"
        for path in (REPO / "pipeline").rglob("*.py")
        for name in _imports(path)
        if name.split(".")[0] in {"workers", "alerts"}
    ]
    assert offenders == []


def test_tensorflow_only_where_training_happens():
    # model_registry imports Keras only inside load_model (call time); the import-time test below checks that.
    # ARCHITECTURE.md: Keras lives in pipeline/callbacks/ and pipeline/training.py (and at call time in demo/model loading).
    # promotion/load_check.py imports Keras only inside its helper process (the promoter's own process never does).
    allowed = {
        REPO / "pipeline" / "training.py",
        REPO / "pipeline" / "cli" / "demo.py",
        REPO / "pipeline" / "model_registry.py",
        REPO / "pipeline" / "promotion" / "load_check.py",
    }
    offenders = [
        str(path.relative_to(REPO))
        for path in (REPO / "pipeline").rglob("*.py")
        if path not in allowed
        and (REPO / "pipeline" / "callbacks") not in path.parents
        and any(n.split(".")[0] in {"tensorflow", "keras"} for n in _imports(path))
    ]
    assert offenders == []


@pytest.mark.parametrize(
    "module",
    [
        "pipeline",
        "pipeline.cli.main",
        "pipeline.consumers.recorder",
        "pipeline.callbacks.spool",
        "pipeline.bus",
        "pipeline.jobs",
        "pipeline.store",
        "pipeline.consumers.promoter",
        "pipeline.promotion.load_check",
        "pipeline.consumers.pruner",
        "pipeline.sweeps",
        "pipeline.db.experiments",
        "pipeline.cli.experiments",
        "pipeline.model_registry",
        "workers.celery_app",
        "workers.tasks",
        "workers.cli",
        "alerts.engine",
        "alerts.cli",
    ],
)
def test_cli_and_consumers_start_without_tensorflow(module):
    code = f"import sys, {module}; bad = [m for m in ('tensorflow', 'keras') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, f"{module} imported {result.stdout.strip()}"


def test_docker_compose_file_is_valid(tmp_path):
    compose = shutil.which("docker-compose")
    if compose is None:
        pytest.skip("docker-compose is not installed (./dev test installs it on Debian)")
    # The stack refuses to start without its secrets (tests/test_compose_security.py): give it some.
    import yaml

    for name in yaml.safe_load((REPO / "docker-compose.yml").read_text())["secrets"]:
        (tmp_path / name).write_text("not-a-real-secret\n")
    env = {**os.environ, "FITSTREAM_SECRETS_DIR": str(tmp_path)}
    result = subprocess.run(
        [compose, "-f", str(REPO / "docker-compose.yml"), "config", "-q"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    services = subprocess.run(
        [compose, "-f", str(REPO / "docker-compose.yml"), "config", "--services"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
    ).stdout.split()
    assert {"redis", "postgres", "migrate", "recorder", "worker-gpu0", "flower"} <= set(services)


def test_every_command_the_compose_file_names_exists():
    import yaml

    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    commands = [
        (name, service["command"])
        for name, service in compose["services"].items()
        if isinstance(service.get("command"), list) and service["command"][0] == "fitstream"
    ]
    assert {name for name, _ in commands} >= {"migrate", "recorder", "worker-gpu0", "alerter", "promoter"}
    for name, command in commands:
        words = [w for w in command[1:] if not w.startswith("-")][:2]
        if words and words[0] in ("worker",):
            words = words[:1]
        probe = subprocess.run(
            [sys.executable, "-m", "pipeline.cli.main", *words[:2], "--help"],
            capture_output=True,
            text=True,
            cwd=REPO,
        )
        assert probe.returncode == 0, (
            f"service {name}: `fitstream {' '.join(words[:2])}` does not exist: {probe.stderr}"
        )
        for option in (w for w in command if w.startswith("--")):
            assert option in probe.stdout, (
                f"service {name}: option {option} unknown to fitstream {' '.join(words[:2])}"
            )
    healthcheck = compose["services"]["worker-gpu0"]["healthcheck"]["test"][1]
    assert "-A workers.celery_app" in healthcheck
    __import__("workers.celery_app")

"""The README's "Production shape", claim by claim, against docker-compose.yml as written.

"`docker-compose.yml` runs Redis (append-only file, `noeviction`), PostgreSQL, a one-shot `migrate`
service, the alerter, a GPU worker per device (NVIDIA device reservation, `CUDA_VISIBLE_DEVICES`),
two recorder replicas, Flower (Celery monitoring) and a shared `runs` volume, with health checks and
restart policies. `pip install "fitstream[cuda]"` pulls TensorFlow's CUDA build." — and what it says
is published, on which ports.

The file is parsed as YAML (anchors and merge keys resolved), so no Docker is needed. What the
containers' scripts do when run (Redis' config, PostgreSQL's roles, Flower's auth) and what must not
be published are checked in ``test_compose_security.py``, and that every command a service runs exists
in ``test_project_rules.py``.
"""

from __future__ import annotations

import importlib.metadata
import re
from typing import Any

import yaml
from packaging.requirements import Requirement

from tests.conftest import REPO

README = (REPO / "README.md").read_text(encoding="utf-8")
SECTION = " ".join(README.split("## Production shape", 1)[1].split("\n## ", 1)[0].split())
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text(encoding="utf-8"))
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
#: Services that run once and exit: the migration, and the `tools` profile's one-off client.
ONE_SHOT = {"migrate", *(name for name, s in SERVICES.items() if "tools" in s.get("profiles", []))}
NUMBERS = {"one": 1, "two": 2, "three": 3, "four": 4}


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


def running(command: list[str]) -> dict[str, dict[str, Any]]:
    """The services whose command starts with ``command``."""
    return {name: s for name, s in SERVICES.items() if s.get("command", [])[: len(command)] == command}


def volume_mounts(service: dict[str, Any]) -> dict[str, str]:
    """{source: target} of a service's volumes (short syntax)."""
    return dict(str(v).split(":")[:2] for v in service.get("volumes", []))


def test_the_readme_sentence_is_the_one_these_tests_check():
    # If the README's list changes, these tests must change with it.
    assert SECTION.startswith(
        "`docker-compose.yml` runs Redis (append-only file, `noeviction`), PostgreSQL, a one-shot `migrate` service, "
        "the alerter, a GPU worker per device (NVIDIA device reservation, `CUDA_VISIBLE_DEVICES`), two recorder "
        "replicas, Flower (Celery monitoring) and a shared `runs` volume, with health checks and restart policies. "
        '`pip install "fitstream[cuda]"` pulls TensorFlow\'s CUDA build.'
    )


def test_redis_runs_on_the_config_that_turns_on_the_append_only_file_and_noeviction():
    redis = SERVICES["redis"]
    assert redis["image"].startswith("redis:")
    assert redis["entrypoint"] == ["sh", "/opt/fitstream/redis-entrypoint.sh"]
    mounts = volume_mounts(redis)
    assert mounts["./docker/redis-entrypoint.sh"] == "/opt/fitstream/redis-entrypoint.sh"
    assert mounts["redis-data"] == "/data", (
        "the append-only file lives on a volume, so it survives the container"
    )
    script = (REPO / "docker" / "redis-entrypoint.sh").read_text()
    config = script.split("<<CONF\n", 1)[1].split("\nCONF\n", 1)[0].splitlines()
    assert "appendonly yes" in config and "maxmemory-policy noeviction" in config


def test_postgresql_runs_with_its_data_on_a_volume_and_a_one_shot_migrate_runs_before_the_consumers():
    postgres = SERVICES["postgres"]
    assert postgres["image"].startswith("postgres:")
    assert volume_mounts(postgres)["postgres-data"] == "/var/lib/postgresql/data"
    migrate = SERVICES["migrate"]
    assert migrate["command"] == ["fitstream", "db", "upgrade"]
    assert migrate["restart"] == "no", "one-shot: it runs once and is not restarted"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    consumers = running(["fitstream", "consume"])
    assert set(consumers) >= {"recorder", "alerter", "promoter"}
    for name, service in consumers.items():
        assert service["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}, name


def test_the_alerter_runs_with_a_rules_file_it_mounts():
    [(name, alerter)] = running(["fitstream", "consume", "alerter"]).items()
    rules = environment(alerter)["FITSTREAM_ALERT_RULES"]
    assert rules in volume_mounts(alerter).values(), f"{name} reads {rules}, which it does not mount"
    source = next(s for s, target in volume_mounts(alerter).items() if target == rules)
    assert (REPO / source).is_file()


def test_each_gpu_worker_reserves_one_nvidia_device_and_sees_one_device():
    workers = running(["fitstream", "worker"])
    assert workers, "no GPU worker"
    reserved = []
    for name, service in workers.items():
        [device] = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"], name
        [device_id] = device["device_ids"]
        reserved.append(device_id)
        visible = environment(service)["CUDA_VISIBLE_DEVICES"]
        # The container sees only the GPU it reserves, as its device 0, whatever the host's number.
        assert visible == "0", (
            f"{name}: CUDA_VISIBLE_DEVICES={visible!r}; inside the container its one GPU is device 0"
        )
        # Its image has TensorFlow's CUDA build (the cuda extra), not the CPU-only default.
        extras = service["build"]["args"]["FITSTREAM_EXTRAS"].split(",")
        assert "cuda" in extras, f"{name} builds without the cuda extra: it would train on the CPU"
        command = service["command"]
        # Named after its device (`CUDA_VISIBLE_DEVICES=0 fitstream worker -n gpu0@%h`), on the gpu queue.
        assert command[command.index("--name") + 1] == f"gpu{device_id}@%h", name
        assert command[command.index("--queues") + 1] == "gpu", name
    assert len(set(reserved)) == len(reserved), f"two workers reserve the same device: {reserved}"


def test_the_recorder_runs_as_many_replicas_as_the_readme_says():
    replicas = NUMBERS[re.search(r"(\w+) recorder replicas", SECTION).group(1)]
    [(_name, recorder)] = running(["fitstream", "consume", "recorder"]).items()
    assert recorder["deploy"]["replicas"] == replicas == 2


def test_flower_monitors_the_celery_broker_with_basic_auth_user_admin_by_default():
    flower = SERVICES["flower"]
    assert flower["image"].startswith("mher/flower:")
    env = environment(flower)
    assert env["FITSTREAM_BROKER_URL"] == environment(SERVICES["migrate"])["FITSTREAM_REDIS_URL"]
    assert env["FITSTREAM_FLOWER_USER"] == "${FITSTREAM_FLOWER_USER:-admin}"
    assert env["FITSTREAM_FLOWER_PASSWORD_FILE"] == "/run/secrets/flower_password"


def test_the_runs_volume_is_fitstream_home_for_every_worker_and_the_promoter():
    assert "runs" in COMPOSE["volumes"]
    sharing = {**running(["fitstream", "worker"]), **running(["fitstream", "consume", "promoter"])}
    assert len(sharing) >= 2
    for name, service in sharing.items():
        assert volume_mounts(service).get("runs") == environment(service)["FITSTREAM_HOME"], name


def test_every_long_running_service_has_a_health_check_and_a_restart_policy():
    long_running = {name: s for name, s in SERVICES.items() if name not in ONE_SHOT}
    assert {"redis", "postgres", "recorder", "alerter", "promoter", "flower"} <= set(long_running)
    assert running(["fitstream", "worker"]).keys() <= long_running.keys()
    for name, service in long_running.items():
        check = service.get("healthcheck", {}).get("test")
        assert check and check[0] in ("CMD", "CMD-SHELL") and len(check) > 1, f"{name} has no health check"
        assert service.get("restart") in ("always", "unless-stopped", "on-failure"), (
            f"{name} is not restarted"
        )
    # A service waited on until it is healthy must have a health check, or it never becomes healthy.
    for name, service in SERVICES.items():
        for needed, condition in (service.get("depends_on") or {}).items():
            if condition["condition"] == "service_healthy":
                assert "healthcheck" in SERVICES[needed], f"{name} waits for {needed} to be healthy"


def test_each_health_check_looks_at_the_process_its_service_runs():
    for name, service in SERVICES.items():
        command = service.get("command", [])
        check = " ".join(service.get("healthcheck", {}).get("test", []))
        if command[:2] == ["fitstream", "consume"]:
            assert f"pgrep -f '{' '.join(command)}'" in check, name
        if command[:2] == ["fitstream", "worker"]:
            node = command[command.index("--name") + 1].replace("%h", "$$HOSTNAME")
            assert f"inspect ping -d {node}" in check, name
    if "pgrep" in " ".join(str(s.get("healthcheck")) for s in SERVICES.values() if "build" in s):
        assert "procps" in (REPO / "Dockerfile").read_text(), "the image has no pgrep for the health checks"


def test_only_redis_flower_and_with_the_s3_profile_minio_publish_the_ports_the_readme_names():
    documented = re.search(
        r"\*\*Published\*\* are Redis \((\d+),.*?\), Flower \((\d+)\) and, with `--profile s3`, MinIO \((\d+), (\d+)\)",
        SECTION,
    ).groups()
    published = {}
    for name, service in SERVICES.items():
        for port in service.get("ports", []):
            host_port, container_port = str(port).rsplit(":", 2)[1:]
            assert host_port == container_port, f"{name} publishes {port}"
            published.setdefault(name, []).append(host_port)
    assert published == {"redis": [documented[0]], "flower": [documented[1]], "minio": list(documented[2:])}
    assert SERVICES["minio"]["profiles"] == ["s3"]


def _requirements() -> tuple[list[str], list[str]]:
    """pyproject.toml's dependencies and its `cuda` extra (on Python 3.10, without tomllib: as installed,
    which ``./dev`` refreshes whenever pyproject.toml changes)."""
    try:
        import tomllib
    except ModuleNotFoundError:
        installed = [Requirement(r) for r in importlib.metadata.requires("fitstream")]
        cuda = [r for r in installed if r.marker is not None and r.marker.evaluate({"extra": "cuda"})]
        return [str(r) for r in installed if r.marker is None], [str(r).split(";")[0] for r in cuda]
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return project["dependencies"], project["optional-dependencies"]["cuda"]


def test_the_image_installs_the_extras_it_is_built_with():
    dockerfile = (REPO / "Dockerfile").read_text(encoding="utf-8")
    # examples: scikit-learn for the bundled examples, which compose's workers allow by default.
    assert re.search(r"^ARG FITSTREAM_EXTRAS=postgres,s3,examples$", dockerfile, re.M)
    assert 'pip install --no-cache-dir ".[${FITSTREAM_EXTRAS}]"' in dockerfile


def test_the_cuda_extra_pulls_tensorflows_cuda_build_of_the_same_version():
    dependencies, cuda_extra = _requirements()
    [base] = [r for r in map(Requirement, dependencies) if r.name == "tensorflow"]
    [cuda] = [r for r in map(Requirement, cuda_extra) if r.name == "tensorflow"]
    assert cuda.extras == {"and-cuda"} and not base.extras
    assert cuda.specifier == base.specifier


SHARDED = yaml.safe_load((REPO / "docker-compose.shards.yml").read_text(encoding="utf-8"))["services"]


def test_the_sharded_variant_runs_two_recorders_on_each_of_four_shards_and_tells_every_process_the_shard_count():
    shards = {
        name: s
        for name, s in SHARDED.items()
        if s.get("command", [])[:3] == ["fitstream", "consume", "recorder"]
    }
    assert sorted(s["command"][-2:] for s in shards.values()) == [["--shard", str(i)] for i in range(4)]
    base_env = environment(SERVICES["recorder"])
    for name, service in shards.items():
        assert service["deploy"]["replicas"] == 2, name
        assert environment(service) == {**base_env, "FITSTREAM_STREAM_SHARDS": "4"}, (
            name
        )  # same Redis, database, secrets
        assert service["healthcheck"] and service["restart"] == "unless-stopped"
        assert set(service["secrets"]) == set(SERVICES["recorder"]["secrets"])
    # The unsharded recorder is off; every other Fitstream process learns the shard count.
    assert SHARDED["recorder"]["profiles"] == ["unsharded"]
    fitstream = {name for name, s in SERVICES.items() if s.get("command", [""])[0] == "fitstream"} - {
        "recorder"
    }
    assert fitstream and all(
        environment(SHARDED[name]).get("FITSTREAM_STREAM_SHARDS") == "4" for name in fitstream
    )


def test_the_sharded_variant_is_valid_compose_on_top_of_the_base_file(tmp_path):
    import os
    import shutil
    import subprocess

    import pytest

    compose = shutil.which("docker-compose")
    if compose is None:
        pytest.skip("docker-compose is not installed (./dev test installs it on Debian)")
    for name in COMPOSE["secrets"]:
        (tmp_path / name).write_text("not-a-real-secret\n")
    env = {**os.environ, "FITSTREAM_SECRETS_DIR": str(tmp_path)}
    files = ["-f", str(REPO / "docker-compose.yml"), "-f", str(REPO / "docker-compose.shards.yml")]
    result = subprocess.run([compose, *files, "config"], capture_output=True, text=True, cwd=REPO, env=env)
    assert result.returncode == 0, result.stderr
    merged = yaml.safe_load(result.stdout)["services"]
    assert {f"recorder-shard{i}" for i in range(4)} <= set(merged) and merged["recorder"]["profiles"] == [
        "unsharded"
    ]
    assert environment(merged["alerter"])["FITSTREAM_STREAM_SHARDS"] == "4"
    assert (
        environment(merged["alerter"])["FITSTREAM_REDIS_URL"]
        == environment(SERVICES["alerter"])["FITSTREAM_REDIS_URL"]
    )

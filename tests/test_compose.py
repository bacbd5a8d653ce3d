"""docker-compose.yml is valid (`docker compose config`), and describes the topology that
tests/test_deployment.py runs as processes: the same services and the same settings."""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Any

import yaml

from tests.conftest import ROOT
from tests.test_docs import env_names

SERVICES = {"api", "worker", "postgres", "chroma", "mlflow", "redis"}
SERVER_SETTINGS = {
    "RAG_LOOP_DATA_DIR",
    "RAG_LOOP_DATABASE_URL",
    "RAG_LOOP_CHROMA_HOST",
    "RAG_LOOP_CHROMA_PORT",
    "RAG_LOOP_MLFLOW_TRACKING_URI",
    "RAG_LOOP_QUEUE_BROKER_URL",
    "RAG_LOOP_AUTH_SECRET_KEY",
}


def compose(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Compose v2 (`docker compose`) where it is installed, else v1 (`docker-compose`,
    Debian's package, which `make test` installs)."""
    if (
        shutil.which("docker")
        and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0
    ):
        command = ["docker", "compose"]
    else:
        assert shutil.which("docker-compose"), "install docker compose (make test does)"
        command = ["docker-compose"]
    return subprocess.run(
        [*command, "-f", str(ROOT / "docker-compose.yml"), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        cwd=ROOT,
        timeout=120,
    )


def test_compose_file_is_valid_and_matches_the_tested_topology() -> None:
    done = compose("config", env={"RAG_LOOP_AUTH_SECRET_KEY": "s3cret"})
    assert done.returncode == 0, done.stderr
    config: dict[str, Any] = yaml.safe_load(done.stdout)
    services = config["services"]
    assert set(services) == SERVICES
    for name, service in services.items():
        assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    for name in ("api", "worker"):
        environment = services[name]["environment"]
        assert set(environment) >= SERVER_SETTINGS, name
        assert set(environment) <= set(env_names()), "only real settings"
        assert environment["RAG_LOOP_AUTH_SECRET_KEY"] == "s3cret"
        assert "/data" in _mount_targets(services[name]), name
        for dependency in ("postgres", "redis", "chroma", "mlflow"):
            assert services[name]["depends_on"][dependency]["condition"] == "service_healthy"
    mlflow = " ".join(services["mlflow"]["command"])
    assert "--backend-store-uri postgresql+psycopg://" in mlflow
    assert "--artifacts-destination /mlartifacts" in mlflow
    assert services["worker"]["command"] == ["rag-loop", "worker"]
    assert set(config["volumes"]) >= {"postgres-data", "chroma-data", "mlflow-artifacts"}


def _mount_targets(service: dict[str, Any]) -> set[str]:
    """Where a service's volumes are mounted (v1 prints `src:dst[:mode]`, v2 mappings)."""
    targets = set()
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            targets.add(volume["target"])
        else:
            targets.add(str(volume).split(":")[1])
    return targets


def test_compose_refuses_to_start_without_a_shared_secret() -> None:
    env = {k: v for k, v in os.environ.items() if k != "RAG_LOOP_AUTH_SECRET_KEY"}
    done = compose("config", env={"RAG_LOOP_AUTH_SECRET_KEY": ""} if env else {})
    assert done.returncode != 0 and "RAG_LOOP_AUTH_SECRET_KEY" in done.stderr


def test_dockerfile_pins_the_cpu_torch_first() -> None:
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    torch = next(i for i, line in enumerate(lines) if "torch==2.13.0" in line)
    install = next(i for i, line in enumerate(lines) if 'pip install ".' in line)
    assert torch < install

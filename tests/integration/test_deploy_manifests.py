"""The deployment files, validated offline: no Docker engine or cluster exists where tests run.

compose/docker-compose.yml is checked against the Compose spec (check-jsonschema's vendored schema) and
deploy/k3s/ against the Kubernetes OpenAPI schemas that kubernetes-validate ships. Schemas cannot see
what a user of the files would notice, so the rest asserts that directly: loopback-only ports, the right
commands, a GPU for the worker, healthchecks, and no `DF_*` variable that Settings would silently ignore.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from dreamforge.config import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "compose" / "docker-compose.yml"
K3S_DIR = ROOT / "deploy" / "k3s"
# Not resolved: the venv's python is a symlink, and the console scripts sit next to the link.
CHECK_JSONSCHEMA = Path(sys.executable).with_name("check-jsonschema")
KUBERNETES_VALIDATE = Path(sys.executable).with_name("kubernetes-validate")
# The oldest Kubernetes (k3s) release the manifests must apply to; its schemas ship inside the package.
K8S_VERSION = "1.31.0"
LOOPBACK = "127.0.0.1"
NAMESPACE = "dreamforge"
WORKER_GRACE_SECONDS = 60


def _run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=180, check=False, cwd=ROOT
    )


def _validate_compose(path: Path) -> subprocess.CompletedProcess[str]:
    return _run(CHECK_JSONSCHEMA, "--builtin-schema", "vendor.compose-spec", path)


def _k3s_files() -> list[Path]:
    return sorted([*K3S_DIR.glob("*.yaml"), *K3S_DIR.glob("*.yml")])


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = compose["services"]
    return result


@pytest.fixture(scope="module")
def k3s_resources() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in _k3s_files():
        docs.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc)
    return docs


def _of_kind(resources: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [r for r in resources if r["kind"] == kind]


def _deployment(resources: list[dict[str, Any]], name: str) -> dict[str, Any]:
    (found,) = [r for r in _of_kind(resources, "Deployment") if r["metadata"]["name"] == name]
    return found


def _command(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]


def _env_names(environment: dict[str, Any] | list[str] | None) -> set[str]:
    if environment is None:
        return set()
    if isinstance(environment, dict):
        return set(environment)
    return {entry.split("=", 1)[0] for entry in environment}


def _seconds(duration: str) -> int:
    match = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", duration)
    assert match and duration, f"unparsed duration {duration!r}"
    hours, minutes, seconds = (int(part or 0) for part in match.groups())
    return hours * 3600 + minutes * 60 + seconds


def _unknown_settings(names: set[str]) -> list[str]:
    fields = set(Settings.model_fields)
    return sorted(n for n in names if n.startswith("DF_") and n.lower().removeprefix("df_") not in fields)


def test_compose_file_matches_the_compose_spec() -> None:
    result = _validate_compose(COMPOSE_FILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_validator_rejects_an_unknown_key(tmp_path: Path) -> None:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    data["services"]["api"]["restart_policy"] = "always"  # a plausible typo of `restart`
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(yaml.safe_dump(data, sort_keys=False))

    result = _validate_compose(broken)

    assert result.returncode != 0, result.stdout + result.stderr
    assert "restart_policy" in result.stdout + result.stderr


def test_k3s_manifests_match_the_kubernetes_schemas() -> None:
    files = _k3s_files()
    assert files, f"no manifests in {K3S_DIR}"

    result = _run(KUBERNETES_VALIDATE, "--strict", "--kubernetes-version", K8S_VERSION, *files)

    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    # An unknown kind or apiVersion is only a warning (exit 0) and leaves the file unchecked.
    assert "WARN" not in output, output
    for path in files:
        assert re.search(rf"{re.escape(str(path.relative_to(ROOT)))} passed", output), output


def test_kubernetes_validator_rejects_an_unknown_key(tmp_path: Path) -> None:
    manifest = yaml.safe_load((K3S_DIR / "worker-deployment.yaml").read_text())
    manifest["spec"]["template"]["spec"]["terminationGracePeriod"] = 60  # missing its `Seconds`
    broken = tmp_path / "worker-deployment.yaml"
    broken.write_text(yaml.safe_dump(manifest, sort_keys=False))

    result = _run(KUBERNETES_VALIDATE, "--strict", "--kubernetes-version", K8S_VERSION, broken)

    assert result.returncode != 0, result.stdout + result.stderr
    assert "terminationGracePeriod'" in result.stdout + result.stderr


def test_published_ports_bind_loopback_only(services: dict[str, dict[str, Any]]) -> None:
    published: dict[str, set[int]] = {}
    for name, service in services.items():
        for port in service.get("ports", []):
            if isinstance(port, dict):
                host_ip, host_port = port.get("host_ip"), port.get("published")
            else:
                parts = str(port).rsplit(":", 2)
                host_ip = parts[0] if len(parts) == 3 else None
                host_port = parts[-2] if len(parts) >= 2 else None
            assert host_ip == LOOPBACK, f"{name} publishes {port!r} beyond loopback"
            published.setdefault(name, set()).add(int(str(host_port)))

    assert published == {"api": {8001}, "minio": {9000, 9001}}


def test_api_and_worker_run_the_dreamforge_commands(services: dict[str, dict[str, Any]]) -> None:
    api = _command(services["api"])
    assert api[:2] == ["dreamforge", "serve"]
    # Bound to loopback inside its container, the API would be unreachable through the published port.
    assert api[api.index("--host") + 1] == "0.0.0.0"
    assert _command(services["worker"]) == ["dreamforge", "worker"]


def test_worker_reserves_a_gpu_and_may_finish_requeueing(services: dict[str, dict[str, Any]]) -> None:
    worker = services["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices), devices
    assert _seconds(worker["stop_grace_period"]) >= WORKER_GRACE_SECONDS


def test_long_running_services_are_healthchecked_and_awaited(services: dict[str, dict[str, Any]]) -> None:
    healthchecked = set()
    for name, service in services.items():
        if service.get("restart") == "no":
            continue
        check = service.get("healthcheck")
        assert check and check.get("test") and not check.get("disable"), f"{name} has no healthcheck"
        healthchecked.add(name)
    assert {"api", "worker", "postgres", "redis", "minio"} <= healthchecked

    for name, service in services.items():
        depends_on = service.get("depends_on", {})
        # The short (list) form only orders container starts; it does not wait for readiness.
        assert isinstance(depends_on, dict), f"{name}: depends_on needs conditions"
        for dependency, spec in depends_on.items():
            condition = spec.get("condition")
            if condition == "service_healthy":
                assert dependency in healthchecked, f"{name} waits on {dependency}, which has no healthcheck"
            else:
                assert condition == "service_completed_successfully", f"{name} -> {dependency}: {spec}"
                assert services[dependency].get("restart") == "no"


def test_api_and_worker_share_the_models_volume(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    assert "models" in compose["volumes"]
    for name in ("api", "worker"):
        env = services[name]["environment"]
        assert f"models:{env['DF_MODELS_ROOT']}" in services[name]["volumes"], name


def test_every_df_variable_is_a_setting(
    compose: dict[str, Any], services: dict[str, dict[str, Any]], k3s_resources: list[dict[str, Any]]
) -> None:
    names = _env_names(compose.get("x-dreamforge-env"))
    for service in services.values():
        names |= _env_names(service.get("environment"))
    for config_map in _of_kind(k3s_resources, "ConfigMap"):
        names |= set(config_map.get("data", {}))
    for secret in _of_kind(k3s_resources, "Secret"):
        names |= set(secret.get("stringData", {})) | set(secret.get("data", {}))
    for deployment in _of_kind(k3s_resources, "Deployment"):
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            names |= {entry["name"] for entry in container.get("env", [])}

    assert {"DF_DB_URL", "DF_REDIS_URL", "DF_MINIO_ENDPOINT", "DF_MODELS_ROOT"} <= names
    assert _unknown_settings(names) == []


def test_k3s_resources_live_in_one_namespace_and_resolve(k3s_resources: list[dict[str, Any]]) -> None:
    assert [r["metadata"]["name"] for r in _of_kind(k3s_resources, "Namespace")] == [NAMESPACE]
    for resource in k3s_resources:
        if resource["kind"] != "Namespace":
            assert resource["metadata"].get("namespace") == NAMESPACE, resource["metadata"]

    defined = {(r["kind"], r["metadata"]["name"]) for r in k3s_resources}
    for deployment in _of_kind(k3s_resources, "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        for container in pod["containers"]:
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    assert ("ConfigMap", source["configMapRef"]["name"]) in defined
                if "secretRef" in source:
                    assert ("Secret", source["secretRef"]["name"]) in defined
        for volume in pod.get("volumes", []):
            if "persistentVolumeClaim" in volume:
                assert ("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"]) in defined

    (service,) = _of_kind(k3s_resources, "Service")
    api = _deployment(k3s_resources, "dreamforge-api")
    assert service["spec"]["selector"].items() <= api["spec"]["template"]["metadata"]["labels"].items()
    assert [p["port"] for p in service["spec"]["ports"]] == [8001]


def test_k3s_api_probes_and_worker_gpu(k3s_resources: list[dict[str, Any]]) -> None:
    (api,) = _deployment(k3s_resources, "dreamforge-api")["spec"]["template"]["spec"]["containers"]
    assert api["command"][:2] == ["dreamforge", "serve"]
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"

    worker_deployment = _deployment(k3s_resources, "dreamforge-worker")
    pod = worker_deployment["spec"]["template"]["spec"]
    (worker,) = pod["containers"]
    assert worker["command"] == ["dreamforge", "worker"]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["runtimeClassName"] == "nvidia"
    assert pod["terminationGracePeriodSeconds"] >= WORKER_GRACE_SECONDS
    # A rolling update would wait forever for a second GPU while the old pod holds the only one.
    assert worker_deployment["spec"]["strategy"]["type"] == "Recreate"

    (config_map,) = _of_kind(k3s_resources, "ConfigMap")
    models_root = config_map["data"]["DF_MODELS_ROOT"]
    (claim,) = _of_kind(k3s_resources, "PersistentVolumeClaim")
    (models_volume,) = [
        v["name"]
        for v in pod["volumes"]
        if v.get("persistentVolumeClaim", {}).get("claimName") == claim["metadata"]["name"]
    ]
    assert {"name": models_volume, "mountPath": models_root} in worker["volumeMounts"]

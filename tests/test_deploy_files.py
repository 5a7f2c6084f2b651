"""The deployment files are valid: docker-compose.yml against the Compose specification, the Dockerfile by hadolint.

(`docker compose config` needs a Docker engine; the same schema check runs here offline.) Also checks the
properties the service relies on: Redis without eviction, a one-shot migration before the API and workers, data
and model-cache volumes, health checks, and the GPU worker's NVIDIA reservation under the "gpu" profile.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / ".venv" / "bin"


def _tool(name: str) -> str:
    path = BIN / name
    if not path.exists():  # never a skip: CI must not go green without the check
        pytest.fail(
            f"{name} is not installed in .venv: ./scripts/test.sh installs the dev extra (pip install -e '.[dev]')"
        )
    return str(path)


def test_compose_file_matches_compose_spec():
    cmd = [_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", "docker-compose.yml"]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr


def test_dockerfile_passes_hadolint():
    res = subprocess.run([_tool("hadolint"), "Dockerfile"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr


def test_compose_services_and_reliability_settings():
    spec = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = spec["services"]
    assert {"postgres", "redis", "migrate", "api", "worker", "worker-gpu"} <= set(services)
    assert "noeviction" in services["redis"]["command"]
    for name in ("api", "worker", "worker-gpu"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert "healthcheck" in services[name]
    assert services["migrate"]["restart"] == "no"
    assert services["worker-gpu"]["profiles"] == ["gpu"]
    devices = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert {"data", "models"} <= set(spec["volumes"])
    assert any(v.startswith("models:") for v in services["worker"]["volumes"])


def test_dockerfile_api_target_has_no_torch():
    text = (ROOT / "Dockerfile").read_text()
    for target in ("AS api", "AS worker", "AS worker-gpu"):
        assert target in text
    lines = (ROOT / "docker" / "requirements-api.txt").read_text().splitlines()
    reqs = [line for line in lines if line.strip() and not line.startswith("#")]
    assert not [r for r in reqs if "torch" in r or "open_clip" in r]


def test_the_images_leave_the_benchmarks_out() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    copied = [line.split()[1] for line in dockerfile.splitlines() if line.startswith("COPY ") and "--from" not in line]
    assert not [src for src in copied if src.rstrip("/").startswith("bench")], copied
    assert "bench" in (ROOT / ".dockerignore").read_text(encoding="utf-8").split()


def test_compose_has_an_object_store_and_no_disk_shared_by_the_api_and_workers():
    spec = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = spec["services"]
    s3 = services["s3"]
    assert s3["image"].startswith("chrislusf/seaweedfs:") and s3["command"][0] == "mini"
    assert "-bucket=tagsift" in s3["command"] and "healthcheck" in s3
    for name in ("api", "worker", "worker-gpu"):
        env = services[name]["environment"]
        assert env["TAGSIFT_STORAGE_URL"].endswith("s3://tagsift/data}")
        assert env["TAGSIFT_S3_ENDPOINT_URL"].endswith("http://s3:8333}")
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(env)
        assert services[name]["depends_on"]["s3"]["condition"] == "service_healthy"

    def data_volume(name: str) -> set[str]:
        return {v.split(":")[0] for v in services[name]["volumes"] if v.split(":")[1].split()[0] == "/data"}

    mounts = [data_volume(name) for name in ("api", "worker", "worker-gpu")]
    assert all(len(m) == 1 for m in mounts) and len(set.union(*mounts)) == 3, mounts  # three separate volumes


def _stage(dockerfile: str, name: str) -> str:
    """The lines of one build stage (from its FROM to the next FROM)."""
    start = dockerfile.index(f" AS {name}\n")
    end = dockerfile.find("\nFROM ", start)
    return dockerfile[start : end if end != -1 else None]


def test_the_gpu_target_installs_cuda_torch_with_its_dependencies() -> None:
    """PyPI's torch wheel for Linux is the CUDA build and needs its nvidia-* dependencies: the GPU stage installs it
    from PyPI with them (no CPU index, no --no-deps) and fails the build if torch has no CUDA (docs/deploy.md)."""
    gpu = _stage((ROOT / "Dockerfile").read_text(encoding="utf-8"), "worker-gpu")
    assert gpu.startswith(" AS worker-gpu") and "FROM worker " not in gpu
    assert "--no-deps" not in gpu.split("COPY --from=source")[0]  # only the project itself is installed without deps
    assert "requirements-worker.txt" in gpu and "TORCH_INDEX_URL" not in gpu and "whl/cpu" not in gpu
    assert "torch.version.cuda" in gpu
    reqs = (ROOT / "docker" / "requirements-worker.txt").read_text().splitlines()
    assert any(r.startswith("torch==") for r in reqs)


def test_worker_healthchecks_answer_during_jobs_and_workers_name_their_device() -> None:
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    for stage, device in (("worker", "cpu"), ("worker-gpu", "gpu")):
        lines = _stage(text, stage)
        assert 'CMD ["tagsift", "worker-health"]' in lines and "inspect ping" not in lines
        assert "TAGSIFT_WORKER_HEALTH_FILE=" in lines and f'"--device", "{device}"]' in lines
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    for name, device in (("worker", "cpu"), ("worker-gpu", "gpu")):
        svc = services[name]
        assert svc["healthcheck"]["test"] == ["CMD", "tagsift", "worker-health"]
        assert svc["command"][-2:] == ["--device", device]
        assert svc["environment"]["TAGSIFT_WORKER_HEALTH_FILE"]


def test_compose_works_with_an_external_s3_and_refuses_known_secrets():
    """Issue 27: an empty TAGSIFT_S3_ENDPOINT_URL means AWS (``${VAR-default}`` keeps an empty value; ``:-`` replaced
    it with the bundled store); AWS keys have no default (instance roles apply); the bundled SeaweedFS is in the
    "s3" profile and the services do not require it; POSTGRES_PASSWORD has no default (``:?`` refuses to start)."""
    text = (ROOT / "docker-compose.yml").read_text()
    spec = yaml.safe_load(text)
    services = spec["services"]
    assert services["s3"]["profiles"] == ["s3"]
    for name in ("api", "worker", "worker-gpu"):
        env = services[name]["environment"]
        assert env["TAGSIFT_S3_ENDPOINT_URL"] == "${TAGSIFT_S3_ENDPOINT_URL-http://s3:8333}"
        assert env["AWS_ACCESS_KEY_ID"] == "${AWS_ACCESS_KEY_ID:-}" and env["AWS_SECRET_ACCESS_KEY"] == (
            "${AWS_SECRET_ACCESS_KEY:-}"
        )
        assert "${POSTGRES_PASSWORD:?" in env["TAGSIFT_DATABASE_URL"]
        s3 = services[name]["depends_on"]["s3"]
        assert s3 == {"condition": "service_healthy", "required": False}, s3
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")
    assert "change-me" not in text and "POSTGRES_PASSWORD:-" not in text
    # the bundled store checks its keys itself (compose would refuse AWS users with `:?` on a disabled service)
    script = " ".join(services["s3"]["entrypoint"])
    assert "$${AWS_SECRET_ACCESS_KEY:?" in script and "exec /entrypoint.sh" in script

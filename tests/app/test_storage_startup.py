"""A bad storage setting stops ``tagsift serve`` and ``tagsift worker`` at start-up with one line that names the
setting (no traceback): an unknown scheme, a bucket that does not exist, refused credentials, an endpoint that does
not answer. Real processes against a real S3 server (SeaweedFS)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.services import free_port

ROOT = Path(__file__).resolve().parents[2]
TAGSIFT = ROOT / ".venv" / "bin" / "tagsift"

COMMANDS = {"serve": ["serve", "--port", "0"], "worker": ["worker", "--pool", "solo"]}


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    cmd = [str(TAGSIFT)] if TAGSIFT.exists() else [sys.executable, "-m", "worker.cli"]
    return subprocess.run([*cmd, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("command", ["serve", "worker"])
@pytest.mark.parametrize("case", ["unknown scheme", "no such bucket", "wrong credentials", "endpoint not answering"])
def test_a_bad_storage_setting_stops_the_command_with_one_line(command: str, case: str, s3_server, tmp_path: Path):
    bucket = s3_server.new_bucket()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TAGSIFT_", "AWS_"))}
    env.update(s3_server.env)
    env.update(
        TAGSIFT_DATA_DIR=str(tmp_path / "var"),
        TAGSIFT_STORAGE_URL=f"s3://{bucket}/p",
        TAGSIFT_S3_ENDPOINT_URL=s3_server.endpoint,
        TAGSIFT_PORT=str(free_port()),
    )
    if case == "unknown scheme":
        env["TAGSIFT_STORAGE_URL"], expected = "gs://bucket/p", "TAGSIFT_STORAGE_URL: unknown scheme gs://"
    elif case == "no such bucket":
        env["TAGSIFT_STORAGE_URL"], expected = "s3://tagsift-absent/p", "TAGSIFT_STORAGE_URL: bucket 'tagsift-absent'"
    elif case == "wrong credentials":
        env["AWS_SECRET_ACCESS_KEY"], expected = "not-the-key", "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY: refused"
    else:
        env["TAGSIFT_S3_ENDPOINT_URL"] = f"http://127.0.0.1:{free_port()}"
        expected = f"TAGSIFT_S3_ENDPOINT_URL: {env['TAGSIFT_S3_ENDPOINT_URL']} does not answer"
    res = _run(COMMANDS[command], env)
    assert res.returncode == 2, (res.returncode, res.stdout[-2000:], res.stderr[-2000:])
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"tagsift: {expected}"), res.stderr
    assert "Traceback" not in res.stdout + res.stderr


def test_a_good_s3_setting_lets_the_api_start(s3_server, tmp_path: Path):
    """The same check passes for a bucket that exists with the right credentials: the API answers /healthz."""
    import httpx

    from tests.worker.conftest import ApiServer

    env = {k: v for k, v in os.environ.items() if not k.startswith(("TAGSIFT_", "AWS_"))}
    env.update(
        s3_server.env,
        TAGSIFT_DATA_DIR=str(tmp_path / "var"),
        TAGSIFT_STORAGE_URL=f"s3://{s3_server.new_bucket()}/p",
        TAGSIFT_S3_ENDPOINT_URL=s3_server.endpoint,
    )
    api = ApiServer(tmp_path / "api.log", env)
    try:
        assert httpx.get(f"{api.base_url}/healthz", timeout=10).status_code == 200
    finally:
        api.stop()

"""The real service the client tests talk to: ``tagsift serve`` (uvicorn) and ``tagsift worker`` processes, one pair
per test module and configuration: the embedded default (SQLite + the SQLite broker) and PostgreSQL + Redis.

Every request the client sends through :func:`recording_client` is recorded; at the end of the module each must
match an operation of ``tagsift_client.endpoints`` (which ``test_openapi_sync.py`` checks against /openapi.json).
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from tagsift_client import Client
from tagsift_client.endpoints import match

from tests import services
from tests.worker.conftest import FAST_LEASES, ROOT, ApiServer, WorkerProcess, tiny_backbone

#: The API's body limit in these tests: small enough that an upload of the bigger images must be split.
MAX_REQUEST_BYTES = 1_000_000


@dataclass
class Service:
    """A running API + worker: the base URL, an API key, the environment they run with."""

    url: str
    key: str
    env: dict[str, str]
    kind: str
    sent: list[tuple[str, str]] = field(default_factory=list)

    def client(self, **kwargs) -> Client:
        """A client whose every request is recorded (``sent``)."""
        return Client(self.url, self.key, transport=_Recording(self.sent), **kwargs)

    def raw(self) -> httpx.Client:
        """A plain httpx client with the key (what a user of raw HTTP would have)."""
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.key}"}, timeout=60)


class _Recording(httpx.HTTPTransport):
    def __init__(self, sent: list[tuple[str, str]]) -> None:
        super().__init__()
        self.sent = sent

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append((request.method, request.url.path))
        return super().handle_request(request)


def _tagsift(env: dict[str, str], *args: str) -> str:
    cmd = [str(ROOT / ".venv" / "bin" / "tagsift")]
    if not Path(cmd[0]).exists():
        cmd = [sys.executable, "-m", "worker.cli"]
    res = subprocess.run([*cmd, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout


def _settle_jobs(database_url: str) -> None:
    """Earlier tests' unfinished jobs in the shared test database are cancelled (as tests/worker do), so this
    module's worker does not spend its time on them."""
    from sqlalchemy import create_engine, text

    engine = create_engine(database_url)
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE jobs SET status = 'cancelled', cancel_requested = true, lease_owner = NULL,"
                " lease_expires_at = NULL, finished_at = now() WHERE status IN ('queued', 'running')"
            )
        )
    engine.dispose()


@pytest.fixture(scope="module", params=["embedded", "prod"])
def service(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """One API and one worker for the module, in the embedded default or with PostgreSQL + Redis."""
    work = tmp_path_factory.mktemp(f"client-{request.param}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAGSIFT_")}
    env.update(FAST_LEASES)
    env.update(
        {
            "TAGSIFT_DATA_DIR": str(work / "var"),
            "TAGSIFT_BACKBONE": tiny_backbone(work / "var"),
            "TAGSIFT_MAX_REQUEST_BYTES": str(MAX_REQUEST_BYTES),
            "TAGSIFT_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.1/32",
            "TAGSIFT_WEBHOOK_POLL_SECONDS": "0.5",
            "TAGSIFT_QUEUE": f"test-client-{uuid.uuid4().hex[:8]}",
        }
    )
    if request.param == "prod":
        database_url = request.getfixturevalue("postgres_url")
        env["TAGSIFT_DATABASE_URL"] = database_url
        env["TAGSIFT_BROKER_URL"] = request.getfixturevalue("redis_url")
        _settle_jobs(database_url)
    _tagsift(env, "migrate")
    key = _tagsift(env, "create-api-key", "--owner", f"client-{uuid.uuid4().hex[:8]}", "--name", "tester")
    worker = WorkerProcess(work / "worker.log", env)
    api = ApiServer(work / "api.log", env)
    svc = Service(url=api.base_url, key=key.strip().splitlines()[-1], env=env, kind=request.param)
    try:
        yield svc
    finally:
        api.stop()
        worker.stop()
    unknown = sorted({(m, p) for m, p in svc.sent if match(m, p) is None})
    assert not unknown, f"requests the client sent that tagsift_client.endpoints does not declare: {unknown}"


def write_images(folder: Path, n: int, *, start: int = 0, size: int = 40) -> list[tuple[str, str]]:
    """``n`` distinct PNGs of one of three colours in ``folder``; returns (file name, colour) pairs."""
    from tests.worker.conftest import CLASSES, color_image

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(start, start + n):
        color = CLASSES[i % 3]
        name = f"img{i:04d}.png"
        (folder / name).write_bytes(color_image(i + 1000 * size, color, size))
        out.append((name, color))
    return out


def free_port() -> int:
    return services.free_port()

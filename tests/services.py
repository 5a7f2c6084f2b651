"""Real PostgreSQL and Redis for the tests.

Each is used at its configured URL (``TAGSIFT_TEST_POSTGRES_URL``, ``TAGSIFT_TEST_REDIS_URL``; defaults on
127.0.0.1). When one does not answer, a throwaway instance is started from the binaries on PATH (``initdb`` and
``pg_ctl`` in a temporary folder, ``redis-server`` on a free port) and stopped when the tests end.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, make_url

MISSING_POSTGRES = (
    "PostgreSQL is not answering at {url} and no initdb/pg_ctl is on PATH to start a throwaway one. "
    "Install the Debian packages 'postgresql' and 'postgresql-client' (apt-get install postgresql), "
    "or point TAGSIFT_TEST_POSTGRES_URL at a running server."
)
MISSING_REDIS = (
    "Redis is not answering at {url} and no redis-server is on PATH to start a throwaway one. "
    "Install the Debian package 'redis-server' (apt-get install redis-server), "
    "or point TAGSIFT_TEST_REDIS_URL at a running server."
)


@contextmanager
def started(server):
    """``server.start()``, yield it, ``server.close()`` whatever happens: the body of every own-server fixture."""
    try:
        server.start()
        yield server
    finally:
        server.close()


def free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tcp_open(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _postgres_answers(url: URL) -> bool:
    if not tcp_open(url.host or "127.0.0.1", url.port or 5432):
        return False
    engine = create_engine(url, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return True
    except Exception:
        return False
    finally:
        engine.dispose()


def _redis_answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@dataclass
class ThrowawayServer:
    """A server process this test run started, with what it takes to stop and remove it."""

    stop_cmd: list[str]
    folder: Path
    procs: list[subprocess.Popen] = field(default_factory=list)

    def stop(self) -> None:
        subprocess.run(self.stop_cmd, check=False, capture_output=True, timeout=60)
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
        shutil.rmtree(self.folder, ignore_errors=True)


def _as_unprivileged(cmd: list[str]) -> tuple[list[str], str | None]:
    """PostgreSQL refuses to run as root: run it as the 'postgres' (or 'nobody') user then."""
    if os.geteuid() != 0:
        return cmd, None
    for user in ("postgres", "nobody"):
        try:
            pwd.getpwnam(user)
        except KeyError:
            continue
        runuser = shutil.which("runuser")
        if runuser:
            return [runuser, "-u", user, "--", *cmd], user
    raise RuntimeError("running as root and no unprivileged user to start PostgreSQL as")


def ensure_postgres(url_str: str) -> tuple[URL, ThrowawayServer | None]:
    """A PostgreSQL admin URL that answers: the configured one, or a throwaway server's."""
    url = make_url(url_str)
    if _postgres_answers(url):
        return url, None
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if not (initdb and pg_ctl):
        raise RuntimeError(MISSING_POSTGRES.format(url=url.render_as_string(hide_password=True)))
    folder = Path(tempfile.mkdtemp(prefix="tagsift-pg-"))
    data = folder / "data"
    port = free_port()
    cmd, user = _as_unprivileged([initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"])
    if user:
        pw = pwd.getpwnam(user)
        os.chown(folder, pw.pw_uid, pw.pw_gid)
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    start, _ = _as_unprivileged(
        [
            pg_ctl,
            "-D",
            str(data),
            "-l",
            str(folder / "log"),
            "-w",
            "-t",
            "60",
            "-o",
            f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off",
            "start",
        ]
    )
    subprocess.run(start, check=True, capture_output=True, timeout=120)
    stop, _ = _as_unprivileged([pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"])
    server = ThrowawayServer(stop_cmd=stop, folder=folder)
    url = url.set(host="127.0.0.1", port=port, username="postgres", password=None, database="postgres")
    return url, server


def ensure_redis(url_str: str) -> tuple[str, ThrowawayServer | None]:
    """A Redis URL that answers: the configured one, or a throwaway server's."""
    url = make_url(url_str.replace("redis://", "redis+x://", 1)) if url_str.startswith("redis://") else None
    host = (url.host if url else None) or "127.0.0.1"
    port = (url.port if url else None) or 6379
    if _redis_answers(host, port):
        return url_str, None
    redis_server = shutil.which("redis-server")
    if not redis_server:
        raise RuntimeError(MISSING_REDIS.format(url=url_str))
    folder = Path(tempfile.mkdtemp(prefix="tagsift-redis-"))
    port = free_port()
    proc = subprocess.Popen(
        [
            redis_server,
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(folder),
            "--maxmemory-policy",
            "noeviction",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while not _redis_answers("127.0.0.1", port):
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            raise RuntimeError(f"the throwaway redis-server on port {port} did not start")
        time.sleep(0.1)
    return f"redis://127.0.0.1:{port}/0", ThrowawayServer(stop_cmd=["true"], folder=folder, procs=[proc])


def create_database(admin_url: URL) -> URL:
    """A new, empty database for this test run; returns its URL."""
    name = f"tagsift_test_{uuid.uuid4().hex[:12]}"
    engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return admin_url.set(database=name)


def drop_database(admin_url: URL, db_url: URL) -> None:
    engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{db_url.database}" WITH (FORCE)'))
    engine.dispose()

"""A real Label Studio for the tests: its own virtual environment (``var/label-studio-venv``, made by
``scripts/install-label-studio.sh``), started on SQLite on a free loopback port, driven through its HTTP API.

How to run it offline is in ``docs/integrations.md`` (and the team's field notes): legacy token auth on the first
start, no analytics or version check, SSRF protection off so that it may call a backend on loopback.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import time
from pathlib import Path

import httpx

from tests import services

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / "var" / "label-studio-venv"
LABEL_STUDIO = VENV / "bin" / "label-studio"
VERSION = "1.23.2"
MISSING = (
    f"Label Studio {VERSION} is not installed at {VENV}: run scripts/install-label-studio.sh "
    "(scripts/test.sh and CI run it)"
)

#: The image classification template of Label Studio with three classes.
LABEL_CONFIG = """<View>
  <Image name="image" value="$image"/>
  <Choices name="choice" toName="image" choice="multiple">
    <Choice value="cat"/>
    <Choice value="lynx"/>
    <Choice value="dog"/>
  </Choices>
</View>"""


class LabelStudio:
    """A ``label-studio start`` process (its own process group) and an API client with its legacy token."""

    def __init__(self, folder: Path) -> None:
        if not LABEL_STUDIO.exists():
            raise RuntimeError(MISSING)
        self.folder = folder
        self.port = services.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = secrets.token_hex(20)
        home = folder / "home"
        home.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "HOME": str(home),
            "XDG_CONFIG_HOME": str(home / ".config"),
            "XDG_DATA_HOME": str(home / ".local" / "share"),
            "LATEST_VERSION_CHECK": "false",
            "COLLECT_ANALYTICS": "false",
            "SENTRY_DSN": "",
            "FRONTEND_SENTRY_DSN": "",
            "ML_BLOCK_LOCAL_IP": "false",
            "SSRF_PROTECTION_ENABLED": "false",
        }
        env.pop("PYTHONPATH", None)
        env.pop("DJANGO_SETTINGS_MODULE", None)
        self.log_path = folder / "label-studio.log"
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                str(LABEL_STUDIO),
                "start",
                "--no-browser",
                "--internal-host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--host",
                self.url,
                "--data-dir",
                str(folder / "data"),
                "--username",
                "admin@example.com",
                "--password",
                "Passw0rd!",
                "--user-token",
                self.token,
                "--enable-legacy-api-token",
            ],
            env=env,
            cwd=folder,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.client = httpx.Client(base_url=self.url, headers={"Authorization": f"Token {self.token}"}, timeout=60)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def wait_ready(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"label-studio exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).json().get("status") == "UP":
                    return
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.5)
        raise RuntimeError(f"label-studio did not answer /health within {timeout}s:\n{self.log()}")

    def api(self, method: str, path: str, **kw) -> httpx.Response:
        r = self.client.request(method, path, **kw)
        if r.status_code >= 400:
            raise AssertionError(f"Label Studio {method} {path}: {r.status_code} {r.text[:2000]}")
        return r

    def stop(self) -> None:
        self.client.close()
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._log.close()

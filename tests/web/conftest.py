"""Browser fixtures: Debian's Chromium driven by Playwright (its pip wheel brings the driver; nothing is downloaded),
a real ``tagsift serve`` process, and a guard that fails a test when a page asks for a URL outside the served origin.

Screenshots go to ``$TAGSIFT_UI_SCREENSHOTS`` when set (``docs/ui/`` for the docs), else to the test's tmp folder.
"""

from __future__ import annotations

import base64
import os
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from app.db import session_scope
from app.services.api_keys import create_api_key
from tests.worker.conftest import ApiServer

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    if not os.path.exists(CHROMIUM):
        raise RuntimeError(f"{CHROMIUM} is missing: apt-get install -y chromium (.ci/run does)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@dataclass
class Site:
    """One browser context on one served origin; ``offsite`` lists every request that left it."""

    base_url: str
    context: object
    page: object
    shots: Path
    offsite: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)

    def url(self, path: str) -> str:
        return self.base_url + path

    def shot(self, name: str) -> Path:
        path = self.shots / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=False)
        return path


def open_site(browser, base_url: str, shots: Path) -> Site:
    context = browser.new_context(base_url=base_url, viewport={"width": 1360, "height": 900}, accept_downloads=True)
    page = context.new_page()
    site = Site(base_url=base_url, context=context, page=page, shots=shots)
    origin = re.match(r"^https?://[^/]+", base_url).group(0)

    def guard(route) -> None:
        url = route.request.url
        if url.startswith(origin + "/") or url == origin or url.startswith(("data:", "blob:")):
            route.continue_()
        else:
            site.offsite.append(url)
            route.abort()

    context.route("**/*", guard)
    page.on("console", lambda m: m.type == "error" and site.console_errors.append(m.text))
    page.on("pageerror", lambda e: site.console_errors.append(str(e)))
    return site


@pytest.fixture
def shots_dir(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("TAGSIFT_UI_SCREENSHOTS") or tmp_path / "shots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


#: Drops ``files`` (each made by :func:`drop_file`) on the page's drop zone, as a user dragging them from the desktop.
DROP = """([files]) => {
  const dt = new DataTransfer();
  for (const f of files) {
    const bytes = Uint8Array.from(atob(f.b64), c => c.charCodeAt(0));
    dt.items.add(new File([bytes], f.name, {type: f.type}));
  }
  const zone = document.querySelector('[data-drop]');
  zone.dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true}));
}"""


def drop_file(name: str, data: bytes, media: str) -> dict:
    """A file for :data:`DROP`: its name, bytes (base64) and media type."""
    return {"name": name, "b64": base64.b64encode(data).decode(), "type": media}


def named_key(name: str) -> str:
    with session_scope() as session:
        return create_api_key(session=session, owner_name=f"team-{uuid.uuid4().hex[:8]}", name=name)


def sign_in(site: Site, key: str) -> None:
    page = site.page
    page.goto(site.url("/"))
    assert "/ui/login" in page.url
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/ui/datasets")


@pytest.fixture
def served(prod_env, tmp_path: Path) -> Iterator[ApiServer]:
    """A real ``tagsift serve`` on this test's database and queue."""
    server = ApiServer(tmp_path / "api.log", {**os.environ, "TAGSIFT_LOG_LEVEL": "WARNING"})
    try:
        yield server
    finally:
        server.stop()

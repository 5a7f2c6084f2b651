"""In a real browser: names holding HTML and script stay text on every page (no script runs, no element is made),
the CSP blocks an injected inline script, and a cross-site form post is refused."""

from __future__ import annotations

import functools
import http.server
import json
import threading
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from app.db import session_scope
from app.models import Item
from tests.app.conftest import image_bytes
from tests.web.conftest import named_key, open_site, sign_in

pytestmark = [pytest.mark.integration]

XSS = '<img src=x onerror="window.__xss=1">'
SCRIPT_END = "</script><script>window.__xss=2</script>"
TAGS = [XSS, SCRIPT_END, "dog"]
FILE_XSS = "<img src=x onerror=window.__xss=3>"  # no double quote: multipart encodes it in file names


def _xss_dataset(base_url: str, key: str) -> str:
    rows = [{"file": f"{FILE_XSS}{i}.png", "candidates": [TAGS[i % 3], TAGS[(i + 1) % 3]]} for i in range(3)]
    files = [("manifest", ("m.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode(), "application/x-ndjson"))]
    files += [("images", (f"{FILE_XSS}{i}.png", image_bytes(300 + i), "image/png")) for i in range(3)]
    r = httpx.post(
        f"{base_url}/datasets",
        headers={"Authorization": f"Bearer {key}"},
        data={"name": f"{XSS}{SCRIPT_END}", "classes": json.dumps(TAGS)},
        files=files,
        timeout=60,
    )
    assert r.status_code == 201, r.text
    dataset_id = r.json()["id"]
    with session_scope() as session:  # as a finished job leaves them: model tags with probabilities
        for item in session.scalars(select(Item).where(Item.dataset_id == dataset_id)):
            a, b = item.candidates
            item.label, item.label_source, item.model_id = a, "model", "m" * 32
            item.confidence, item.margin, item.needs_review, item.probs = 0.6, 0.2, True, {a: 0.6, b: 0.4}
    return dataset_id


def _inert(page) -> None:
    assert page.evaluate("window.__xss") is None
    assert page.evaluate("document.querySelectorAll('img[src=\"x\"]').length") == 0


def test_html_in_names_stays_text_everywhere(browser, served, tmp_path: Path) -> None:
    key = named_key(XSS)  # the reviewer's own name too
    dataset_id = _xss_dataset(served.base_url, key)
    site = open_site(browser, served.base_url, tmp_path)
    page = site.page
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    sign_in(site, key)
    _inert(page)
    assert XSS in page.locator("table.list").inner_text()
    page.goto(site.url(f"/ui/datasets/{dataset_id}"))
    _inert(page)
    page.goto(site.url(f"/ui/datasets/{dataset_id}/review?needs_review=all"))
    page.locator("body[data-review-ready='1']").wait_for()
    page.keyboard.press("1")  # a decision: the card and the focused view are redrawn with the tag
    page.locator("body[data-decisions='1']").wait_for()
    _inert(page)
    assert XSS in page.locator("[data-focus]").inner_text() or SCRIPT_END in page.locator(".grid").inner_text()
    item_id = page.locator(".card").first.get_attribute("data-id")
    page.goto(site.url(f"/ui/items/{item_id}"))
    _inert(page)
    # the upload form's error rows: a file name with HTML, missing from the upload
    page.goto(site.url("/ui/datasets/new"))
    page.get_by_label("Name", exact=True).fill(XSS)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"file": f"{XSS}.png", "candidates": ["dog", "cat"]}) + "\n")
    page.get_by_label("Manifest (JSONL or CSV)").set_input_files(str(manifest))
    page.get_by_label("Images").set_input_files([])
    page.get_by_role("button", name="Create dataset").click()
    page.locator("[data-errors]:not([hidden])").wait_for()
    _inert(page)
    assert dialogs == []
    assert site.offsite == []


def test_csp_blocks_injected_inline_script(browser, served, tmp_path: Path) -> None:
    site = open_site(browser, served.base_url, tmp_path)
    page = site.page
    page.goto(site.url("/ui/login"))
    page.evaluate(
        "() => { const s = document.createElement('script'); s.textContent = 'window.__inline = 1';"
        " document.body.appendChild(s); }"
    )
    assert page.evaluate("window.__inline") is None
    assert any("Content Security Policy" in e for e in site.console_errors)


def test_cross_site_form_post_is_refused(browser, served, tmp_path: Path) -> None:
    """A page on another origin (its own little server) auto-submits a form to the app while the victim is signed
    in: refused, nothing changes."""
    key = named_key("Victim")
    dataset_id = _xss_dataset(served.base_url, key)
    site = open_site(browser, served.base_url, tmp_path)
    sign_in(site, key)
    target = f"{served.base_url}/ui/datasets/{dataset_id}/delete"
    (tmp_path / "evil.html").write_text(
        f'<form method="post" action="{target}"><input name="csrf_token" value="guess"></form>'
        "<script>document.forms[0].submit()</script>"
    )
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    evil_server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=evil_server.serve_forever, daemon=True).start()
    try:
        site.context.unroute("**/*")  # this test visits the other origin on purpose
        evil = site.context.new_page()
        with evil.expect_response(lambda r: r.url == target) as answer:
            evil.goto(f"http://localhost:{evil_server.server_port}/evil.html")
        assert answer.value.status in (401, 403), answer.value.status
    finally:
        evil_server.shutdown()
    r = httpx.get(f"{served.base_url}/datasets/{dataset_id}", headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200

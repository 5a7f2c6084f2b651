"""Dropping files on the upload form in Chromium: images with their manifest, and one zip, each make a dataset."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.app.conftest import image_bytes, zip_bytes
from tests.web.conftest import DROP, drop_file, named_key, open_site, sign_in

pytestmark = [pytest.mark.integration]


def _create_by_drop(site, name: str, files: list[dict]) -> str:
    page = site.page
    page.goto(site.url("/ui/datasets/new"))
    page.get_by_label("Name", exact=True).fill(name)
    page.evaluate(DROP, [files])
    page.get_by_role("button", name="Create dataset").click()
    page.wait_for_url(re.compile(r"/ui/datasets/[0-9a-f]{32}$"))
    return page.locator('[data-count="items"]').inner_text()


def test_dropped_images_with_manifest_and_dropped_zip_make_datasets(browser, served, tmp_path: Path) -> None:
    site = open_site(browser, served.base_url, tmp_path)
    sign_in(site, named_key("Dropper"))
    rows = [{"file": f"d{i}.png", "candidates": ["cat", "dog"]} for i in range(3)]
    manifest = "".join(json.dumps(r) + "\n" for r in rows).encode()
    images = [drop_file(f"d{i}.png", image_bytes(700 + i), "image/png") for i in range(3)]
    assert _create_by_drop(site, "dropped files", [drop_file("manifest.jsonl", manifest, "text/plain"), *images]) == "3"
    members = {f"z{i}.png": image_bytes(800 + i) for i in range(4)}
    members["manifest.jsonl"] = "".join(
        json.dumps({"file": f"z{i}.png", "candidates": ["cat", "lynx"]}) + "\n" for i in range(4)
    ).encode()
    assert _create_by_drop(site, "dropped zip", [drop_file("set.zip", zip_bytes(members), "application/zip")]) == "4"
    assert site.offsite == []

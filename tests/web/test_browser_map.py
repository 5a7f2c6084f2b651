"""The similarity map in Chromium: the layout the worker stores (``worker.map_layout`` on features in a real
``ml.features.FeatureCache``), drawn on a canvas; a lasso drawn with the mouse selects one cluster; "assign" tags
only the selected items whose candidates hold the tag and says how many it skipped; "similar to this item" from
the review page's focus view selects the item's nearest neighbours."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from sqlalchemy import select

from app.db import session_scope
from app.models import Dataset, Item, Job, utcnow
from app.storage import get_storage
from ml.features import FeatureCache
from tests.app.conftest import image_bytes
from tests.web.conftest import named_key, open_site, sign_in
from worker.map_layout import NEIGHBOURS, store_layout

pytestmark = [pytest.mark.integration]

TAGS = ["cat", "dog", "fox"]
PER = 16  # items per cluster (more than NEIGHBOURS + 1: an item's neighbours are all in its cluster)


def _dataset(base_url: str, key: str) -> str:
    rows = []
    for i in range(3 * PER):
        cluster = i // PER
        # cluster 0's items mostly hold "cat"; every fourth does not (the map's assign must skip those)
        other = TAGS[(cluster + 1) % 3]
        candidates = [TAGS[cluster], other] if not (cluster == 0 and i % 4 == 3) else [other, TAGS[2]]
        rows.append({"file": f"c{cluster}-{i:02d}.png", "candidates": candidates})
    files = [("manifest", ("m.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode(), "application/x-ndjson"))]
    files += [("images", (r["file"], image_bytes(400 + i, size=(48, 48)), "image/png")) for i, r in enumerate(rows)]
    r = httpx.post(
        f"{base_url}/datasets",
        headers={"Authorization": f"Bearer {key}"},
        data={"name": "map", "classes": json.dumps(TAGS)},
        files=files,
        timeout=60,
    )
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _finished_job_with_map(dataset_id: str, tmp: Path) -> dict[str, list[str]]:
    """Features in three clusters (by file name) in a real feature cache; the worker's function stores the map and
    a succeeded job names it, as a finished training job does. Returns the item ids per cluster."""
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(3, 32)) * 3
    cache = FeatureCache(tmp / "features")
    with session_scope() as session:
        dataset = session.get(Dataset, dataset_id)
        items = list(session.scalars(select(Item).where(Item.dataset_id == dataset_id).order_by(Item.seq)))
        clusters: dict[str, list[str]] = {}
        for item in items:
            k = int(item.file[1])
            clusters.setdefault(str(k), []).append(item.id)
            feature = centres[k] + rng.normal(size=32) * 0.2
            cache.put("test-backbone", item.sha256, 0, torch.from_numpy(feature.astype(np.float32)))
        features = torch.stack([cache.get("test-backbone", i.sha256, 0) for i in items])
        layout = store_layout(get_storage(), features, [i.id for i in items])
        assert layout and layout["items"] == 3 * PER
        now = utcnow()
        session.add(
            Job(
                owner_id=dataset.owner_id,
                dataset_id=dataset_id,
                status="succeeded",
                metrics={"layout": layout},
                started_at=now,
                finished_at=now,
            )
        )
    return clusters


def _lasso(page, points: list[tuple[float, float]]) -> None:
    box = page.locator("[data-map-canvas]").bounding_box()
    page.keyboard.down("Shift")
    page.mouse.move(box["x"] + points[0][0], box["y"] + points[0][1])
    page.mouse.down()
    for x, y in points[1:] + points[:1]:
        page.mouse.move(box["x"] + x, box["y"] + y, steps=4)
    page.mouse.up()
    page.keyboard.up("Shift")


def test_map_lasso_assign_and_similar(browser, served, tmp_path: Path, shots_dir: Path) -> None:
    key = named_key("Mapper")
    dataset_id = _dataset(served.base_url, key)
    clusters = _finished_job_with_map(dataset_id, tmp_path)
    site = open_site(browser, served.base_url, shots_dir)
    sign_in(site, key)
    page = site.page
    page.set_viewport_size({"width": 1280, "height": 800})
    page.goto(site.url(f"/ui/datasets/{dataset_id}/map"))
    page.locator("body[data-map-ready='1']").wait_for()
    assert f"{3 * PER} items" in page.locator("[data-map-status]").inner_text()
    # a lasso (a polygon drawn with the mouse, shift held) around cluster 0's points
    spots = np.array([page.evaluate("id => tagsiftMap.screenOf(id)", i) for i in clusters["0"]])
    others = np.array([page.evaluate("id => tagsiftMap.screenOf(id)", i) for k in "12" for i in clusters[k]])
    lo, hi = spots.min(axis=0) - 10, spots.max(axis=0) + 10
    assert not ((others > lo) & (others < hi)).all(axis=1).any()  # the clusters are apart on the map
    cx, cy = (lo + hi) / 2
    _lasso(page, [(lo[0], cy), (cx, lo[1]), (hi[0], lo[1]), (hi[0], hi[1]), (lo[0], hi[1])])
    assert sorted(page.evaluate("tagsiftMap.selectedIds()")) == sorted(clusters["0"])
    assert page.locator("[data-map-selected]").inner_text() == str(PER)
    site.shot("map")
    page.select_option("[data-map-tag]", "cat")
    page.locator("[data-map-assign]").click()
    page.locator("body[data-map-assigned='1']").wait_for()
    with session_scope() as session:
        items = {i.id: i for i in session.scalars(select(Item).where(Item.dataset_id == dataset_id))}
    holding = [i for i in clusters["0"] if "cat" in items[i].candidates]
    assert 0 < len(holding) < PER
    assert all(items[i].label == "cat" and items[i].label_source == "reviewer" for i in holding)
    assert all(items[i].label is None for i in set(items) - set(holding))
    result = page.locator("[data-map-result]").inner_text()
    assert f"Tagged {len(holding)} items cat; {PER - len(holding)} skipped" in result
    # "similar to this item" from the review page's focus view
    page.goto(site.url(f"/ui/datasets/{dataset_id}/review?needs_review=all"))
    page.locator("body[data-review-ready='1']").wait_for()
    focused = page.evaluate("document.querySelector('.card.focused').dataset.id")
    page.locator("[data-focus-similar]").click()
    page.wait_for_url(re.compile(r"/map\?near="))
    page.locator("body[data-map-ready='1']").wait_for()
    chosen = set(page.evaluate("tagsiftMap.selectedIds()"))
    home = next(ids for ids in clusters.values() if focused in ids)
    assert focused in chosen and len(chosen) == NEIGHBOURS + 1 and chosen <= set(home)
    assert site.offsite == []

"""The similarity map part of ``tagsift bench ui``: a dataset of ``n`` items (10,000 by default) with a stored map,
opened in Chromium; times the first paint (page ready with every point drawn) and a lasso drawn with the mouse.

The items are rows written to the database directly (their images are never fetched: at the whole-map zoom the
page draws points, not thumbnails) and their features are synthetic (``clusters`` Gaussian blobs in 64 dimensions);
the map itself is the worker's own code (``worker.map_layout.layout_blob``, i.e. ``ml.layout``) on those features,
stored in the same blob store and named by a succeeded job, as a finished training job leaves it."""

from __future__ import annotations

import hashlib
import math
import statistics
import time
from collections.abc import Callable

import numpy as np


def seed_map_dataset(owner_id: str, classes: list[str], n: int, clusters: int = 10, seed: int = 5) -> str:
    """A dataset of ``n`` items with model tags and a stored map; returns its id."""
    from app.db import session_scope
    from app.models import Dataset, Item, Job, utcnow
    from app.storage import get_storage
    from worker.map_layout import layout_blob

    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, 64)) * 2
    which = rng.integers(0, clusters, size=n)
    features = (centres[which] + rng.normal(size=(n, 64))).astype(np.float32)
    with session_scope() as session:
        dataset = Dataset(owner_id=owner_id, name=f"bench-map-{n}", classes=classes, item_count=n, review_count=n)
        session.add(dataset)
        session.flush()
        ids = []
        for k in range(n):
            tag = classes[int(which[k]) % len(classes)]
            others = [classes[(int(which[k]) + j) % len(classes)] for j in (1, 2)]
            margin = float(rng.random() * 0.6)
            item = Item(
                dataset_id=dataset.id,
                seq=k,
                file=f"m{k:05d}.jpg",
                sha256=hashlib.sha256(f"bench-map-{seed}-{k}".encode()).hexdigest(),
                width=32,
                height=32,
                candidates=sorted([tag, *others]),
                label=tag,
                label_source="model",
                confidence=0.5 + margin / 2,
                margin=margin,
                needs_review=True,
            )
            session.add(item)
            ids.append(item)
        session.flush()
        blob = get_storage().put(layout_blob(features, [i.id for i in ids]))
        now = utcnow()
        session.add(
            Job(
                owner_id=owner_id,
                dataset_id=dataset.id,
                status="succeeded",
                metrics={"layout": {"blob": blob, "items": n, "method": "pca", "neighbours": 12}},
                started_at=now,
                finished_at=now,
            )
        )
        return dataset.id


def time_map(browser, base: str, key: str, dataset_id: str, runs: int, out: Callable[[str], None]) -> dict:
    """Median over ``runs`` new browser contexts: page ready (first paint of every point) and a lasso."""
    ready, lasso, inpage = [], [], []
    for run in range(runs):
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        page = context.new_page()
        page.goto(f"{base}/ui/login")
        page.get_by_label("API key").fill(key)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url("**/ui/datasets")
        t0 = time.perf_counter()
        page.goto(f"{base}/ui/datasets/{dataset_id}/map", wait_until="commit")
        page.locator("body[data-map-ready='1']").wait_for(state="attached")
        ready.append(time.perf_counter() - t0)
        count = page.locator("[data-map-status]").inner_text()
        box = page.locator("[data-map-canvas]").bounding_box()
        cx, cy, r = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2, min(box["width"], box["height"]) / 4
        points = [(cx + r * math.cos(a * math.pi / 12), cy + r * math.sin(a * math.pi / 12)) for a in range(25)]
        t0 = time.perf_counter()
        page.keyboard.down("Shift")
        page.mouse.move(*points[0])
        page.mouse.down()
        for p in points[1:]:
            page.mouse.move(*p)
        page.mouse.up()
        page.keyboard.up("Shift")
        while page.locator("[data-map-selected]").inner_text() == "0":  # (wait_for_function: the CSP forbids eval)
            time.sleep(0.005)
        lasso.append(time.perf_counter() - t0)
        selected = int(page.locator("[data-map-selected]").inner_text())
        inpage.append(float(page.locator("[data-map]").get_attribute("data-lasso-ms")))
        out(
            f"map run {run}: {count.split(',')[0]} ready in {ready[-1]:.3f} s; lasso of 25 mouse moves selected "
            f"{selected} items in {lasso[-1]:.3f} s (the selection itself {inpage[-1]:.1f} ms in the page)"
        )
        context.close()
    return {
        "map_ready_s": statistics.median(ready),
        "lasso_s": statistics.median(lasso),
        "lasso_select_ms": statistics.median(inpage),
    }

"""``tagsift bench ui``: the review page in a real browser (Debian's Chromium through Playwright), on this machine.

It starts a ``tagsift serve`` process of its own on a temp data dir (embedded SQLite), uploads ``items`` CIFAR-10
photos with three candidate tags each, gives every item a model tag with per-candidate probabilities (as a finished
job leaves them, written to the database directly: no training is timed here), signs in and measures:

1. **page ready**: from ``page.goto`` of the review page (``needs_review=all``, ``items`` cards) until its script is
   set up and every thumbnail has loaded, in a new browser context each run (empty browser cache; the server's
   thumbnail cache is warm after the first run, so run 1 is reported apart as the cold start) -> median of runs.
2. **decision latency**: key ``1`` pressed on the focused item until the page has the server's answer, i.e. after
   the ``item_reviews`` row and the item are committed (the answer is sent after the commit), measured in the page
   with ``performance.now()`` -> median and p90 over ``decisions`` keys; the rows are then counted in the database.

3. **the similarity map** (``bench/ui_map.py``): a dataset of ``map_items`` (10,000) items with a stored map: page
   ready (every point drawn) and a lasso drawn with 25 mouse moves, from the press until the count shows -> medians.

Printed last: one ``ui review_ready_s=<s> map_ready_s=<s> lasso_s=<s> key_ms=<ms>`` line.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

from bench.ui_map import seed_map_dataset, time_map

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip

_MEASURE = """() => {
  window.__lat = [];
  document.addEventListener('keydown', () => { window.__t0 = performance.now(); }, true);
  new MutationObserver(() => { window.__lat.push(performance.now() - window.__t0); })
    .observe(document.body, {attributes: true, attributeFilter: ['data-decisions']});
}"""
_BREAKDOWN = """() => {
  const nav = performance.getEntriesByType('navigation')[0];
  const thumbs = performance.getEntriesByType('resource').filter(r => r.name.includes('/ui/thumbs/'));
  const server = thumbs.map(r => r.responseStart - r.requestStart).sort((a, b) => a - b);
  return {html_ms: nav.responseEnd, dom_ms: nav.domContentLoadedEventEnd,
          thumbs: thumbs.length, last_thumb_ms: Math.max(...thumbs.map(r => r.responseEnd)),
          thumb_wait_median_ms: server[Math.floor(server.length / 2)]};
}"""
_IMAGES_DONE = "() => Array.from(document.images).filter(i => i.src).every(i => i.complete && i.naturalWidth > 0)"


def _free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"tagsift serve exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("tagsift serve did not listen in time")


def run_ui_bench(
    *,
    cifar10_path: Path,
    items: int,
    runs: int,
    decisions: int,
    map_items: int = 10_000,
    map_runs: int = 3,
    out: Callable[[str], None] = print,
) -> dict:
    import httpx
    from playwright.sync_api import sync_playwright

    from bench.data import load_cifar10

    workdir = Path(tempfile.mkdtemp(prefix="tagsift-bench-ui-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAGSIFT_")}
    env.update({"TAGSIFT_DATA_DIR": str(workdir / "var"), "TAGSIFT_LOG_LEVEL": "WARNING"})
    os.environ.update({"TAGSIFT_DATA_DIR": env["TAGSIFT_DATA_DIR"]})
    for k in [k for k in os.environ if k.startswith("TAGSIFT_") and k not in env]:
        del os.environ[k]
    from app.db import reset_caches, session_scope, upgrade_database

    reset_caches()
    upgrade_database()
    from sqlalchemy import func, select

    from app.models import Dataset, Item, ItemReview
    from app.services.api_keys import create_api_key
    from app.services.datasets import refresh_review_count

    with session_scope() as session:
        key = create_api_key(session=session, owner_name="bench-ui", name="Bench")
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "worker.cli", "serve", "--port", str(port)], env=env, start_new_session=True
    )
    try:
        _wait_port(port, server)
        per_class = -(-items // 10)
        data = load_cifar10(cifar10_path, "test", per_class=per_class, seed=3)
        classes = list(data.classnames)
        rng = random.Random(3)
        rows, files = [], []
        for i, (image, label) in enumerate(list(zip(data.images, data.labels.tolist(), strict=True))[:items]):
            true = classes[label]
            others = rng.sample([c for c in classes if c != true], 2)
            rows.append({"file": f"p{i:04d}.jpg", "candidates": sorted([true, *others])})
            files.append(("images", (f"p{i:04d}.jpg", image, "image/jpeg")))
        manifest = "".join(json.dumps(r) + "\n" for r in rows).encode()
        r = httpx.post(
            f"{base}/datasets",
            headers={"Authorization": f"Bearer {key}"},
            data={"name": "bench-ui", "classes": json.dumps(classes)},
            files=[("manifest", ("m.jsonl", manifest, "application/x-ndjson")), *files],
            timeout=300,
        )
        r.raise_for_status()
        dataset_id = r.json()["id"]
        with session_scope() as session:
            for item in session.scalars(select(Item).where(Item.dataset_id == dataset_id)):
                p = sorted((rng.random() for _ in item.candidates), reverse=True)
                total = sum(p)
                probs = {c: round(x / total, 4) for c, x in zip(item.candidates, p, strict=True)}
                ranked = sorted(probs.values(), reverse=True)
                item.label = max(probs, key=probs.get)
                item.label_source, item.model_id, item.probs = "model", "0" * 32, probs
                item.confidence, item.margin, item.needs_review = ranked[0], ranked[0] - ranked[1], True
            session.flush()
            refresh_review_count(session, dataset_id)  # what a job's save does after its bulk write

        url = f"{base}/ui/datasets/{dataset_id}/review?needs_review=all"
        ready: list[float] = []
        latencies: list[float] = []
        breakdown: list[dict] = []
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            for run in range(runs + 1):
                context = browser.new_context(viewport={"width": 1360, "height": 900})
                page = context.new_page()
                page.goto(f"{base}/ui/login")
                page.get_by_label("API key").fill(key)
                page.get_by_role("button", name="Sign in").click()
                page.wait_for_url("**/ui/datasets")
                t0 = time.perf_counter()
                page.goto(url, wait_until="commit")
                page.locator("body[data-review-ready='1']").wait_for(state="attached")
                while not page.evaluate(_IMAGES_DONE):
                    time.sleep(0.005)
                ready.append(time.perf_counter() - t0)
                parts = page.evaluate(_BREAKDOWN)
                breakdown.append(parts)
                cards = page.locator(".grid .card").count()
                if cards != items:
                    raise RuntimeError(f"the review page shows {cards} cards, expected {items}")
                cold = " (cold)" if run == 0 else ""
                out(
                    f"run {run}: review page with {cards} items ready in {ready[-1]:.3f} s{cold} (in the page: HTML "
                    f"{parts['html_ms']:.0f} ms, DOM ready {parts['dom_ms']:.0f} ms, {parts['thumbs']} thumbnails, "
                    f"last {parts['last_thumb_ms']:.0f} ms, server wait per thumbnail median "
                    f"{parts['thumb_wait_median_ms']:.0f} ms)"
                )
                if run == runs:
                    page.evaluate(_MEASURE)
                    for k in range(decisions):
                        page.keyboard.press("1")
                        page.locator(f"body[data-decisions='{k + 1}']").wait_for(state="attached")
                    latencies = page.evaluate("window.__lat")
                context.close()
            with session_scope() as session:
                owner_id = session.get(Dataset, dataset_id).owner_id
            map_id = seed_map_dataset(owner_id, classes, map_items)
            mapped = time_map(browser, base, key, map_id, map_runs, out)
            browser.close()
        with session_scope() as session:
            stored = session.scalar(select(func.count()).select_from(ItemReview))
        if stored != decisions:
            raise RuntimeError(f"{stored} review rows stored for {decisions} key presses")
        warm = ready[1:]
        result = {
            "items": items,
            "runs": runs,
            "ready_cold_s": ready[0],
            "ready_median_s": statistics.median(warm),
            "ready_min_s": min(warm),
            "ready_max_s": max(warm),
            "decisions": decisions,
            "decision_median_ms": statistics.median(latencies),
            "decision_p90_ms": sorted(latencies)[int(0.9 * (len(latencies) - 1))],
            "map_items": map_items,
            **mapped,
        }
        out(
            f"review page, {items} items: cold {result['ready_cold_s']:.3f} s, median {result['ready_median_s']:.3f} s "
            f"(min {result['ready_min_s']:.3f}, max {result['ready_max_s']:.3f}) over {runs} runs"
        )
        out(
            f"keyboard decision to stored row: median {result['decision_median_ms']:.1f} ms, "
            f"p90 {result['decision_p90_ms']:.1f} ms over {decisions} keys ({stored} rows stored)"
        )
        out(
            f"map, {map_items} items: ready median {result['map_ready_s']:.3f} s, lasso median "
            f"{result['lasso_s']:.3f} s over {map_runs} runs"
        )
        out(
            f"ui review_ready_s={result['ready_median_s']:.3f} map_ready_s={result['map_ready_s']:.3f} "
            f"lasso_s={result['lasso_s']:.3f} key_ms={result['decision_median_ms']:.1f}"
        )
        return result
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
        shutil.rmtree(workdir, ignore_errors=True)

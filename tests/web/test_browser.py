"""The web app in a real browser (Debian's Chromium, Playwright): the annotator's whole day on real CIFAR-10 photos.

A real ``tagsift serve`` and a real ``tagsift worker`` with the offline reference backbone, PostgreSQL and Redis.
Sign in, upload (first with a broken manifest: the per-item errors show next to their rows), start a job and watch
its progress reach the end, review ten items with the keyboard (one undo) and check the database, see the live
refits those decisions started retag items on the open review page (marked, no reload), bulk-accept a shift-click
selection, open an item's history, download the model and try /predict, sign out. No page may ask for a
URL outside the served origin. Screenshots of each page go to ``$TAGSIFT_UI_SCREENSHOTS`` (docs/ui/).
"""

from __future__ import annotations

import io
import json
import os
import random
import re
import zipfile
from pathlib import Path

import pytest
from sqlalchemy import select

from app.db import session_scope
from app.models import Item, ItemReview
from tests.ml.reference_fixtures import (  # noqa: F401 - pytest fixtures
    REFERENCE_CACHE_DIR,
    cifar10_path,
    reference_build,
    reference_cache_dir,
)
from tests.web.conftest import DROP, drop_file, named_key, open_site, sign_in
from tests.worker.conftest import FAST_LEASES, ApiServer, WorkerProcess

pytestmark = [pytest.mark.slow, pytest.mark.integration]

PER_CLASS = 3
CANDIDATES = 3
#: Text that only a printed dict, list of dicts or JSON object puts on a page.
RAW = re.compile(r"\{'|\{\"|': |\": |\[\{|\}\]")
#: The upload form's example manifest line (JSON on purpose).
MANIFEST_EXAMPLE = '{"file": "a.jpg", "candidates": ["cat", "lynx"]}'
MOVES = {"Space": 1, "ArrowRight": 1, "j": 1, "ArrowLeft": -1, "k": -1}  # keys that move the focus, by how much


def _cifar_files(archive: Path, folder: Path) -> tuple[list[str], Path, list[Path], dict[str, str]]:
    """Real CIFAR-10 test photos written as files, with a manifest of three candidates each (the true tag and two
    others); returns (classes, manifest path, image paths, truth by file name)."""
    from bench.data import load_cifar10

    data = load_cifar10(archive, "test", per_class=PER_CLASS + 1, seed=1)
    classes = list(data.classnames)
    rng = random.Random(1)
    seen: dict[int, int] = {}
    rows, paths, truth = [], [], {}
    folder.mkdir(parents=True, exist_ok=True)
    for i, (image, label) in enumerate(zip(data.images, data.labels.tolist(), strict=True)):
        seen[label] = seen.get(label, 0) + 1
        if seen[label] > PER_CLASS:
            continue
        name = f"photo{i:03d}.jpg"
        (folder / name).write_bytes(image)
        paths.append(folder / name)
        true = classes[label]
        rows.append({"file": name, "candidates": sorted([true, *rng.sample([c for c in classes if c != true], 2)])})
        truth[name] = true
    manifest = folder / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return classes, manifest, paths, truth


@pytest.fixture
def stack(prod_env, tagsift_env, reference_build, tmp_path: Path):  # noqa: F811
    """API + worker processes with the reference backbone."""
    tagsift_env(
        database_url=prod_env.database_url,
        broker_url=prod_env.broker_url,
        queue=prod_env.queue,
        backbone="reference",
        model_cache_dir=str(REFERENCE_CACHE_DIR),
    )
    api = ApiServer(tmp_path / "api.log", {**os.environ, "TAGSIFT_LOG_LEVEL": "WARNING"})
    worker = WorkerProcess(tmp_path / "worker.log", {**os.environ, **FAST_LEASES, "TAGSIFT_JOB_LEASE_SECONDS": "60"})
    try:
        yield api, worker
    finally:
        worker.stop()
        api.stop()


def _reviews(reviewer: str) -> list[ItemReview]:
    with session_scope() as session:
        return list(session.scalars(select(ItemReview).where(ItemReview.reviewer == reviewer).order_by(ItemReview.id)))


def _item(item_id: str) -> Item:
    with session_scope() as session:
        return session.get(Item, item_id)


def _settled_refit(dataset_id: str):
    """The dataset's latest refit once none is queued or running and it read every decision (the live process
    works through them)."""
    from app.models import Dataset, Refit
    from tests.worker.conftest import wait_for

    def settled():
        with session_scope() as session:
            refits = list(session.scalars(select(Refit).where(Refit.dataset_id == dataset_id).order_by(Refit.revision)))
            seq = session.get(Dataset, dataset_id).decision_seq
        done = refits and all(r.status not in ("queued", "running") for r in refits)
        # and the last one read every decision: a refit that finds decisions made while it ran queues one more just
        # after its own commit, so "none queued" alone can be seen in between
        return refits[-1] if done and refits[-1].decision_seq == seq else None

    return wait_for(settled, timeout=240, what="the live refits")


def _changed_by(dataset_id: str) -> dict[str, str]:
    """{item id: tag} of the items whose tag a refit changed (and no reviewer decided since)."""
    with session_scope() as session:
        rows = session.scalars(
            select(Item).where(
                Item.dataset_id == dataset_id, Item.refit_revision.is_not(None), Item.label_source == "model"
            )
        )
        return {it.id: it.label for it in rows}


def review_ready(site) -> None:
    """Wait for the review page's script to be set up; on a timeout, say what the browser saw."""
    try:
        site.page.locator("body[data-review-ready='1']").wait_for(state="attached", timeout=30_000)
    except Exception as exc:
        html = site.page.content()
        raise AssertionError(f"review page not ready: {site.console_errors} {site.page.url} {html[:3000]}") from exc


def test_annotator_walkthrough(browser, stack, cifar10_path, shots_dir, tmp_path: Path):  # noqa: F811
    api, worker = stack
    key = named_key("Ada Annotator")
    site = open_site(browser, api.base_url, shots_dir)
    page = site.page

    # --- sign in ---
    page.goto(site.url("/ui/login"))
    site.shot("login")
    sign_in(site, key)
    assert page.get_by_text("Ada Annotator").is_visible()

    # --- upload: a broken manifest first (errors next to the rows), then the real one ---
    classes, manifest, images, truth = _cifar_files(cifar10_path, tmp_path / "photos")
    page.get_by_role("link", name="New dataset").click()
    page.get_by_label("Name", exact=True).fill("CIFAR-10 sample")
    page.get_by_label("Classes (optional)").fill(json.dumps(classes))
    broken = tmp_path / "broken.jsonl"
    broken.write_text(manifest.read_text() + json.dumps({"file": "not-there.jpg", "candidates": ["cat"]}) + "\n")
    page.get_by_label("Manifest (JSONL or CSV)").set_input_files(str(broken))
    page.get_by_label("Images").set_input_files([str(p) for p in images])
    page.get_by_role("button", name="Create dataset").click()
    bad_row = page.locator("tr.bad-row", has_text="not-there.jpg")
    bad_row.wait_for()
    assert "not-there.jpg" in bad_row.inner_text()
    site.shot("upload-errors")
    page.get_by_label("Manifest (JSONL or CSV)").set_input_files(str(manifest))
    page.get_by_role("button", name="Create dataset").click()
    page.wait_for_url(re.compile(r"/ui/datasets/[0-9a-f]{32}$"))
    dataset_id = page.url.rsplit("/", 1)[1]
    assert page.locator('[data-count="items"]').inner_text() == str(len(images))

    # --- start a job, watch it to the end ---
    page.get_by_label("Method").select_option("prompt_alignment")
    page.get_by_label("epochs").fill("3")
    site.shot("dataset")
    page.get_by_role("button", name="Start job").click()
    page.wait_for_url("**/ui/jobs/*")
    page.locator("[data-job-status]", has_text="succeeded").wait_for(timeout=240_000)
    bars = page.locator(".stages progress")
    vals = [bars.nth(k).evaluate("b => b.value") for k in range(bars.count())]
    assert vals == [1, 1, 1, 1], (vals, site.console_errors, page.url)
    assert page.locator("[data-events] tr").count() >= 5
    # the finished job's quality report: the page reloads itself once to show it, in words and charts
    page.locator("[data-quality-headline]").wait_for(timeout=30_000)
    assert re.match(r"^\d+\.\d % of the labels right", page.locator("[data-quality-headline]").inner_text())
    assert page.locator("[data-quality-basis]").inner_text() and page.locator("[data-quality-next]").inner_text()
    assert page.locator("[data-quality] svg").count() >= 1  # at least the epoch curves
    assert not RAW.search(page.locator("main").inner_text()), RAW.search(page.locator("main").inner_text())
    site.shot("job")
    page.goto(site.url(f"/ui/datasets/{dataset_id}"))
    page.locator("[data-quality]").scroll_into_view_if_needed()
    assert not RAW.search(page.locator("main").inner_text().replace(MANIFEST_EXAMPLE, ""))
    site.shot("quality")
    # the finished job stored the similarity map from its cached features (worker/map_layout.py)
    mapped = page.request.get(site.url(f"/ui/api/datasets/{dataset_id}/map")).json()
    assert mapped["job"] and len(mapped["items"]) == len(images) and all(len(nn) == 12 for nn in mapped["nn"])
    assert len({(x, y) for _, x, y, *_ in mapped["items"]}) > len(images) // 2  # placed, not piled on one spot

    # --- review ten items with the keyboard, one undo ---
    page.goto(site.url(f"/ui/datasets/{dataset_id}/review?needs_review=all"))
    review_ready(site)
    cards = page.locator(".grid .card")
    assert cards.count() == len(images)
    assert page.locator(".card .chip .p").count() > 0  # the model's probability on the chips
    site.shot("review")

    def chips(i: int) -> list[str]:
        return cards.nth(i).locator(".chip").evaluate_all("cs => cs.map(c => c.dataset.tag)")

    def label(i: int) -> str:
        return cards.nth(i).get_attribute("data-label")

    ids = [cards.nth(i).get_attribute("data-id") for i in range(12)]
    expected: dict[str, str] = {}
    decisions = 0

    def press(k: str) -> None:
        nonlocal decisions
        page.keyboard.press(k)
        if k not in MOVES:
            decisions += 1
            page.locator(f"body[data-decisions='{decisions}']").wait_for()

    def focused_on(i: int) -> None:
        """The focused card (one) is item ``i`` and the focus panel shows its file."""
        page.locator(f".grid .card.focused[data-id='{ids[i]}']").wait_for()
        assert page.locator(".grid .card.focused").count() == 1
        assert page.locator("[data-focus-file]").inner_text() == cards.nth(i).locator(".file").inner_text()

    # arrows (and j/k) move the focus without deciding; they come back to the item they left before the next key,
    # so the decisions land on the same items as without them (Space skips one: ids[5])
    plan = ["ArrowLeft", "1", "a", "ArrowRight", "ArrowRight", "ArrowLeft", "j", "k", "ArrowLeft", "2", "1", "a"]
    plan += ["UNDO", "3", "Space", "a", "1", "2", "a", "1"]
    i = 0
    focused_on(0)
    for step in plan:
        if step in MOVES:
            press(step)
            i = max(0, i + MOVES[step])  # ArrowLeft on the first item stays there
            focused_on(i)
            continue
        if step == "UNDO":
            press("u")
            i -= 1
            expected.pop(ids[i])
            assert label(i) == _item(ids[i]).label and _item(ids[i]).label_source == "model"
            focused_on(i)  # the undone item has the focus again
            continue
        tag = label(i) if step == "a" else chips(i)[int(step) - 1]
        expected[ids[i]] = tag
        press(step)
        i += 1
        focused_on(i)  # auto-advance
    assert len(expected) == 10
    for item_id, tag in expected.items():
        row = _item(item_id)
        assert (row.label, row.label_source, row.needs_review) == (tag, "reviewer", False), item_id
    skipped = _item(ids[5])
    assert skipped.label_source == "model"
    reviews = _reviews("Ada Annotator")
    assert len([r for r in reviews if r.action not in ("undo", "skip")]) == 11
    assert [r.label for r in reviews if r.action == "skip"] == [skipped.label]  # Space is recorded, nothing changed
    assert len([r for r in reviews if r.action == "undo"]) == 1 and sum(r.undone for r in reviews) == 1
    assert all(r.previous_source == "model" and r.previous_model_id for r in reviews if r.action != "undo")
    assert page.locator("body[data-skips='1']").count() == 1
    assert page.locator("[data-reviewed]").inner_text() == "10"

    # --- the live refits those decisions started: the page follows them without a reload ---
    revision = _settled_refit(dataset_id)
    page.locator(f"body[data-live-revision='{revision.revision}']").wait_for(timeout=30_000)
    assert revision.status == "succeeded", (revision.error_code, revision.error)
    changed = _changed_by(dataset_id)
    assert changed, "no refit changed a tag"
    for item_id, tag in changed.items():  # each tag a refit changed since the page loaded shows, marked
        page.locator(f".card.refit-changed[data-id='{item_id}'][data-label='{tag}']").wait_for(timeout=10_000)
    assert f"Live refit {revision.revision}: succeeded" in page.locator("[data-live]").inner_text()
    site.shot("review-live-refit")

    # --- bulk accept a shift-click selection of items the model tagged ---
    page.goto(site.url(f"/ui/datasets/{dataset_id}/review?needs_review=all&source=model"))
    review_ready(site)
    cards = page.locator(".grid .card")
    page.get_by_label("Select all on this page").check()
    assert page.locator("[data-selected-count]").inner_text() == f"{cards.count()} selected"
    page.get_by_label("Select all on this page").uncheck()
    cards.nth(0).locator("img").click()
    cards.nth(4).locator("img").click(modifiers=["Shift"])
    assert page.locator("[data-selected-count]").inner_text() == "5 selected"
    bulk_ids = [cards.nth(k).get_attribute("data-id") for k in range(5)]
    page.get_by_role("button", name="Accept selected (model's tag)").click()
    page.locator("body[data-decisions='1']").wait_for()
    for item_id in bulk_ids:
        assert _item(item_id).label_source == "reviewer"
    assert len([r for r in _reviews("Ada Annotator") if r.action == "accept"]) >= 5 + 4

    # --- an item's history ---
    page.goto(site.url(f"/ui/items/{ids[0]}"))
    assert page.locator("table.history").get_by_text("Ada Annotator").count() >= 1
    site.shot("item-history")

    # --- audit mode: a seeded random sample, answered blind with the keys (the true tags) ---
    page.goto(site.url(f"/ui/datasets/{dataset_id}/review"))
    page.get_by_role("link", name="Audit a random sample").click()
    page.get_by_label("Items").fill("5")
    page.get_by_label("Seed").fill("1")
    page.get_by_role("button", name="Draw the sample").click()
    for k in range(2):
        page.locator("body[data-audit-ready='1']").wait_for(state="attached")
        item_id = page.locator("[data-audit-item]").get_attribute("data-audit-item")
        row = _item(item_id)
        chips = page.locator("button[data-answer]").evaluate_all("bs => bs.map(b => b.dataset.answer)")
        assert chips == sorted(chips) and page.locator("[data-audit-item] .p, [data-audit-item] .current").count() == 0
        if k == 1:
            site.shot("audit")
        page.keyboard.press(str(chips.index(truth[row.file]) + 1))
        page.locator(f"[data-audit-answered]:text-is('{k + 1}')").wait_for()
        assert (_item(item_id).label, _item(item_id).label_source) == (truth[row.file], "reviewer")
    assert [r.action for r in _reviews("Ada Annotator")][-2:] == ["audit", "audit"]

    # --- models: download the export, try /predict ---
    page.get_by_role("link", name="Models").click()
    with page.expect_download() as dl:
        page.get_by_role("link", name="Download the export (ONNX zip)").first.click()
    with zipfile.ZipFile(io.BytesIO(Path(dl.value.path()).read_bytes())) as zf:
        assert {"tower.onnx", "head.npz"} <= set(zf.namelist()) and json.loads(zf.read("classes.json")) == classes
    page.locator("input[type=file][name=image]").first.set_input_files(str(images[0]))
    page.get_by_role("button", name="Predict").first.click()
    page.locator("[data-prediction] li").first.wait_for()
    assert any(c in page.locator("[data-prediction]").first.inner_text() for c in classes)
    site.shot("models")
    # then drop another photo on the drop zone instead: it replaces the chosen file, and only it is predicted
    dropped = images[1]
    page.evaluate(DROP, [[drop_file(dropped.name, dropped.read_bytes(), "image/jpeg")]])
    assert page.locator("[data-picked]").first.inner_text() == f"Chosen: image: {dropped.name}"
    page.get_by_role("button", name="Predict").first.click()
    page.locator("[data-prediction] p", has_text=dropped.name).wait_for()
    lines = page.locator("[data-prediction] p").all_inner_texts()
    assert len(lines) == 1 and lines[0].split(": ")[1] in classes, lines
    assert page.locator("[data-prediction] li").count() == 5  # the top five of the ten classes
    # and a file picked after the drop replaces the dropped one
    page.locator("input[type=file][name=image]").first.set_input_files(str(images[2]))
    assert page.locator("[data-picked]").first.inner_text() == f"Chosen: image: {images[2].name}"
    page.get_by_role("button", name="Predict").first.click()
    page.locator("[data-prediction] p", has_text=images[2].name).wait_for()
    assert len(page.locator("[data-prediction] p").all_inner_texts()) == 1

    # --- datasets list, API docs (offline) ---
    page.get_by_role("link", name="Datasets").click()
    assert page.get_by_role("link", name="CIFAR-10 sample").is_visible()
    site.shot("datasets")
    page.goto(site.url("/docs"))
    page.locator(".swagger-ui .info").wait_for()
    site.shot("docs")
    page.goto(site.url("/redoc"))
    page.get_by_role("heading", name="tagsift").first.wait_for(timeout=30_000)

    # --- sign out ---
    page.goto(site.url("/ui/datasets"))
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url("**/ui/login")
    page.goto(site.url("/ui/datasets"))
    assert "/ui/login" in page.url

    assert site.offsite == [], site.offsite
    # ReDoc's sidebar always renders Redocly's logo from cdn.redoc.ly: the CSP blocks it (nothing leaves the
    # machine, the link text stays); anything else the CSP had to block is a defect of ours.
    csp_errors = [
        e for e in site.console_errors if "Content Security Policy" in e and "cdn.redoc.ly/redoc/logo-mini.svg" not in e
    ]
    assert csp_errors == [], csp_errors

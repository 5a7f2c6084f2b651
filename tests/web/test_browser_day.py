"""An annotator's day in Chromium (issue 24): each trip-up a new user hit, checked in a real browser on a real
``tagsift serve`` (PostgreSQL, Redis; no worker: the model's tags are written as a finished job leaves them).

One server and one page for all the checks (browser tests are slow); each step is its own function, so a failure
names what broke. Screenshots go to ``$TAGSIFT_UI_SCREENSHOTS`` (docs/ui/) when set.
"""

from __future__ import annotations

import csv
import io
import json
import re
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from app.db import session_scope
from app.models import Item, ItemReview
from tests.app.conftest import image_bytes, onnx_bytes  # noqa: F401 - a pytest fixture
from tests.web.conftest import DROP, drop_file, named_key, open_site, sign_in

pytestmark = [pytest.mark.integration]

LONG_TAG = "an-extraordinarily-long-tag-name-that-never-fits-in-a-card"
TAGS = ["cat", "dog", "lynx", "fox", LONG_TAG]
QUOTED = 'say "cheese" 0.png'  # Chrome sends a " in a file name as %22
N = 24


def _until(page, script: str, timeout: float = 20.0) -> None:
    """Poll ``script`` in the page until it is true (``wait_for_function`` compiles a string: the CSP forbids it)."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(script):
        assert time.monotonic() < deadline, f"timed out waiting for {script}"
        time.sleep(0.05)


def _rows() -> list[dict]:
    rows = []
    for i in range(N):
        name = QUOTED if i == 0 else f"p{i:02d}.png"
        rows.append({"file": name, "candidates": [TAGS[i % 5], TAGS[(i + 1) % 5], TAGS[(i + 2) % 5]]})
    return rows


def _upload(site, shots_to) -> str:
    """Drop the images and their manifest on the new-dataset form: the upload's progress shows, and the file whose
    name holds a double quote is stored under that name."""
    page = site.page
    page.goto(site.url("/ui/datasets/new"))
    page.get_by_label("Name", exact=True).fill("day")
    page.fill("#classes", json.dumps(TAGS))
    rows = _rows()
    manifest = "".join(json.dumps(r) + "\n" for r in rows).encode()
    files = [drop_file("manifest.jsonl", manifest, "text/plain")]
    files += [drop_file(r["file"], image_bytes(900 + i, size=(400, 300)), "image/png") for i, r in enumerate(rows)]
    page.evaluate(DROP, [files])
    # what the status line says while the form uploads (kept in sessionStorage: the page moves on when it is done)
    page.evaluate(
        """() => { const s = document.querySelector('[data-status]');
        new MutationObserver(() => sessionStorage.setItem('statuses',
          (sessionStorage.getItem('statuses') || '') + '\\n' + s.textContent)).observe(s, {childList: true,
          characterData: true, subtree: true}); }"""
    )
    page.get_by_role("button", name="Create dataset").click()
    page.wait_for_url(re.compile(r"/ui/datasets/[0-9a-f]{32}$"))
    statuses = page.evaluate("sessionStorage.getItem('statuses')") or ""
    assert re.search(r"Uploading… \d+ %|Uploaded \d", statuses), statuses  # XHR progress, not only "Uploading…"
    assert page.locator('[data-count="items"]').inner_text() == str(N)
    dataset_id = page.url.rsplit("/", 1)[1]
    with session_scope() as session:
        files = set(session.scalars(select(Item.file).where(Item.dataset_id == dataset_id)))
    assert QUOTED in files
    return dataset_id


def _no_job_yet(site, dataset_id: str) -> None:
    page = site.page
    page.goto(site.url(f"/ui/datasets/{dataset_id}/review"))
    text = page.locator("[data-empty]").inner_text()
    assert "No job has tagged this dataset yet" in text and "Nothing matches" not in text


def _model_tags(dataset_id: str) -> None:
    """As a finished job leaves them: model tags with probabilities, every item needing review."""
    with session_scope() as session:
        for k, item in enumerate(session.scalars(select(Item).where(Item.dataset_id == dataset_id).order_by(Item.seq))):
            a, b, c = item.candidates
            item.label, item.label_source, item.model_id = a, "model", "m" * 32
            p = 0.4 + 0.01 * k
            item.confidence, item.margin, item.needs_review = p, 0.05 + 0.01 * k, True
            item.probs = {a: p, b: 1 - p - 0.1, c: 0.1}


def _rows_of(dataset_id: str) -> list[ItemReview]:
    with session_scope() as session:
        q = select(ItemReview).join(Item, Item.id == ItemReview.item_id).where(Item.dataset_id == dataset_id)
        rows = list(session.scalars(q.order_by(ItemReview.id)))
        session.expunge_all()
        return rows


def _layout(site, dataset_id: str, width: int, height: int, shot: str) -> None:
    """The focused image and its decision buttons show without scrolling; card text is readable; a long tag is
    cut with an ellipsis inside its card."""
    page = site.page
    page.set_viewport_size({"width": width, "height": height})
    page.goto(site.url(f"/ui/datasets/{dataset_id}/review"))
    page.locator("body[data-review-ready='1']").wait_for()
    for sel in ("[data-focus-img]", '[data-focus] [data-act="accept"]', '[data-focus] [data-act="undo"]'):
        box = page.locator(sel).bounding_box()
        assert box and box["y"] >= 0 and box["y"] + box["height"] <= height, (width, sel, box)
        assert box["width"] > 0 and box["x"] + box["width"] <= width, (width, sel, box)
    img = page.locator("[data-focus-img]").bounding_box()
    assert img["height"] >= 200, img  # as large as the screen allows, not a 120 px thumbnail
    assert page.evaluate("document.scrollingElement.scrollTop") == 0
    sizes = page.evaluate(
        "[...document.querySelectorAll('.card .file, .card .meta, .card .chip .t')]"
        ".map(e => parseFloat(getComputedStyle(e).fontSize))"
    )
    assert min(sizes) >= 12, min(sizes)
    long_tag = page.evaluate(
        """(tag) => { const t = [...document.querySelectorAll('.card .chip .t')].find(e => e.textContent === tag);
        const card = t.closest('.card').getBoundingClientRect();
        const chip = t.closest('.chip').getBoundingClientRect();
        return {cut: t.scrollWidth > t.clientWidth, inside: chip.right <= card.right + 0.5,
                ellipsis: getComputedStyle(t).textOverflow}; }""",
        LONG_TAG,
    )
    assert long_tag == {"cut": True, "inside": True, "ellipsis": "ellipsis"}, long_tag
    site.shot(shot)


def _bulk_and_undo(site, dataset_id: str) -> None:
    """After a bulk accept the selection is cleared and the button no longer has the keyboard (Space skips, it
    does not accept again); U undoes the whole bulk action; after a reload U still undoes, then says there is
    nothing left."""
    page = site.page
    page.set_viewport_size({"width": 1280, "height": 800})
    page.goto(site.url(f"/ui/datasets/{dataset_id}/review"))
    page.locator("body[data-review-ready='1']").wait_for()
    cards = page.locator(".card")
    cards.nth(1).click(modifiers=["Control"])
    cards.nth(2).click(modifiers=["Control"])
    cards.nth(3).click(modifiers=["Control"])
    assert page.locator("[data-selected-count]").inner_text() == "3 selected"
    button = page.get_by_role("button", name="Accept selected (model's tag)")
    button.click()
    page.locator("body[data-decisions='1']").wait_for()
    assert page.locator("[data-selected-count]").inner_text() == "0 selected"
    assert page.locator(".card.selected").count() == 0
    assert page.evaluate("document.activeElement.matches('[data-bulk-accept]')") is False
    focused = page.evaluate("document.querySelector('.card.focused').id")
    page.keyboard.press("Space")  # skips: no second accept
    assert page.evaluate("document.querySelector('.card.focused').id") != focused
    page.locator("body[data-skips='1']").wait_for()  # the skip is recorded, after the accept
    rows = _rows_of(dataset_id)
    assert [r.action for r in rows] == ["accept"] * 3 + ["skip"]
    page.keyboard.press("u")
    page.locator("body[data-decisions='2']").wait_for()
    rows = _rows_of(dataset_id)
    assert sum(r.undone for r in rows) == 3 and [r.action for r in rows].count("undo") == 3
    assert not any(r.undone for r in rows if r.action == "skip")  # U undoes decisions, not the skip
    assert "Undone: 3 items" in page.locator("[data-notice]").inner_text()
    # a key decision, a reload, then U
    page.keyboard.press("1")
    page.locator("body[data-decisions='3']").wait_for()
    page.reload()
    page.locator("body[data-review-ready='1']").wait_for()
    page.keyboard.press("u")
    page.locator("body[data-decisions='1']").wait_for()
    rows = _rows_of(dataset_id)
    assert rows[-1].action == "undo" and rows[-2].undone
    page.keyboard.press("u")
    page.locator("body[data-decisions='2']").wait_for()
    assert "Nothing to undo" in page.locator("[data-notice]").inner_text()


def _bulk_assign(site, dataset_id: str) -> None:
    """Bulk "Assign" tags only the items whose candidates hold the tag and says how many it skipped."""
    page = site.page
    page.goto(site.url(f"/ui/datasets/{dataset_id}/review"))
    page.locator("body[data-review-ready='1']").wait_for()
    assert page.locator(".card").count() == N
    page.locator("[data-select-all]").check()
    page.select_option("[data-bulk-tag]", "fox")
    page.get_by_role("button", name="Assign to selected").click()
    page.locator("body[data-decisions='1']").wait_for()
    with session_scope() as session:
        items = list(session.scalars(select(Item).where(Item.dataset_id == dataset_id)))
    holding = [i for i in items if "fox" in i.candidates]
    assert 0 < len(holding) < N
    assert all(i.label == "fox" and i.label_source == "reviewer" for i in holding), (
        [(i.label, i.label_source) for i in holding],
        page.locator("[data-notice]").inner_text(),
        page.locator(".flash").all_inner_texts(),
    )
    assert all(i.label != "fox" and "fox" not in i.candidates for i in items if i not in holding)
    assert f"{N - len(holding)} skipped" in page.locator("[data-notice]").inner_text()
    assert page.locator("[data-selected-count]").inner_text() == "0 selected"
    page.keyboard.press("u")  # the whole assign, undone
    page.locator("body[data-decisions='2']").wait_for()
    with session_scope() as session:
        assert (
            session.scalar(select(func.count()).where(Item.dataset_id == dataset_id, Item.label_source == "reviewer"))
            == 0
        )


def _search(site, dataset_id: str) -> None:
    """The review page finds items by part of their file name, any case."""
    page = site.page
    page.get_by_label("File name").fill("CHEESE")
    page.get_by_role("button", name="Apply").click()
    page.wait_for_url(re.compile(r"file=CHEESE"))
    assert page.locator(".card .file").all_inner_texts() == [QUOTED]
    page.goto(site.url(f"/ui/datasets/{dataset_id}/review"))
    page.locator("body[data-review-ready='1']").wait_for()


def _viewer_and_keys(site) -> None:
    """O opens the original at full size: + zooms, arrows pan, b darkens, Esc closes; ? lists every key."""
    page = site.page
    page.keyboard.press("o")
    dialog = page.locator("dialog[data-viewer]")
    dialog.wait_for()
    _until(page, "document.querySelector('[data-viewer-img]').naturalWidth > 0")
    assert (
        page.evaluate("document.querySelector('[data-viewer-img]').naturalWidth") == 400
    )  # the original, not the 320 px view
    before = float(dialog.get_attribute("data-zoom"))
    page.keyboard.press("+")
    page.keyboard.press("+")
    assert float(dialog.get_attribute("data-zoom")) == pytest.approx(before * 1.5625, rel=1e-3)
    transform = page.evaluate("document.querySelector('[data-viewer-img]').style.transform")
    page.keyboard.press("ArrowLeft")
    assert page.evaluate("document.querySelector('[data-viewer-img]').style.transform") != transform
    page.keyboard.press("b")
    assert "brightness(90%)" in page.evaluate("document.querySelector('[data-viewer-img]').style.filter")
    site.shot("viewer")
    page.keyboard.press("Escape")
    assert not dialog.is_visible()
    page.keyboard.press("?")
    overlay = page.locator("dialog[data-keys-overlay]")
    overlay.wait_for()
    text = overlay.inner_text()
    for key in ("1–9", "Space", "x", "j", "k", "U", "O", "?"):
        assert key in text, key
    site.shot("keys")
    page.keyboard.press("Escape")


def _item_page(site, dataset_id: str) -> None:
    """From a filtered review page: the item page marks the current tag, decides, keeps the filters for "Back to
    review", hides Undo when nothing is left to undo; a stale Undo answers a page (409) with a way back."""
    page = site.page
    page.goto(site.url(f"/ui/datasets/{dataset_id}/review?needs_review=all&sort=confidence"))
    page.locator("body[data-review-ready='1']").wait_for()
    card = page.locator(".card").nth(5)
    card.get_by_role("link", name="history").click()
    page.wait_for_url(re.compile(r"/ui/items/"))
    current = page.locator(".decide .chip.current")
    assert current.count() == 1 and "(current tag)" in current.inner_text()
    back = page.get_by_role("link", name="Back to review").get_attribute("href")
    assert "needs_review=all" in back and "sort=confidence" in back
    assert page.locator("[data-undo]").count() == 0  # no decision yet
    other = page.locator(".decide .chip:not(.current)").first
    tag = other.locator(".t").inner_text()
    other.click()
    page.wait_for_load_state()
    assert page.locator("[data-item-label]").inner_text() == tag
    assert tag in page.locator(".decide .chip.current").inner_text()
    stale = site.context.new_page()
    stale.goto(page.url)
    page.locator("[data-undo]").click()
    page.wait_for_load_state()
    assert page.locator("[data-undo]").count() == 0 and "Nothing left to undo" in page.content()
    site.shot("item-page")
    with stale.expect_response(lambda r: "/undo" in r.url) as answer:
        stale.locator("[data-undo]").click()
    assert answer.value.status == 409
    stale.wait_for_load_state()
    assert "no decision to undo" in stale.locator("[data-error-detail]").inner_text()
    assert "reload" in stale.locator("[data-error-next]").inner_text()
    assert "/ui/items/" in stale.locator("[data-error-back]").get_attribute("href")
    stale.close()
    page.get_by_role("link", name="Back to review").click()
    page.wait_for_url(re.compile(r"needs_review=all"))


def _error_pages(site, dataset_id: str) -> None:
    """404 and a failed CSRF check answer pages with the message, what to do and a way back; the API and the
    pages' JSON calls keep problem+json."""
    page = site.page
    r = page.goto(site.url("/ui/datasets/" + "0" * 32))
    assert r.status == 404 and r.headers["content-type"].startswith("text/html")
    assert "not found" in page.locator("[data-error-detail]").inner_text()
    assert page.locator("[data-error-home]").get_attribute("href") == "/ui/datasets"
    site.shot("error-404")
    api = page.request.get(site.url("/datasets/" + "0" * 32), headers={"Accept": "application/json"})
    assert api.status in (401, 404) and api.headers["content-type"].startswith("application/problem+json")
    js = page.request.get(site.url("/ui/api/jobs/" + "0" * 32))
    assert js.status == 404 and js.headers["content-type"].startswith("application/problem+json")
    page.goto(site.url(f"/ui/datasets/{dataset_id}"))
    page.evaluate("document.querySelector('.jobform [name=csrf_token]').value = 'stale'")
    with page.expect_response(lambda r: r.url.endswith("/jobs")) as answer:
        page.get_by_role("button", name="Start job").click()
    assert answer.value.status == 403
    page.wait_for_load_state()
    assert "CSRF" in page.locator("[data-error-detail]").inner_text()
    assert "reload the page" in page.locator("[data-error-next]").inner_text()
    assert page.locator("[data-error-back]").get_attribute("href").endswith(f"/ui/datasets/{dataset_id}")


def _dataset_page(site, dataset_id: str, reviewer: str) -> str:
    """The job form shows the real defaults and follows the method; labels download in three formats; progress
    per person; a started job shows elapsed time, and a cancelled one reads "cancelled"."""
    page = site.page
    page.goto(site.url(f"/ui/datasets/{dataset_id}"))
    assert page.locator("#epochs").get_attribute("placeholder") == "50 (default)"
    assert page.locator("#lr").get_attribute("placeholder") == "0.1 (default)"
    help_before = page.locator("[data-help-method]").inner_text()
    page.select_option("#method", "linear_probe")
    assert page.locator("#epochs").get_attribute("placeholder") == "100 (default)"
    assert page.locator("[data-help-method]").inner_text() != help_before
    assert "linear classifier" in page.locator("[data-help-method]").inner_text()
    page.select_option("#method", "auto")
    people = page.locator("[data-progress]").inner_text()
    assert reviewer in people and re.search(r"\d{4}-\d\d-\d\d", people)
    got = {}
    for fmt in ("json", "csv", "label-studio"):
        with page.expect_download() as dl:
            page.locator(f'[data-labels="{fmt}"]').click()
        got[fmt] = Path(dl.value.path()).read_bytes()
    assert len(json.loads(got["json"])["items"]) == N
    assert len(list(csv.DictReader(io.StringIO(got["csv"].decode())))) == N
    assert len(json.loads(got["label-studio"])) == N
    site.shot("dataset-day")
    page.locator("#epochs").fill("1")
    page.get_by_role("button", name="Start job").click()
    page.wait_for_url(re.compile(r"/ui/jobs/"))
    job_id = page.url.rsplit("/", 1)[1]
    page.locator("[data-job-time]", has_text="Waiting for a worker").wait_for()
    page.on("dialog", lambda d: d.accept())
    page.get_by_role("button", name="Cancel job").click()
    page.wait_for_load_state()
    page.locator("[data-job-status].status-cancelled").wait_for()
    assert page.locator("[data-job-status]").inner_text() == "cancelled"
    assert not page.locator("[data-cancel-note]").is_visible()
    return job_id


def _predict_preview(site, dataset_id: str, onnx: bytes) -> None:
    from tests.app.model_fixtures import store_model

    store_model(dataset_id, onnx)
    page = site.page
    page.goto(site.url("/ui/models"))
    assert page.locator("[data-model-dataset]").first.inner_text() == "day"  # the dataset by name
    assert page.locator("[data-model-quality]").first.inner_text()
    page.evaluate(
        """([f]) => { const dt = new DataTransfer(); const bytes = Uint8Array.from(atob(f.b64), c => c.charCodeAt(0));
        dt.items.add(new File([bytes], f.name, {type: f.type}));
        document.querySelector('form[data-predict] [data-drop]').dispatchEvent(
          new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true})); }""",
        [drop_file("try.png", image_bytes(5, size=(40, 30)), "image/png")],
    )
    preview = page.locator("form[data-predict] img[data-preview]").first
    preview.wait_for()
    assert preview.get_attribute("src").startswith("blob:")
    _until(page, "document.querySelector('form[data-predict] img[data-preview]').naturalWidth === 40")


def _sign_out_no_store(site, dataset_id: str) -> None:
    """Pages carry Cache-Control: no-store: after signing out, Back shows no private page."""
    page = site.page
    r = page.goto(site.url(f"/ui/datasets/{dataset_id}/review"))
    assert r.headers.get("cache-control") == "no-store"
    page.locator("body[data-review-ready='1']").wait_for()
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(re.compile(r"/ui/login"))
    page.go_back()
    page.wait_for_load_state()
    assert "/ui/login" in page.url
    assert page.locator(".card").count() == 0 and page.locator(".who").count() == 0


def test_an_annotators_day(browser, served, shots_dir: Path, onnx_bytes: bytes) -> None:  # noqa: F811
    reviewer = "Ada"
    site = open_site(browser, served.base_url, shots_dir)
    sign_in(site, named_key(reviewer))
    dataset_id = _upload(site, shots_dir)
    _no_job_yet(site, dataset_id)
    _model_tags(dataset_id)
    _layout(site, dataset_id, 1280, 800, "review-1280")
    _layout(site, dataset_id, 800, 800, "review-800")
    _bulk_and_undo(site, dataset_id)
    _bulk_assign(site, dataset_id)
    _search(site, dataset_id)
    _viewer_and_keys(site)
    _item_page(site, dataset_id)
    _error_pages(site, dataset_id)
    _dataset_page(site, dataset_id, reviewer)
    _predict_preview(site, dataset_id, onnx_bytes)
    _sign_out_no_store(site, dataset_id)
    assert site.offsite == []
    assert [e for e in site.console_errors if "404" not in e and "409" not in e and "403" not in e] == []

"""In a real browser (Chromium): the review page's audit mode never shows the model's tag, confidence, margin or
probabilities, and answers with the keyboard land as audit decisions; the dataset and job pages show the quality
report as a headline, bars and curves, with no raw JSON or Python dict anywhere on the page.

Real CIFAR-10 photos through a real ``tagsift serve`` (no worker: the model's tags and the job's version-2 quality
report are written as a finished job leaves them; the walkthrough in test_browser.py runs a real job)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from app.db import session_scope
from app.models import Dataset, Item, ItemReview, Job
from app.services import audits
from tests.app.quality_reports import V2
from tests.ml.reference_fixtures import cifar10_path  # noqa: F401 - pytest fixture
from tests.web.conftest import named_key, open_site, sign_in
from tests.web.test_browser import MANIFEST_EXAMPLE, RAW, _cifar_files

pytestmark = [pytest.mark.integration]


def _upload(base_url: str, key: str, manifest: Path, images: list[Path], classes: list[str]) -> str:
    files = [("manifest", ("manifest.jsonl", manifest.read_bytes(), "application/x-ndjson"))]
    files += [("images", (p.name, p.read_bytes(), "image/jpeg")) for p in images]
    r = httpx.post(
        f"{base_url}/datasets",
        headers={"Authorization": f"Bearer {key}"},
        data={"name": "CIFAR-10 audit", "classes": json.dumps(classes)},
        files=files,
        timeout=120,
    )
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _as_a_job_left_them(dataset_id: str) -> dict[str, tuple[str, dict]]:
    """Model tags with probabilities (the first candidate in name order: 0.7), and a succeeded job with a version-2
    quality report; returns {item id: (model tag, probs)}."""
    out = {}
    with session_scope() as session:
        dataset = session.get(Dataset, dataset_id)
        for item in session.scalars(select(Item).where(Item.dataset_id == dataset_id)):
            first, *rest = sorted(item.candidates, reverse=True)  # the model's tag is never first in name order
            probs = {first: 0.7, **{c: round(0.3 / len(rest), 4) for c in rest}}
            item.label, item.label_source, item.model_id = first, "model", "m" * 32
            item.confidence, item.margin, item.needs_review, item.probs = 0.7, 0.55, True, probs
            out[item.id] = (first, probs)
        dataset.review_count = len(out)
        job = Job(
            owner_id=dataset.owner_id,
            dataset_id=dataset_id,
            status="succeeded",
            params={"method": "prompt_alignment", "epochs": 3},
            progress={"stage": "succeeded"},
            metrics={"quality": V2},
        )
        session.add(job)
        session.flush()
        out["job"] = (job.id, {})
    return out


def _no_raw(page) -> None:
    text = page.locator("main").inner_text().replace(MANIFEST_EXAMPLE, "")  # the upload form's example line
    assert not RAW.search(text), RAW.search(text)


def test_audit_mode_hides_the_model_and_the_quality_page_reads(
    browser,
    served,
    cifar10_path,  # noqa: F811
    tmp_path: Path,
) -> None:
    classes, manifest, images, _truth = _cifar_files(cifar10_path, tmp_path / "photos")
    key = named_key("Ada Auditor")
    dataset_id = _upload(served.base_url, key, manifest, images, classes)
    model = _as_a_job_left_them(dataset_id)
    job_id = model.pop("job")[0]
    site = open_site(browser, served.base_url, tmp_path)
    page = site.page
    sign_in(site, key)

    # --- the dataset page: headline, basis, next step, one bar per tag, curves; words only ---
    page.goto(site.url(f"/ui/datasets/{dataset_id}"))
    headline = page.locator("[data-quality-headline]")
    assert headline.inner_text() == "81.2 % of the labels right (95% interval 70.1 % to 89.0 %)"
    assert page.locator("[data-quality-basis]").inner_text().startswith("Measured on 64 audited items")
    assert V2["next_step"] in page.locator("[data-quality-next]").inner_text()
    bars = page.locator("[data-chart=tags] svg rect.bar")
    assert bars.count() == len(V2["per_tag"])
    widths = [float(bars.nth(k).get_attribute("width")) for k in range(bars.count())]
    assert widths == sorted(widths)  # the weakest tag first
    assert page.locator("[data-chart=losses] svg circle.point").count() == 6
    assert page.locator("[data-chart=confusions] tbody tr").count() == 2
    _no_raw(page)

    # --- the job page: the same panel; events in words ---
    page.goto(site.url(f"/ui/jobs/{job_id}"))
    page.locator("[data-quality-headline]").wait_for()
    assert page.locator("[data-chart=tags] svg rect.bar").count() == len(V2["per_tag"])
    _no_raw(page)

    # --- audit mode from the review page ---
    page.goto(site.url(f"/ui/datasets/{dataset_id}/review?needs_review=all"))
    page.get_by_role("link", name="Audit a random sample").click()
    page.wait_for_url(f"**/ui/datasets/{dataset_id}/audit")
    page.get_by_label("Items").fill("6")
    page.get_by_label("Seed").fill("3")
    page.get_by_role("button", name="Draw the sample").click()
    answered = []
    for k in range(3):
        page.locator("body[data-audit-ready='1']").wait_for(state="attached")
        card = page.locator("[data-audit-item]")
        item_id = card.get_attribute("data-audit-item")
        tag, probs = model[item_id]
        chips = card.locator("button[data-answer]").evaluate_all("bs => bs.map(b => b.dataset.answer)")
        assert chips == sorted(chips) and tag in chips and chips[0] != tag  # name order: the model's tag not first
        shown = page.locator("main").inner_text()
        for p in probs.values():
            assert f"{p:.2f}" not in shown and f"{p * 100:.0f} %" not in shown, p
        assert "margin" not in shown and "confidence" not in shown and "Tag:" not in shown
        assert card.locator(".current, .p").count() == 0
        assert page.locator(f"a[href='/ui/items/{item_id}']").count() == 0  # the history shows the model's tag
        assert page.locator("[data-audit-answered]").inner_text() == str(k)
        page.keyboard.press("2")  # the second tag in name order
        answered.append((item_id, chips[1]))
        page.locator(f"[data-audit-answered]:text-is('{k + 1}')").wait_for()
    with session_scope() as session:
        rows = list(session.scalars(select(ItemReview).where(ItemReview.reviewer == "Ada Auditor")))
        assert sorted((r.item_id, r.action, r.label) for r in rows) == sorted((i, "audit", t) for i, t in answered)
        assert audits.audited_tags(session, dataset_id) == dict(answered)
    # U undoes the last answer: its item is asked again
    page.keyboard.press("u")
    page.locator("[data-audit-answered]:text-is('2')").wait_for()
    assert page.locator("[data-audit-item]").get_attribute("data-audit-item") == answered[-1][0]
    assert site.offsite == [] and site.console_errors == [], (site.offsite, site.console_errors)

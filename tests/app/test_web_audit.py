"""The web app's audit mode and quality panel without a browser: the audit page never shows the model's output,
answers are audit decisions, bad forms say which field; the job and dataset pages show either report shape in
words and SVG (no dict, no JSON)."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient
from sqlalchemy import select

from app.db import session_scope
from app.models import Item, ItemReview, Job
from app.services import audits
from tests.app.conftest import Api
from tests.app.quality_reports import LEGACY, V2
from tests.app.test_web import _dataset, _items, _set_model_tags, csrf_of, sign_in, web  # noqa: F401 - fixture

RAW = re.compile(r"\{'|\{\"|': |\": |\[\{")  # a dict or list of dicts printed as Python or JSON


def _visible(html: str) -> str:
    """The page's HTML without its <head> (the script and style links), hidden inputs and code examples (the
    upload form's manifest line)."""
    body = html.split("<body", 1)[1]
    return re.sub(r'<input type="hidden"[^>]*>|<code>.*?</code>', "", body)


def _progress(html: str) -> tuple[int, int]:
    m = re.search(r"data-audit-answered>(\d+)</strong> of <span data-audit-total>(\d+)<", html)
    assert m, "no audit progress on the page"
    return int(m.group(1)), int(m.group(2))


def _owner_id(dataset_id: str) -> str:
    with session_scope() as session:
        return session.get(Item, _items(dataset_id)[0].id).dataset.owner_id


def _job(dataset_id: str, report: dict) -> str:
    with session_scope() as session:
        job = Job(
            owner_id=_owner_id(dataset_id),
            dataset_id=dataset_id,
            status="succeeded",
            params={"method": "prompt_alignment"},
            progress={"stage": "succeeded"},
            metrics={"quality": report},
        )
        session.add(job)
        session.flush()
        return job.id


def test_audit_page_hides_the_model_output_and_records_answers(web: TestClient, alice: Api) -> None:  # noqa: F811
    ds = _dataset(alice, n=6)
    _set_model_tags(ds["id"])  # model tags 0.55 / 0.45, margin 0.1, the files named img<k>.png
    csrf = sign_in(web, alice.key)
    page = web.get(f"/ui/datasets/{ds['id']}/audit")
    assert (
        page.status_code == 200 and "Start an audit" in page.text and "default 6" in page.text
    )  # all 6: fewer than 50
    r = web.post(f"/ui/datasets/{ds['id']}/audit", data={"csrf_token": csrf, "size": "4", "seed": "11"})
    assert r.status_code == 200 and r.url.path.endswith("/audit")  # followed the 303
    html = r.text
    m = re.search(r'data-audit-item="([0-9a-f]{32})"', html)
    assert m and _progress(html) == (0, 4)
    item_id = m.group(1)
    with session_scope() as session:
        item = session.get(Item, item_id)
        model_tag, file = item.label, item.file
        assert model_tag in item.candidates
    shown = _visible(html)
    # no model output: no probability, margin, confidence, current-tag mark, file name or history link
    for leak in ("0.55", "0.45", "55 %", "margin", "confidence", " current", file, f"/ui/items/{item_id}"):
        assert leak not in shown, leak
    answers = re.findall(r'data-answer="([^"]+)"', html)
    assert answers == sorted(answers) and set(answers) == set(item.candidates)  # name order, not the model's
    other = next(c for c in ("cat", "lynx", "dog") if c not in answers)
    r = web.post(f"/ui/datasets/{ds['id']}/audit/answer", data={"csrf_token": csrf, "item_id": item_id, "label": other})
    assert r.status_code == 200 and _progress(r.text) == (1, 4) and "Undo it" in r.text
    # the model's tag was within the candidates, the answer outside them: 0 of 1 agree, interval 0 % to 79.3 %
    assert "So far 0 of 1 answers agree" in r.text and "(95% interval 0.0 % to 79.3 %)" in r.text
    with session_scope() as session:
        row = session.scalars(select(ItemReview).where(ItemReview.item_id == item_id)).one()
        assert (row.action, row.label) == ("audit", other) and row.reviewer
        assert audits.audited_tags(session, ds["id"]) == {item_id: other}
    # undo: the item is asked again
    r = web.post(f"/ui/datasets/{ds['id']}/audit/undo", data={"csrf_token": csrf, "item_id": item_id})
    assert f'data-audit-item="{item_id}"' in r.text
    with session_scope() as session:
        assert audits.audited_tags(session, ds["id"]) == {}


def test_audit_forms_name_the_bad_field_and_need_csrf(web: TestClient, alice: Api) -> None:  # noqa: F811
    ds = _dataset(alice, n=3)
    csrf = sign_in(web, alice.key)
    url = f"/ui/datasets/{ds['id']}/audit"
    for form, message in [
        ({"size": "0"}, "size: 0 is not from 1 to 300"),
        ({"size": "many"}, "size: a whole number"),
        ({"seed": "-4"}, "seed: -4 is not from 0"),
    ]:
        r = web.post(url, data={"csrf_token": csrf, **form})
        assert r.status_code == 422 and message in r.text, r.text[-2000:]
    assert web.post(url, data={"size": "3"}).status_code == 403
    with session_scope() as session:
        assert audits.current_audit(session, ds["id"]) is None
    web.post(url, data={"csrf_token": csrf, "size": "2", "seed": "1"})
    outside = next(i.id for i in _items(ds["id"]) if i.id not in _sampled(ds["id"]))
    r = web.post(f"{url}/answer", data={"csrf_token": csrf, "item_id": outside, "label": "cat"})
    assert r.status_code == 422 and "item_id: " in r.text and "is not in the dataset&#39;s current audit" in r.text


def _sampled(dataset_id: str) -> set[str]:
    from app.models import AuditItem

    with session_scope() as session:
        audit = audits.current_audit(session, dataset_id)
        return set(session.scalars(select(AuditItem.item_id).where(AuditItem.audit_id == audit.id)))


def test_job_and_dataset_pages_show_the_report_in_words_and_svg(web: TestClient, alice: Api) -> None:  # noqa: F811
    ds = _dataset(alice, n=2)
    sign_in(web, alice.key)
    job_id = _job(ds["id"], V2)
    page = web.get(f"/ui/jobs/{job_id}").text
    shown = _visible(page)
    assert "81.2 %" in shown and "(95% interval 70.1 % to 89.0 %)" in shown
    assert "Measured on 64 audited items" in shown and V2["next_step"] in shown
    assert shown.count('class="bar"') == 4 and shown.count("<svg") == 3  # per tag, losses, churn/held-out
    assert "The tag pairs the model confuses most" in shown
    assert not RAW.search(shown), RAW.search(shown)
    dataset_page = _visible(web.get(f"/ui/datasets/{ds['id']}").text)
    assert "81.2 %" in dataset_page and "Measured on 64 audited items" in dataset_page
    assert not RAW.search(dataset_page), dataset_page[RAW.search(dataset_page).start() - 200 :][:400]
    assert web.get(f"/ui/api/jobs/{job_id}").json()["job"]["quality"]["estimate"]["basis"] == "audit"


def test_a_legacy_report_still_reads_as_words(web: TestClient, alice: Api) -> None:  # noqa: F811
    ds = _dataset(alice, n=2)
    sign_in(web, alice.key)
    job_id = _job(ds["id"], LEGACY)
    shown = _visible(web.get(f"/ui/jobs/{job_id}").text)
    assert "85.3 %" in shown and "not yet measured" in shown and "Audit 2 items" in shown  # all of a 2-item dataset
    assert shown.count("<svg") == 2 and 'class="bar"' not in shown  # epoch curves; no per-tag figure to draw
    assert not RAW.search(shown) and "candidate_likelihood" not in shown
    assert "85.3 %" in web.get("/ui/datasets").text

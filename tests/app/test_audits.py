"""Audits through the API: a stratified, seeded sample (the default size rule included), bad bodies answered 422
naming the field, answers stored as "audit" decisions, and audited_tags leaving out undone answers and every other
kind of decision."""

from __future__ import annotations

import hashlib
from collections import Counter

import pytest
from sqlalchemy import select

from app.db import session_scope
from app.models import Dataset, Item, ItemReview, Owner
from app.services import audits, reviews
from tests.app.conftest import Api

TAGS = ["cat", "dog", "lynx", "owl"]
#: The model's tags of a synthetic dataset: strata of very different sizes (70%, 20%, 8%, 2%).
SHARES = {"cat": 0.7, "dog": 0.2, "lynx": 0.08, "owl": 0.02}


def _dataset_with_tags(api: Api, n: int) -> str:
    """An owner's dataset of ``n`` items tagged by a "model" in the proportions of :data:`SHARES` (rows written
    directly: sampling reads only the rows, and uploading 1,200 images would take most of a minute)."""
    r = api.post("/datasets", json={"name": "audit-me", "classes": TAGS})
    assert r.status_code == 201, r.text
    dataset_id = r.json()["id"]
    tags = [t for t, share in SHARES.items() for _ in range(round(share * n))]
    tags += ["cat"] * (n - len(tags))
    with session_scope() as session:
        for seq, tag in enumerate(tags):
            other = TAGS[(TAGS.index(tag) + 1) % len(TAGS)]
            session.add(
                Item(
                    dataset_id=dataset_id,
                    seq=seq,
                    file=f"img{seq}.png",
                    sha256=hashlib.sha256(f"{dataset_id}{seq}".encode()).hexdigest(),
                    width=8,
                    height=8,
                    candidates=sorted([tag, other]),
                    label=tag,
                    label_source="model",
                    confidence=0.6,
                    margin=0.2,
                    needs_review=True,
                    model_id="m" * 32,
                    probs={tag: 0.6, other: 0.4},
                )
            )
        session.get(Dataset, dataset_id).item_count = n
        session.get(Dataset, dataset_id).review_count = n
    return dataset_id


def _all_sampled(dataset_id: str) -> list[str]:
    from app.models import AuditItem

    with session_scope() as session:
        audit = audits.current_audit(session, dataset_id)
        return list(
            session.scalars(
                select(AuditItem.item_id).where(AuditItem.audit_id == audit.id).order_by(AuditItem.position)
            )
        )


def _labels(dataset_id: str) -> dict[str, str]:
    with session_scope() as session:
        return dict(session.execute(select(Item.id, Item.label).where(Item.dataset_id == dataset_id)).all())


@pytest.mark.parametrize(("n", "expected"), [(30, 30), (400, 50), (1200, 60), (8000, 300)])
def test_default_size_is_50_or_5_percent_whichever_is_larger_at_most_300(alice: Api, n: int, expected: int) -> None:
    if n > 1200:  # the rule alone at the largest size (writing 8,000 rows adds nothing to the check)
        assert audits.default_size(n) == expected
        return
    dataset_id = _dataset_with_tags(alice, n)
    r = alice.post(f"/datasets/{dataset_id}/audits")
    assert r.status_code == 201, r.text
    body = r.json()
    assert (body["size"], body["total"], body["population"], body["answered"]) == (expected, expected, n, 0)
    assert len(set(_all_sampled(dataset_id))) == expected


def test_sample_is_stratified_by_the_model_tag_and_reproducible_by_seed(alice: Api) -> None:
    dataset_id = _dataset_with_tags(alice, 1000)
    labels = _labels(dataset_id)
    first = alice.post(f"/datasets/{dataset_id}/audits", json={"size": 100, "seed": 7}).json()
    sample = _all_sampled(dataset_id)
    # proportional allocation: each tag's share of the sample is its share of the dataset, to the item
    assert Counter(labels[i] for i in sample) == Counter({"cat": 70, "dog": 20, "lynx": 8, "owl": 2})
    assert {s["tag"]: s["items"] for s in first["strata"]} == {"cat": 70, "dog": 20, "lynx": 8, "owl": 2}
    # the same seed draws the same items in the same order; another seed draws another sample
    again = alice.post(f"/datasets/{dataset_id}/audits", json={"size": 100, "seed": 7}).json()
    assert again["id"] != first["id"] and _all_sampled(dataset_id) == sample
    assert [i["id"] for i in again["next"]] == [i["id"] for i in first["next"]] == sample[:10]
    alice.post(f"/datasets/{dataset_id}/audits", json={"size": 100, "seed": 8})
    other = _all_sampled(dataset_id)
    assert Counter(labels[i] for i in other) == Counter(labels[i] for i in sample)
    assert set(other) != set(sample)
    # without a seed, one is drawn and returned: passing it back reproduces the sample
    drawn = alice.post(f"/datasets/{dataset_id}/audits", json={"size": 100}).json()
    unseeded = _all_sampled(dataset_id)
    alice.post(f"/datasets/{dataset_id}/audits", json={"size": 100, "seed": drawn["seed"]})
    assert _all_sampled(dataset_id) == unseeded
    # asked in a shuffled order, not one stratum after the other
    order = [labels[i] for i in sample]
    assert sum(a != b for a, b in zip(order, order[1:], strict=False)) > len(SHARES)


def test_the_next_items_never_show_the_model_output(alice: Api) -> None:
    dataset_id = _dataset_with_tags(alice, 60)
    body = alice.post(f"/datasets/{dataset_id}/audits", json={"size": 20, "seed": 1}).json()
    assert len(body["next"]) == audits.NEXT_ITEMS
    for item in body["next"]:
        assert set(item) == {"id", "file", "candidates", "image_url"}
    current = alice.get(f"/datasets/{dataset_id}/audits/current")
    assert current.status_code == 200 and current.json()["id"] == body["id"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"size": 0}, "size"),
        ({"size": 301}, "size"),
        ({"size": "50"}, "size"),
        ({"size": True}, "size"),
        ({"seed": -1}, "seed"),
        ({"seed": 2**32}, "seed"),
        ({"seed": 1.5}, "seed"),
        ({"sample": 50}, "sample"),
    ],
)
def test_bad_body_is_422_naming_the_field(alice: Api, body: dict, field: str) -> None:
    dataset_id = _dataset_with_tags(alice, 5)
    r = alice.post(f"/datasets/{dataset_id}/audits", json=body)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert [e["field"] for e in r.json()["errors"]] == [field], r.json()
    assert alice.get(f"/datasets/{dataset_id}/audits/current").status_code == 404  # nothing stored


def test_audit_of_an_empty_or_unknown_dataset(alice: Api, bob: Api) -> None:
    empty = alice.post("/datasets", json={"name": "empty", "classes": TAGS}).json()["id"]
    assert alice.post(f"/datasets/{empty}/audits").status_code == 409
    theirs = _dataset_with_tags(alice, 5)
    assert bob.post(f"/datasets/{theirs}/audits").status_code == 404
    assert bob.get(f"/datasets/{theirs}/audits/current").status_code == 404


def test_answers_are_audit_decisions_and_audited_tags_leaves_out_undone_and_other_decisions(alice: Api) -> None:
    dataset_id = _dataset_with_tags(alice, 60)
    body = alice.post(f"/datasets/{dataset_id}/audits", json={"size": 12, "seed": 3}).json()
    sample = _all_sampled(dataset_id)
    when_drawn = _labels(dataset_id)
    outside = next(i for i in when_drawn if i not in sample)
    url = f"/datasets/{dataset_id}/audits/current/answers"
    # the first four answered: one with a class outside the item's candidates (added to them)
    answers = {sample[0]: "owl", sample[1]: "dog", sample[2]: "cat", sample[3]: "lynx"}
    for item_id, tag in answers.items():
        r = alice.post(url, json={"item_id": item_id, "label": tag})
        assert r.status_code == 200, r.text
    progress = r.json()
    assert (progress["answered"], progress["total"]) == (4, 12)
    assert progress["agreed"] == sum(when_drawn[i] == t for i, t in answers.items())
    assert [i["id"] for i in progress["next"]] == sample[4:12][: audits.NEXT_ITEMS]
    assert sum(s["answered"] for s in progress["strata"]) == 4
    with session_scope() as session:
        rows = list(session.scalars(select(ItemReview).where(ItemReview.item_id.in_(answers))))
        assert sorted((r.item_id, r.action, r.label) for r in rows) == sorted(
            (i, "audit", t) for i, t in answers.items()
        )
        for item_id, tag in answers.items():
            item = session.get(Item, item_id)
            assert (item.label, item.label_source, item.needs_review) == (tag, "reviewer", False)
            assert tag in item.candidates
        assert session.get(Dataset, dataset_id).review_count == 60 - 4  # the counts of every decision
        assert audits.audited_tags(session, dataset_id) == answers
    # a reviewer's fix (assign) of a sampled item and of an item outside the sample: not audit answers
    h = alice.headers
    for item_id in (sample[4], outside):
        r = alice.client.patch(f"/items/{item_id}", json={"label": "cat", "add_to_candidates": True}, headers=h)
        assert r.status_code == 200, r.text
    # the answer on sample[1] undone, sample[2] answered again (the latest answer counts)
    with session_scope() as session:
        reviewer = reviews.Reviewer(api_key_id=None, name="undoer")
        owner = session.get(Owner, session.get(Dataset, dataset_id).owner_id)
        reviews.undo_last(session=session, owner=owner, item_id=sample[1], reviewer=reviewer)
    assert alice.post(url, json={"item_id": sample[2], "label": "dog"}).status_code == 200
    with session_scope() as session:
        tags = audits.audited_tags(session, dataset_id)
    assert tags == {sample[0]: "owl", sample[2]: "dog", sample[3]: "lynx"}
    current = alice.get(f"/datasets/{dataset_id}/audits/current").json()
    assert current["answered"] == 3 and current["next"][0]["id"] == sample[1]  # undone: asked again
    # bad answers: an item outside the sample, a tag outside the classes, a missing field; nothing stored
    bad = [
        ({"item_id": outside, "label": "cat"}, "item_id"),
        ({"item_id": sample[5], "label": "zebra"}, "label"),
        ({"item_id": sample[5]}, "label"),
    ]
    for answer, field in bad:
        r = alice.post(url, json=answer)
        assert r.status_code == 422 and [e["field"] for e in r.json()["errors"]] == [field], r.text
    with session_scope() as session:
        assert audits.audited_tags(session, dataset_id) == tags
        assert session.get(Item, sample[5]).label_source == "model"
    # a new audit is the current one: the answers on items outside it no longer count
    alice.post(f"/datasets/{dataset_id}/audits", json={"size": 12, "seed": 4})
    with session_scope() as session:
        now = audits.audited_tags(session, dataset_id)
    assert set(now) == set(tags) & set(_all_sampled(dataset_id))
    assert body["id"] != alice.get(f"/datasets/{dataset_id}/audits/current").json()["id"]


def test_allocation_and_draw_rules() -> None:
    assert audits.allocate({"a": 5, "b": 3, None: 2}, 10) == {"a": 5, "b": 3, None: 2}
    assert audits.allocate({"a": 1, "b": 1, "c": 1}, 2) == {"a": 1, "b": 1, "c": 0}  # ties by name
    assert sum(audits.allocate({"a": 333, "b": 333, "c": 334}, 50).values()) == 50
    items = [(f"i{k}", "a" if k % 4 else None) for k in range(40)]
    sample = audits.draw(items, 10, seed=5)
    assert sample == audits.draw(items, 10, seed=5) and len({i for i, _ in sample}) == 10
    assert Counter(s for _, s in sample) == Counter({"a": 7, None: 3})  # 7.5 and 2.5: the tie to "untagged"


def test_wilson_interval_matches_the_published_values() -> None:
    # Wilson score intervals at 95% (Newcombe 1998, table I: 81/263 -> 0.2553-0.3662; 15/148 -> 0.0624-0.1605)
    lo, hi = audits.wilson(81, 263)
    assert (round(lo, 4), round(hi, 4)) == (0.2553, 0.3662)
    lo, hi = audits.wilson(15, 148)
    assert (round(lo, 4), round(hi, 4)) == (0.0624, 0.1605)
    assert audits.wilson(5, 5)[1] == 1.0 and audits.wilson(0, 5)[0] == 0.0

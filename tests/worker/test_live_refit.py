"""Live refits (worker.refit, app.services.refits): a decision retags the other items from cached features only,
refits coalesce, a refit never overwrites a decision made after it read the data (PostgreSQL, real row locks), and a
dataset whose features are gone says so. The refits here run in this process (the task's body, ``run_refit``);
tests/worker/test_live_refit_worker.py runs them through a real worker."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from sqlalchemy import func, select

from app.db import session_scope
from app.models import Dataset, Item, Model, Owner, Refit, Webhook, WebhookDelivery
from app.services.refits import live_state, request_refit
from app.services.reviews import Reviewer, decide, undo_last
from bench.live_data import make_synthetic
from worker.refit import run_refit
from worker.refit_features import forget

REVIEWER = Reviewer(api_key_id=None, name="r")


@pytest.fixture(autouse=True)
def _fresh_memory():
    forget()
    yield
    forget()


def _owner(owner_id: str) -> Owner:
    with session_scope() as session:
        return session.get(Owner, owner_id)


def _items(dataset_id: str) -> dict[str, Item]:
    with session_scope() as session:
        return {i.id: i for i in session.scalars(select(Item).where(Item.dataset_id == dataset_id))}


def _decide(owner: Owner, item_id: str, label: str) -> None:
    with session_scope() as session:
        decide(session=session, owner=owner, item_ids=[item_id], action="assign", label=label, reviewer=REVIEWER)


def _refits(dataset_id: str) -> list[Refit]:
    with session_scope() as session:
        return list(session.scalars(select(Refit).where(Refit.dataset_id == dataset_id).order_by(Refit.revision)))


def _accuracy(data, items: dict[str, Item]) -> float:
    right = [items[i].label == data.classes[data.truth[j]] for j, i in enumerate(data.item_ids)]
    return float(np.mean(right))


def test_a_decision_retags_the_other_items_and_is_recorded(embedded_env):
    data = make_synthetic(400, q=0.5, seed=3)
    owner = _owner(data.owner_id)
    with session_scope() as session:
        session.add(Webhook(owner_id=owner.id, url="https://hooks.example/x", events=["labels.updated"], secret="s"))
    before = _items(data.dataset_id)
    wrong = [i for j, i in enumerate(data.item_ids) if before[i].label != data.classes[data.truth[j]]]
    decided = {i: data.classes[data.truth[data.item_ids.index(i)]] for i in wrong[:40]}
    for item_id, tag in decided.items():  # a reviewer fixes 40 wrong tags; each decision asks for a refit
        _decide(owner, item_id, tag)
    queued = _refits(data.dataset_id)
    assert [r.status for r in queued] == ["queued"]  # coalesced: one refit for 40 decisions
    assert run_refit(queued[0].id) == "succeeded"

    (refit,) = _refits(data.dataset_id)
    after = _items(data.dataset_id)
    assert refit.status == "succeeded" and refit.reviewed_items == 40 and refit.decision_seq == 40
    for item_id, tag in decided.items():  # the decisions stand
        assert after[item_id].label == tag and after[item_id].label_source == "reviewer"
    others = [i for i in data.item_ids if i not in decided]
    changed = [i for i in others if after[i].label != before[i].label]
    # every other item holds the refit's tag and scores: rewritten by it, or unchanged within worker.refit_rows'
    # SCORE_TOLERANCE (then it keeps the model that first set them)
    rewritten = [i for i in others if after[i].model_id == refit.model_id]
    assert set(changed) <= set(rewritten) and len(rewritten) > len(others) // 2
    assert all(after[i].model_id == data.model_id for i in others if i not in rewritten)
    assert refit.changed_items == len(changed) > 0
    assert all(after[i].refit_revision == refit.revision for i in changed)
    assert all(after[i].refit_revision is None for i in others if i not in changed)
    # what the reviewer taught reached the items no one looked at: fewer of them are wrong than before
    wrong_before = sum(before[i].label != data.classes[data.truth[data.item_ids.index(i)]] for i in others)
    wrong_after = sum(after[i].label != data.classes[data.truth[data.item_ids.index(i)]] for i in others)
    assert wrong_after < wrong_before, (wrong_before, wrong_after)
    with session_scope() as session:
        model = session.get(Model, refit.model_id)
        assert model.job_id is None and model.metrics["refit"]["of"] == data.model_id
        assert model.artifacts["head.npz"] != session.get(Model, data.model_id).artifacts["head.npz"]
        dataset = session.get(Dataset, data.dataset_id)
        assert dataset.quality == refit.quality and dataset.quality["estimate"]["accuracy"] is not None
        rows = select(func.count()).select_from(Item).where(Item.dataset_id == data.dataset_id)
        assert dataset.review_count == session.scalar(rows.where(Item.needs_review.is_(True)))
        (delivery,) = session.scalars(select(WebhookDelivery).where(WebhookDelivery.event == "labels.updated"))
        assert f'"model_id": "{refit.model_id}"' in delivery.body.replace('":"', '": "')
        state = live_state(session, dataset)
    assert state["applied"]["revision"] == refit.revision and not state["in_flight"]


def test_refits_coalesce_and_one_more_follows_decisions_made_while_one_ran(embedded_env, monkeypatch):
    data = make_synthetic(120, seed=4)
    owner = _owner(data.owner_id)
    _decide(owner, data.item_ids[0], data.classes[data.truth[0]])
    first = _refits(data.dataset_id)[0]
    with session_scope() as session:  # while it is queued, more decisions ask for nothing more
        assert request_refit(session, data.dataset_id) is None
    _decide(owner, data.item_ids[1], data.classes[data.truth[1]])
    assert len(_refits(data.dataset_id)) == 1

    # it runs; a decision lands between its read and its save: it saves (not over that item), then exactly one more
    import worker.refit as refit_module

    real_save = refit_module.save

    def save_after_a_decision(*args, **kwargs):
        _decide(owner, data.item_ids[2], data.classes[data.truth[2]])
        return real_save(*args, **kwargs)

    monkeypatch.setattr(refit_module, "save", save_after_a_decision)
    assert run_refit(first.id) == "succeeded"
    monkeypatch.setattr(refit_module, "save", real_save)
    refits = _refits(data.dataset_id)
    assert [r.status for r in refits] == ["succeeded", "queued"]
    assert refits[0].decision_seq == 2
    assert _items(data.dataset_id)[data.item_ids[2]].label_source == "reviewer"
    assert run_refit(refits[1].id) == "succeeded"
    assert run_refit(refits[1].id) == "not_queued"  # a duplicate message finds nothing to do
    refits = _refits(data.dataset_id)
    assert [r.status for r in refits] == ["succeeded", "succeeded"] and refits[1].decision_seq == 3
    # an undo is a decision too
    with session_scope() as session:
        undo_last(session=session, owner=owner, item_id=data.item_ids[2], reviewer=REVIEWER)
    assert [r.status for r in _refits(data.dataset_id)][-1] == "queued"


def test_a_dataset_whose_features_are_gone_says_so(embedded_env):
    data = make_synthetic(60, seed=5, with_features=False)
    _decide(_owner(data.owner_id), data.item_ids[0], data.classes[data.truth[0]])
    (refit,) = _refits(data.dataset_id)
    assert run_refit(refit.id) == "failed"
    (refit,) = _refits(data.dataset_id)
    assert refit.status == "failed" and refit.error_code == "features_missing"
    assert "60 of 60 items have no cached features" in refit.error and "start a full job" in refit.error
    with session_scope() as session:
        state = live_state(session, session.get(Dataset, data.dataset_id))
        assert state["refit"]["error_code"] == "features_missing"
        before = {
            i.id: (i.label, i.model_id) for i in session.scalars(select(Item).where(Item.dataset_id == data.dataset_id))
        }
    assert all(before[i][1] == data.model_id for i in data.item_ids[1:])  # nothing half-written


def test_refits_never_overwrite_a_decision_made_after_their_read(prod_env):
    """Reviewers deciding while refits read and save (PostgreSQL, real row locks): no deadlock, every decision
    stands, the review count is exact."""
    data = make_synthetic(300, seed=6)
    owner = _owner(data.owner_id)
    errors: list[BaseException] = []
    stop = threading.Event()

    def reviewer(chunk: list[int]) -> None:
        try:
            for j in chunk:
                _decide(owner, data.item_ids[j], data.classes[data.truth[j]])
        except BaseException as exc:
            errors.append(exc)

    def refitter() -> None:  # the live worker: each queued refit in turn, until the reviewers are done and none is left
        try:
            while True:
                with session_scope() as session:
                    queued = session.scalars(
                        select(Refit.id).where(Refit.dataset_id == data.dataset_id, Refit.status == "queued")
                    ).all()
                if not queued and stop.is_set():
                    return
                for refit_id in queued:
                    run_refit(refit_id)
        except BaseException as exc:
            errors.append(exc)

    _decide(owner, data.item_ids[1], data.classes[data.truth[1]])  # a first refit outside the race: imports warm
    assert run_refit(_refits(data.dataset_id)[0].id) == "succeeded"
    picks = list(range(0, 300, 3))
    threads = [threading.Thread(target=reviewer, args=(picks[k::3],)) for k in range(3)]
    runner = threading.Thread(target=refitter)
    runner.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    stop.set()
    runner.join(timeout=120)
    assert not any(t.is_alive() for t in [*threads, runner]), "a writer is stuck"
    assert not errors, errors
    refits = _refits(data.dataset_id)
    assert sum(r.status == "succeeded" for r in refits) >= 3, [r.status for r in refits]
    assert refits[-1].status == "succeeded" and refits[-1].decision_seq == len(picks) + 1  # the last one saw all
    assert not [r for r in refits if r.status == "failed"], [(r.error_code, r.error) for r in refits]
    items = _items(data.dataset_id)
    for j in picks:  # every decision stands, whatever refit read before it and saved after it
        item = items[data.item_ids[j]]
        assert item.label_source == "reviewer" and item.label == data.classes[data.truth[j]], j
    with session_scope() as session:
        dataset = session.get(Dataset, data.dataset_id)
        rows = select(func.count()).select_from(Item).where(Item.dataset_id == data.dataset_id)
        assert dataset.review_count == session.scalar(rows.where(Item.needs_review.is_(True)))
        assert dataset.decision_seq == len(picks) + 1

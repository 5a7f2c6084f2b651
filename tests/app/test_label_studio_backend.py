"""tagsift as Label Studio's ML backend (``/label-studio/{dataset_id}``) and the ``label-studio`` labels export,
in-process against the real PostgreSQL with the tiny channel classifier (a red image is a cat, green a lynx, blue a
dog). The same routes with a real Label Studio: ``tests/test_label_studio.py``.
"""

from __future__ import annotations

import base64
import json

import pytest
from sqlalchemy import select

from app.db import session_scope
from app.models import Item, ItemReview, Job
from app.services.datasets import refresh_review_count
from tests.app.conftest import Api
from tests.app.model_fixtures import BLUE, GREEN, RED, store_model
from tests.label_studio import LABEL_CONFIG


def basic(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"tagsift:{key}".encode()).decode()}


def task(tid: int, image: str) -> dict:
    return {"id": tid, "data": {"image": image}, "project": 3}


@pytest.fixture
def backend(alice: Api, onnx_bytes: bytes) -> dict:
    rows = [
        {"file": "red.png", "candidates": ["cat", "lynx"]},
        {"file": "green.png", "candidates": ["cat", "lynx"]},
        {"file": "photos/blue.png", "candidates": ["cat", "lynx", "dog"]},
    ]
    r = alice.upload("/datasets", rows, {"red.png": RED, "green.png": GREEN, "photos/blue.png": BLUE}, name="rgb")
    assert r.status_code == 201, r.text
    ds = r.json()
    url = f"/label-studio/{ds['id']}"
    # before any model: up, version "untrained", predict 409
    health = alice.client.get(f"{url}/health", headers=basic(alice.key))
    assert health.status_code == 200 and health.json()["model_version"] == "untrained"
    assert alice.post(f"/datasets/{ds['id']}/jobs", json={}).status_code == 202  # gives the dataset a job owner
    return {"dataset": ds, "url": url, "model_id": store_model(ds["id"], onnx_bytes)}


def test_health_setup_and_auth(alice: Api, bob: Api, backend: dict) -> None:
    url, model_id = backend["url"], backend["model_id"]
    r = alice.client.get(f"{url}/health", headers=basic(alice.key))
    assert r.status_code == 200
    assert r.json() == {"status": "UP", "model_class": "tagsift", "model_version": model_id}
    setup = {"project": "3.1700000000", "schema": LABEL_CONFIG, "hostname": "http://ls", "access_token": "t"}
    r = alice.client.post(f"{url}/setup", json=setup, headers=basic(alice.key))
    assert r.status_code == 200 and r.json() == {"model_version": model_id}
    assert alice.post(f"{url}/setup", json=setup).json() == {"model_version": model_id}  # Bearer works too

    r = alice.client.get(f"{url}/health")
    assert r.status_code == 401 and "Basic" in r.headers["www-authenticate"]
    assert alice.client.get(f"{url}/health", headers=basic("tsk_wrong")).status_code == 401
    assert bob.client.get(f"{url}/health", headers=basic(bob.key)).status_code == 404  # another owner's dataset

    no_choices = '<View><Image name="image" value="$image"/><TextArea name="t" toName="image"/></View>'
    r = alice.post(f"{url}/setup", json={**setup, "schema": no_choices})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "schema"
    foreign = LABEL_CONFIG.replace('"cat"', '"car"').replace('"lynx"', '"bus"').replace('"dog"', '"van"')
    r = alice.post(f"{url}/setup", json={**setup, "schema": foreign})
    assert r.status_code == 422 and "share no class" in r.json()["detail"]


def test_predict_one_result_per_task_in_order(alice: Api, backend: dict, tagsift_env) -> None:
    url, model_id = backend["url"], backend["model_id"]
    # two images per ONNX Runtime call: five tasks are three batches (the last one short), so the answers must keep
    # the tasks' order across batches; no order of batches or of the whole list but the right one gives these
    assert tagsift_env(predict_batch_size=2).predict_batch_size == 2
    tasks = [
        task(7, "/data/upload/3/0a1b2c3d-blue.png"),  # the item photos/blue.png, by name without the prefix
        task(8, "/data/upload/3/4e5f6a7b-red.png"),
        task(9, "green.png"),  # batch 2
        task(10, "photos/blue.png"),
        task(11, "/data/upload/3/5c6d7e8f-green.png"),  # batch 3
    ]
    r = alice.client.post(
        f"{url}/predict", json={"tasks": tasks, "label_config": LABEL_CONFIG}, headers=basic(alice.key)
    )
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["result"][0]["value"]["choices"] for x in results] == [["dog"], ["cat"], ["lynx"], ["dog"], ["lynx"]]
    for x in results:
        assert x["model_version"] == model_id and 0.5 < x["score"] <= 1
        region = x["result"][0]
        assert (region["from_name"], region["to_name"], region["type"]) == ("choice", "image", "choices")

    # only the project's choices are scored: without "dog", the blue item's answer is one of the others
    two = LABEL_CONFIG.replace('    <Choice value="dog"/>\n', "")
    r = alice.post(f"{url}/predict", json={"tasks": tasks[:1], "label_config": two})
    assert r.json()["results"][0]["result"][0]["value"]["choices"][0] in ("cat", "lynx")


def test_predict_never_fetches_other_urls(alice: Api, backend: dict, tagsift_env) -> None:
    url = backend["url"]
    tasks = [task(1, "/data/upload/3/0a1b2c3d-unknown.png"), task(2, "http://169.254.169.254/latest/x.png")]
    r = alice.post(f"{url}/predict", json={"tasks": tasks, "label_config": LABEL_CONFIG})
    assert r.status_code == 422
    errors = {e["item"]: e for e in r.json()["errors"]}
    assert set(errors) == {"task 1", "task 2"} and all(e["field"] == "data.image" for e in errors.values())
    assert "TAGSIFT_LABEL_STUDIO_URL is not set" in errors["task 1"]["message"]

    tagsift_env(label_studio_url="http://127.0.0.1:9")  # a Label Studio is configured: only its origin is read
    r = alice.post(f"{url}/predict", json={"tasks": tasks[1:], "label_config": LABEL_CONFIG})
    assert r.status_code == 422 and "not read" in r.json()["errors"][0]["message"]
    r = alice.post(f"{url}/predict", json={"tasks": [{"id": 5, "data": {}}], "label_config": LABEL_CONFIG})
    assert r.status_code == 422 and r.json()["errors"][0]["item"] == "task 5"


def test_webhook_annotation_becomes_reviewer_label_and_training_starts(alice: Api, backend: dict) -> None:
    url, ds = backend["url"], backend["dataset"]
    project = {"id": 3, "label_config": LABEL_CONFIG}

    def event(action: str, choices: list[str], image: str, **annotation) -> dict:
        result = [{"from_name": "choice", "to_name": "image", "type": "choices", "value": {"choices": choices}}]
        return {
            "action": action,
            "annotation": {"id": 1, "result": result, "was_cancelled": False, **annotation},
            "task": task(8, image),
            "project": project,
        }

    r = alice.post(f"{url}/webhook", json=event("ANNOTATION_CREATED", ["lynx"], "/data/upload/3/4e5f6a7b-red.png"))
    assert r.status_code == 201 and r.json()["status"] == "ok", r.text
    item = alice.get(f"/items/{r.json()['result']['item_id']}").json()
    assert item["file"] == "red.png" and item["label"] == "lynx" and item["label_source"] == "reviewer"

    r = alice.post(f"{url}/webhook", json=event("ANNOTATION_UPDATED", ["dog"], "/data/upload/3/4e5f6a7b-red.png"))
    assert r.status_code == 201
    item = alice.get(f"/items/{item['id']}").json()
    assert item["label"] == "dog" and "dog" in item["candidates"]  # an annotator's choice is explicit

    ignored = [
        event("ANNOTATION_CREATED", ["cat"], "green.png", was_cancelled=True),
        event("ANNOTATION_CREATED", ["cat", "lynx"], "green.png"),
        event("ANNOTATION_CREATED", ["cat"], "/data/upload/3/0a1b2c3d-elsewhere.png"),
        {"action": "TASKS_CREATED", "tasks": []},
    ]
    for body in ignored:
        r = alice.post(f"{url}/webhook", json=body)
        assert r.status_code == 200 and r.json()["status"] == "ignored", r.text
    green = next(i for i in alice.get(f"/datasets/{ds['id']}/items").json()["data"] if i["file"] == "green.png")
    assert green["label"] is None

    r = alice.post(f"{url}/webhook", json={"action": "START_TRAINING", "project": project})
    assert r.status_code == 201, r.text
    job_id = r.json()["result"]["job_id"]
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job.dataset_id == ds["id"] and job.status == "queued"


def test_deleted_annotations_undo_their_tags_unless_decided_since(alice: Api, bob: Api, backend: dict) -> None:
    """ANNOTATIONS_DELETED (Label Studio sends the deleted annotations' ids only): the tags those annotations set
    go back to what they replaced (the model's tag, or none), updates included; a tag decided since stands."""
    url, ds, model_id = backend["url"], backend["dataset"], backend["model_id"]
    project = {"id": 3, "label_config": LABEL_CONFIG}
    items = {i["file"]: i for i in alice.get(f"/datasets/{ds['id']}/items").json()["data"]}
    red, green, blue = (items[f]["id"] for f in ("red.png", "green.png", "photos/blue.png"))
    with session_scope() as session:  # what a job leaves: a model's tag on green and blue
        for item_id, label in ((green, "cat"), (blue, "dog")):
            item = session.get(Item, item_id)
            item.label, item.label_source, item.model_id = label, "model", model_id
            item.confidence, item.margin, item.needs_review = 0.55, 0.1, True
        session.flush()
        refresh_review_count(session, ds["id"])
    before = {i: alice.get(f"/items/{i}").json() for i in (red, green, blue)}

    def annotate(action: str, annotation_id: int, image: str, choice: str) -> None:
        result = [{"from_name": "choice", "to_name": "image", "type": "choices", "value": {"choices": [choice]}}]
        body = {"action": action, "annotation": {"id": annotation_id, "result": result}, "task": task(8, image)}
        r = alice.post(f"{url}/webhook", json={**body, "project": project})
        assert r.status_code == 201, r.text

    def deleted(*ids) -> dict:
        body = {"action": "ANNOTATIONS_DELETED", "annotations": [{"id": i} for i in ids], "project": project}
        return alice.post(f"{url}/webhook", json=body)

    annotate("ANNOTATION_CREATED", 11, "red.png", "lynx")
    annotate("ANNOTATION_UPDATED", 11, "red.png", "dog")  # widens red's candidates
    annotate("ANNOTATION_CREATED", 12, "green.png", "lynx")
    annotate("ANNOTATION_CREATED", 13, "blue.png", "cat")
    assert alice.patch(f"/items/{green}", json={"label": "cat"}).status_code == 200  # decided again, in tagsift

    # malformed deletions name the field and the entry, and change nothing
    r = alice.post(f"{url}/webhook", json={"action": "ANNOTATIONS_DELETED", "project": project})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "annotations", r.text
    r = alice.post(f"{url}/webhook", json={"action": "ANNOTATIONS_DELETED", "annotations": [{"id": 11}, {"x": 1}]})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "annotations[1].id", r.text
    r = alice.post(f"{url}/webhook", json={"action": "TASKS_DELETED", "annotations": 3})  # whatever the action
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "annotations", r.text
    assert alice.get(f"/items/{red}").json()["label"] == "dog"
    # another owner's dataset is not found
    assert (
        bob.client.post(
            f"{url}/webhook",
            json={"action": "ANNOTATIONS_DELETED", "annotations": [{"id": 11}]},
            headers=basic(bob.key),
        ).status_code
        == 404
    )

    r = deleted(11.0, 12, "13", 99)  # JSON numbers and string ids name the same annotations
    assert r.status_code == 200 and r.json()["status"] == "ok", r.text
    assert sorted(r.json()["result"]["undone"]) == sorted([red, blue]) and r.json()["result"]["kept"] == [green]
    fields = ("label", "label_source", "confidence", "margin", "needs_review", "candidates", "probs")
    for item_id in (red, blue):  # back to exactly what the annotation replaced, through its update
        now = alice.get(f"/items/{item_id}").json()
        assert {f: now[f] for f in fields} == {f: before[item_id][f] for f in fields}, item_id
    assert before[red]["label"] is None and before[blue]["label_source"] == "model"
    now = alice.get(f"/items/{green}").json()
    assert now["label"] == "cat" and now["label_source"] == "reviewer"  # the later decision stands
    with session_scope() as session:
        assert session.get(Item, blue).model_id == model_id  # the model that proposed the restored tag
        reviews = session.scalars(select(ItemReview).where(ItemReview.item_id == red).order_by(ItemReview.id)).all()
        assert [(r.action, r.undone, r.source_ref) for r in reviews] == [
            ("assign", True, "label-studio:annotation:11"),
            ("assign", True, "label-studio:annotation:11"),
            ("undo", False, None),
        ]
        assert reviews[-1].reviewer.endswith("(Label Studio)")

    again = deleted(11)  # Label Studio retries a delivery: nothing left to undo
    assert again.status_code == 200 and again.json()["status"] == "ignored", again.text


def test_export_label_studio_tasks(alice: Api, backend: dict) -> None:
    ds, model_id = backend["dataset"], backend["model_id"]
    with session_scope() as session:
        red = session.scalar(select(Item).where(Item.dataset_id == ds["id"], Item.file == "red.png"))
        red.label, red.confidence, red.margin, red.label_source, red.model_id = "cat", 0.9, 0.8, "model", model_id
    listing = alice.get(f"/datasets/{ds['id']}/items").json()["data"]
    green_id = next(i["id"] for i in listing if i["file"] == "green.png")
    assert alice.patch(f"/items/{green_id}", json={"label": "lynx"}).status_code == 200

    r = alice.get(f"/datasets/{ds['id']}/labels", params={"format": "label-studio"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    tasks = json.loads(r.content)
    assert [t["data"]["file"] for t in tasks] == ["red.png", "green.png", "photos/blue.png"]
    red_task, green_task, blue_task = tasks
    assert red_task["predictions"] == [
        {
            "model_version": model_id,
            "score": 0.9,
            "result": [
                {
                    "from_name": "choice",
                    "to_name": "image",
                    "type": "choices",
                    "value": {"choices": ["cat"]},
                    "score": 0.9,
                }
            ],
        }
    ]
    assert green_task["annotations"][0]["result"][0]["value"] == {"choices": ["lynx"]}
    assert "predictions" not in blue_task and blue_task["data"]["image"].endswith("/image")
    r = alice.get(f"/datasets/{ds['id']}/labels", params={"format": "label-studio", "from_name": "tag"})
    assert json.loads(r.content)[0]["predictions"][0]["result"][0]["from_name"] == "tag"

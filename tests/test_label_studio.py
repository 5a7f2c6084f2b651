"""A real Label Studio 1.23.2 (its own venv, SQLite, loopback) with a real ``tagsift serve`` as its ML backend.

The user's path, end to end: a Label Studio project is annotated and exported; the export (and the images) become
a tagsift dataset; tagsift (with a trained model: the tiny channel classifier of ``tests.app.model_fixtures``, a
red image is a cat, green a lynx, blue a dog) is connected as the project's ML backend with Basic auth; Label
Studio asks for predictions, including a task whose image tagsift must read from Label Studio with the token
``/setup`` gave it; an annotation made in Label Studio reaches tagsift through the webhook as a reviewer tag;
"Start Training" starts a tagsift job; the labels exported with ``format=label-studio`` import into a new project
with their predictions; the annotation deleted in Label Studio undoes its tag in tagsift. Label Studio missing is a
failure, never a skip (``scripts/install-label-studio.sh``).
"""

from __future__ import annotations

import base64
import os
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from app.db import session_scope
from app.models import Item, Job
from app.services.api_keys import create_api_key
from tests.app.model_fixtures import BLUE, GREEN, RED, channel_classifier_onnx, solid, store_model
from tests.app.test_fuzz import _drop_queue
from tests.label_studio import LABEL_CONFIG, MISSING, LabelStudio
from tests.worker.conftest import ApiServer

pytestmark = [pytest.mark.integration]

EXTRA = solid((20, 30, 240), size=(32, 48))  # only in Label Studio: tagsift reads it from there


def choices(region_list: list[dict]) -> list[str]:
    return [c for r in region_list if r.get("type") == "choices" for c in r["value"]["choices"]]


def wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture
def label_studio(tmp_path: Path):
    try:
        server = LabelStudio(tmp_path / "label-studio")
    except RuntimeError as exc:
        pytest.fail(str(exc) if MISSING in str(exc) else f"Label Studio did not start: {exc}")
    try:
        yield server
    finally:
        server.stop()


def test_label_studio_import_backend_webhook_and_export(label_studio: LabelStudio, prod_env, tmp_path: Path) -> None:
    ls = label_studio
    with session_scope() as session:
        key = create_api_key(session=session, owner_name=f"ls-{time.time_ns()}")
    api = ApiServer(tmp_path / "tagsift.log", {**os.environ, "TAGSIFT_LABEL_STUDIO_URL": ls.url})
    tagsift = httpx.Client(base_url=api.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=60)
    try:
        ls.wait_ready()
        # --- a Label Studio project, annotated and exported -----------------------------------------------------
        project = ls.api("POST", "/api/projects", json={"title": "pets", "label_config": LABEL_CONFIG}).json()
        pid = project["id"]
        files = {"file0": ("red.png", RED, "image/png"), "file1": ("green.png", GREEN, "image/png")}
        files["file2"] = ("blue.png", BLUE, "image/png")
        ls.api("POST", f"/api/projects/{pid}/import", files=files)
        tasks = ls.api("GET", "/api/tasks", params={"project": pid, "page_size": 100}).json()["tasks"]
        by_file = {t["data"]["image"].rsplit("-", 1)[1]: t["id"] for t in tasks}
        assert set(by_file) == {"red.png", "green.png", "blue.png"}

        def annotate(task_id: int, picked: list[str]) -> None:
            region = {"from_name": "choice", "to_name": "image", "type": "choices", "value": {"choices": picked}}
            ls.api("POST", f"/api/tasks/{task_id}/annotations", json={"result": [region]})

        annotate(by_file["red.png"], ["cat", "lynx"])
        annotate(by_file["blue.png"], ["dog"])
        export = ls.api(
            "GET", f"/api/projects/{pid}/export", params={"exportType": "JSON", "download_all_tasks": "true"}
        ).content

        # --- the export becomes a tagsift dataset ----------------------------------------------------------------
        upload = [("manifest", ("export.json", export, "application/json"))]
        upload += [
            ("images", (n, b, "image/png")) for n, b in (("red.png", RED), ("green.png", GREEN), ("blue.png", BLUE))
        ]
        r = tagsift.post("/datasets", data={"name": "from-label-studio"}, files=upload)
        assert r.status_code == 201, r.text
        ds = r.json()
        assert ds["classes"] == ["cat", "dog", "lynx"] and ds["added"] == 3
        items = {i["file"]: i for i in tagsift.get(f"/datasets/{ds['id']}/items").json()["data"]}
        assert items["red.png"]["candidates"] == ["cat", "lynx"] and items["blue.png"]["candidates"] == ["dog"]
        assert items["green.png"]["candidates"] == ["cat", "dog", "lynx"]  # nobody annotated it
        assert tagsift.post(f"/datasets/{ds['id']}/jobs", json={}).status_code == 202
        model_id = store_model(ds["id"], channel_classifier_onnx())

        # a task tagsift does not have: its image is only in Label Studio
        ls.api("POST", f"/api/projects/{pid}/import", files={"file0": ("extra.png", EXTRA, "image/png")})
        tasks = ls.api("GET", "/api/tasks", params={"project": pid, "page_size": 100}).json()["tasks"]
        by_file = {t["data"]["image"].rsplit("-", 1)[1]: t["id"] for t in tasks}

        # --- connect tagsift as the ML backend -------------------------------------------------------------------
        backend_url = f"{api.base_url}/label-studio/{ds['id']}"
        auth = {"Authorization": "Basic " + base64.b64encode(f"tagsift:{key}".encode()).decode()}
        started = time.monotonic()
        assert httpx.get(f"{backend_url}/health", headers=auth).json()["status"] == "UP"
        assert time.monotonic() - started < 1.0  # Label Studio's ML_TIMEOUT_HEALTH
        setup = {"project": f"{pid}.0", "schema": LABEL_CONFIG, "hostname": ls.url, "access_token": ls.token}
        started = time.monotonic()
        assert httpx.post(f"{backend_url}/setup", json=setup, headers=auth).json() == {"model_version": model_id}
        assert time.monotonic() - started < 3.0  # ML_TIMEOUT_SETUP

        ml = ls.api(
            "POST",
            "/api/ml",
            json={
                "url": backend_url,
                "project": pid,
                "title": "tagsift",
                "auth_method": "BASIC_AUTH",
                "basic_auth_user": "tagsift",
                "basic_auth_pass": key,
            },
        ).json()
        ml = ls.api("GET", f"/api/ml/{ml['id']}").json()
        assert ml["model_version"] == model_id, ml
        # Label Studio registered <url>/webhook without auth: give it the key (docs/integrations.md)
        hooks = ls.api("GET", "/api/webhooks", params={"project": pid}).json()
        hook = next(h for h in hooks if h["url"] == f"{backend_url}/webhook")
        ls.api("PATCH", f"/api/webhooks/{hook['id']}", json={"headers": {"Authorization": f"Bearer {key}"}})

        # --- predictions arrive in Label Studio ------------------------------------------------------------------
        ids = list(by_file.values())
        ls.api(
            "POST",
            "/api/dm/actions",
            params={"id": "retrieve_tasks_predictions", "project": pid},
            json={"selectedItems": {"all": False, "included": ids}},
        )
        expected = {"red.png": "cat", "green.png": "lynx", "blue.png": "dog", "extra.png": "dog"}
        for name, task_id in by_file.items():
            preds = ls.api("GET", "/api/predictions", params={"task": task_id}).json()
            assert len(preds) == 1, (name, preds, api.log()[-3000:])
            assert preds[0]["model_version"] == model_id and choices(preds[0]["result"]) == [expected[name]]
            assert 0.5 < preds[0]["score"] <= 1

        # --- an annotation made in Label Studio reaches tagsift --------------------------------------------------
        annotate(by_file["green.png"], ["dog"])
        green = wait(
            lambda: (i := tagsift.get(f"/items/{items['green.png']['id']}").json())["label"] == "dog" and i,
            30,
            "the annotation to reach tagsift",
        )
        assert green["label_source"] == "reviewer"

        # --- "Start Training" in Label Studio starts a tagsift job -----------------------------------------------
        ls.api("POST", f"/api/ml/{ml['id']}/train", json={})
        with session_scope() as session:
            jobs = session.scalars(select(Job).where(Job.dataset_id == ds["id"], Job.status == "queued")).all()
        assert len(jobs) == 2, [(j.id, j.status) for j in jobs]  # the first POST /jobs and this one

        # --- labels back into Label Studio as tasks with predictions ---------------------------------------------
        with session_scope() as session:  # what a finished job leaves on the items
            for item in session.scalars(select(Item).where(Item.dataset_id == ds["id"], Item.label.is_(None))):
                item.label, item.confidence, item.margin = item.candidates[0], 0.75, 0.5
                item.label_source, item.model_id = "model", model_id
        exported = tagsift.get(f"/datasets/{ds['id']}/labels", params={"format": "label-studio"}).json()
        second = ls.api("POST", "/api/projects", json={"title": "back", "label_config": LABEL_CONFIG}).json()
        summary = ls.api("POST", f"/api/projects/{second['id']}/import", json=exported).json()
        assert summary["task_count"] == 3 and summary["prediction_count"] == 2 and summary["annotation_count"] == 1
        preds = ls.api("GET", "/api/predictions", params={"project": second["id"]}).json()
        assert sorted(choices(p["result"])[0] for p in preds) == ["cat", "dog"]
        assert {p["model_version"] for p in preds} == {model_id} and {p["score"] for p in preds} == {0.75}

        # --- the annotation deleted in Label Studio: its tag in tagsift is undone --------------------------------
        (annotation,) = ls.api("GET", f"/api/tasks/{by_file['green.png']}/annotations").json()
        ls.api("DELETE", f"/api/annotations/{annotation['id']}")
        green = wait(
            lambda: (i := tagsift.get(f"/items/{items['green.png']['id']}").json())["label_source"] != "reviewer" and i,
            30,
            "the deletion to reach tagsift",
        )
        assert green["label"] is None and green["candidates"] == ["cat", "dog", "lynx"]  # as before the annotation
    except BaseException:
        print("--- label-studio log ---\n" + ls.log())
        print("--- tagsift log ---\n" + api.log()[-6000:])
        raise
    finally:
        tagsift.close()
        api.stop()
        _drop_queue(prod_env.broker_url, prod_env.queue)  # the two jobs' messages: no worker runs them here

"""Label Studio JSON exports as uploads: each rule of ``app.uploads.label_studio`` on a real export.

``data/label_studio_export.json`` is a verbatim "JSON" export of Label Studio 1.23.2 (image classification,
``Choices`` named ``choice``; made with the real server, as ``tests/test_label_studio.py`` does): task 1 one choice,
task 2 two choices in one annotation, task 3 two annotators who disagree, task 4 skipped (a cancelled
annotation), task 5 a ground-truth annotation and a second one, task 6 no annotation and one prediction, written as
an integer id as the open-source export does. ``data/label_studio_prediction.json`` is that prediction as an
object (Label Studio's ``GET /api/predictions``).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from tests.app.conftest import Api, image_bytes, zip_bytes

DATA = Path(__file__).parent / "data"
EXPORT = json.loads((DATA / "label_studio_export.json").read_text())
PREDICTION = json.loads((DATA / "label_studio_prediction.json").read_text())


def _images(prefixed: bool = False, skip: tuple[int, ...] = ()) -> dict[str, bytes]:
    """The six images under their original names (img0.png ...) or Label Studio's prefixed ones."""
    out = {}
    for i, task in enumerate(EXPORT):
        if i in skip:
            continue
        name = task["data"]["image"].rsplit("/", 1)[1]
        out[name if prefixed else name.split("-", 1)[1]] = image_bytes(100 + i)
    return out


def _post(api: Api, url: str, export, images: dict[str, bytes], **data: str):
    files = [("manifest", ("project-1-at-2026.json", json.dumps(export).encode(), "application/json"))]
    files += [("images", (name, content, "image/png")) for name, content in images.items()]
    return api.post(url, data=data, files=files)


def _items(api: Api, dataset_id: str) -> dict[str, dict]:
    return {it["file"]: it for it in api.get(f"/datasets/{dataset_id}/items").json()["data"]}


def test_real_export_candidate_rules(alice: Api) -> None:
    r = _post(alice, "/datasets", EXPORT, _images(), name="from-ls")
    assert r.status_code == 201, r.text
    ds = r.json()
    # classes inferred from every choice of the export, sorted
    assert ds["classes"] == ["cat", "dog", "lynx"]
    assert ds["added"] == 5 and ds["skipped"] == ["task 4"]
    items = _items(alice, ds["id"])
    assert set(items) == {"img0.png", "img1.png", "img2.png", "img4.png", "img5.png"}  # img3 (skipped) left out
    assert items["img0.png"]["candidates"] == ["cat"]
    assert items["img1.png"]["candidates"] == ["cat", "lynx"]  # two choices in one annotation
    assert items["img2.png"]["candidates"] == ["dog", "lynx"]  # two annotators disagree
    assert items["img4.png"]["candidates"] == ["cat", "lynx"] and items["img4.png"]["given_label"] == "lynx"
    assert items["img5.png"]["candidates"] == ["cat", "dog", "lynx"]  # a prediction id holds no choice: every class
    assert all(it["given_label"] is None for f, it in items.items() if f != "img4.png")


def test_prediction_objects_give_candidates_only_to_unannotated_tasks(alice: Api) -> None:
    export = copy.deepcopy(EXPORT)
    export[5]["predictions"] = [PREDICTION]  # task 6: not annotated, predicted "dog"
    export[0]["predictions"] = [{**PREDICTION, "result": [{**PREDICTION["result"][0], "value": {"choices": ["lynx"]}}]}]
    r = _post(alice, "/datasets", export, _images(), name="preds", classes=json.dumps(["cat", "lynx", "dog"]))
    assert r.status_code == 201, r.text
    items = _items(alice, r.json()["id"])
    assert items["img5.png"]["candidates"] == ["dog"]
    assert items["img0.png"]["candidates"] == ["cat"]  # annotated: a prediction does not widen a person's choice
    assert r.json()["classes"] == ["cat", "lynx", "dog"]  # given classes keep their order


def test_prefixed_names_zip_and_detection_by_content(alice: Api) -> None:
    # Label Studio's own copies (media/upload/<project>/<8 hex>-name) in a zip with the export as manifest.json;
    # the manifest is recognised by its leading "[" without manifest_format.
    archive = zip_bytes(
        {"manifest.json": json.dumps(EXPORT).encode()} | {f"upload/1/{n}": b for n, b in _images(prefixed=True).items()}
    )
    r = alice.post("/datasets", data={"name": "zip"}, files=[("archive", ("ls.zip", archive, "application/zip"))])
    assert r.status_code == 201, r.text
    assert r.json()["added"] == 5
    assert "upload/1/a59aaddb-img0.png" in _items(alice, r.json()["id"])


def test_add_items_from_an_export_with_manifest_format(alice: Api) -> None:
    ds = alice.post("/datasets", json={"name": "d", "classes": ["cat", "dog", "lynx"]}).json()
    # a manifest named .jsonl but declared a Label Studio export
    files = [("manifest", ("m.jsonl", json.dumps(EXPORT[:3]).encode(), "application/json"))]
    files += [("images", (n, b, "image/png")) for n, b in list(_images().items())[:3]]
    r = alice.post(f"/datasets/{ds['id']}/items", data={"manifest_format": "label-studio"}, files=files)
    assert r.status_code == 201, r.text
    assert r.json()["added"] == 3 and r.json()["skipped"] == []


@pytest.mark.parametrize(
    ("mutate", "images", "field", "item", "text"),
    [
        (lambda e: {"tasks": e}, None, "manifest", None, "JSON list of tasks"),
        (lambda e: e[0]["data"].pop("image"), None, "data.image", "task 1", "data.image is required"),
        (
            lambda e: e[1]["annotations"][0]["result"][0]["value"].update(choices=["cat", "zebra"]),
            None,
            "annotations[0].result[0].value.choices",
            "task 2",
            "'zebra' is not one of the classes",
        ),
        (None, _images(skip=(2,)), "data.image", "task 3", "the image was not sent"),
        (
            lambda e: e[0]["annotations"][0]["result"][0]["value"].update(choices="cat"),
            None,
            "annotations[0].result[0].value.choices",
            "task 1",
            "must be a list of strings",
        ),
        (
            lambda e: e[5].update(
                predictions=[{**PREDICTION, "result": [{**PREDICTION["result"][0], "from_name": "q"}]}]
            ),
            None,
            "predictions[0].result[0].from_name",
            "task 6",
            "several Choices controls",
        ),
        (
            lambda e: e.__setitem__(0, {"id": 1, "image": "/data/upload/1/a59aaddb-img0.png", "choice": "cat"}),
            None,
            "data.image",
            "task 1",
            "JSON-MIN",
        ),
    ],
    ids=["not-a-list", "no-image", "outside-classes", "image-not-sent", "choices-not-list", "two-controls", "min"],
)
def test_malformed_export_is_one_422_naming_task_and_field(alice: Api, mutate, images, field, item, text) -> None:
    export = copy.deepcopy(EXPORT)
    if mutate is not None:
        changed = mutate(export)  # most mutate in place; "not-a-list" returns the object to send
        export = changed if isinstance(changed, dict) else export
    classes = json.dumps(["cat", "dog", "lynx"])
    r = _post(
        alice, "/datasets", export, images or _images(), name="bad", classes=classes, manifest_format="label-studio"
    )
    assert r.status_code == 422, r.text
    errors = r.json()["errors"]
    hits = [e for e in errors if e["field"] == field and e.get("item") == item and text in e["message"]]
    assert hits, errors
    assert alice.get("/datasets").json()["data"] == []  # nothing stored


def test_bad_export_to_existing_dataset_stores_nothing(alice: Api) -> None:
    ds = alice.post("/datasets", json={"name": "d", "classes": ["cat", "lynx"]}).json()  # no "dog"
    r = _post(alice, f"/datasets/{ds['id']}/items", EXPORT, _images(), manifest_format="label-studio")
    assert r.status_code == 422
    assert {e["item"] for e in r.json()["errors"] if "'dog' is not one of the classes" in e["message"]} == {"task 3"}
    assert alice.get(f"/datasets/{ds['id']}").json()["item_count"] == 0
    # with `classes` adding "dog", the same upload goes through
    r = _post(
        alice, f"/datasets/{ds['id']}/items", EXPORT, _images(), manifest_format="label-studio", classes='["dog"]'
    )
    assert r.status_code == 201, r.text
    assert alice.get(f"/datasets/{ds['id']}").json()["classes"] == ["cat", "lynx", "dog"]


def test_a_json_list_of_manifest_rows_gets_a_hint(alice: Api) -> None:
    rows = [{"file": "img0.png", "candidates": ["cat"]}]
    r = alice.post(
        "/datasets",
        data={"name": "x"},
        files=[("manifest", ("m.json", json.dumps(rows).encode(), "application/json"))]
        + [("images", ("img0.png", image_bytes(1), "image/png"))],
    )
    assert r.status_code == 422
    assert "one per line, as JSONL" in r.json()["errors"][0]["message"]


def test_unknown_manifest_format_is_named(alice: Api) -> None:
    r = _post(alice, "/datasets", EXPORT, _images(), name="x", manifest_format="coco")
    assert r.status_code == 422
    assert any(e["field"] == "manifest_format" for e in r.json()["errors"])


def test_skipped_task_needs_no_image(alice: Api) -> None:
    r = _post(alice, "/datasets", EXPORT, _images(skip=(3,)), name="no-skipped-image")
    assert r.status_code == 201, r.text
    assert r.json()["added"] == 5 and r.json()["skipped"] == ["task 4"]


@pytest.mark.parametrize(
    ("ref", "names"),
    [
        ("/data/upload/1/a59aaddb-img0.png", ["a59aaddb-img0.png", "img0.png"]),
        ("/data/local-files/?d=photos/cat%201.jpg", ["cat 1.jpg"]),
        ("s3://bucket/pets/Cat.JPG", ["Cat.JPG"]),
        ("https://example.com/x/0123abcd-dog.png?token=1", ["0123abcd-dog.png", "dog.png"]),
        ("dog.png", ["dog.png"]),
        ("/data/upload/1/ABCDEF12-up.png", ["ABCDEF12-up.png"]),  # Label Studio's prefix is lower-case hex
    ],
)
def test_image_names(ref: str, names: list[str]) -> None:
    from app.uploads.label_studio import image_names

    assert image_names(ref) == names


def _candidates(api: Api, response) -> dict[str, list[str]]:
    assert response.status_code == 201, response.text
    return {f: it["candidates"] for f, it in _items(api, response.json()["id"]).items()}


def test_results_that_are_not_choices_are_ignored(alice: Api) -> None:
    baseline = _candidates(alice, _post(alice, "/datasets", EXPORT, _images(), name="plain"))
    export = copy.deepcopy(EXPORT)
    # a rectangle (Label Studio's RectangleLabels region, as its export writes it) next to task 1's and task 3's
    # choices, with labels that are no class (zebra) and one that is (dog); a text area; and on task 6 (nobody
    # annotated) a prediction object holding only a rectangle
    rect = {
        "original_width": 16,
        "original_height": 12,
        "image_rotation": 0,
        "value": {"x": 12.5, "y": 25.0, "width": 50.0, "height": 41.7, "rotation": 0, "rectanglelabels": ["zebra"]},
        "id": "Xk3v9QaB1z",
        "from_name": "label",
        "to_name": "image",
        "type": "rectanglelabels",
        "origin": "manual",
    }
    text = {"value": {"text": ["a dog?"]}, "id": "t1", "from_name": "notes", "to_name": "image", "type": "textarea"}
    export[0]["annotations"][0]["result"].append(rect)
    export[2]["annotations"][1]["result"].insert(0, {**rect, "value": {**rect["value"], "rectanglelabels": ["dog"]}})
    export[2]["annotations"][0]["result"].append(text)
    export[5]["predictions"] = [{**PREDICTION, "result": [rect]}]
    r = _post(alice, "/datasets", export, _images(), name="with-regions")
    assert _candidates(alice, r) == baseline  # the same candidates as without the regions
    assert baseline["img0.png"] == ["cat"] and baseline["img5.png"] == ["cat", "dog", "lynx"]
    assert r.json()["classes"] == ["cat", "dog", "lynx"]  # "zebra" (a rectangle's label) is no class
    # ... also when the classes are given: a rectangle's label outside them is not an error
    r = _post(alice, "/datasets", export, _images(), name="given", classes=json.dumps(["cat", "dog", "lynx"]))
    assert _candidates(alice, r) == baseline


def test_a_cancelled_annotation_next_to_a_usable_one_is_ignored(alice: Api) -> None:
    export = copy.deepcopy(EXPORT)
    cancelled = copy.deepcopy(EXPORT[3]["annotations"][0])  # task 4's real skip (was_cancelled: true)
    assert cancelled["was_cancelled"] is True
    choice = copy.deepcopy(EXPORT[0]["annotations"][0]["result"][0])
    # task 1: a usable "cat", then a cancelled annotation that had picked "zebra" (no class) and "dog"
    export[0]["annotations"].append({**cancelled, "result": [{**choice, "value": {"choices": ["zebra", "dog"]}}]})
    # task 4: its cancelled annotation, and another annotator's usable "lynx" after it
    export[3]["annotations"].append(
        {**copy.deepcopy(EXPORT[0]["annotations"][0]), "id": 9, "result": [{**choice, "value": {"choices": ["lynx"]}}]}
    )
    r = _post(alice, "/datasets", export, _images(), name="cancelled")
    assert r.status_code == 201, r.text
    assert r.json()["skipped"] == [] and r.json()["added"] == 6  # task 4 is not skipped any more
    assert r.json()["classes"] == ["cat", "dog", "lynx"]  # nothing read from a cancelled annotation
    items = _items(alice, r.json()["id"])
    assert items["img0.png"]["candidates"] == ["cat"]
    assert items["img3.png"]["candidates"] == ["lynx"]


@pytest.mark.parametrize(
    ("images", "archive"),
    [
        # Label Studio's prefixed copy and the original name, both sent: both match task 1's data.image
        ({"a59aaddb-img0.png": image_bytes(200), "img0.png": image_bytes(201)}, False),
        # two folders of a zip holding a file of the same name
        ({"a/img0.png": image_bytes(200), "b/img0.png": image_bytes(201)}, True),
    ],
    ids=["prefixed-and-original", "same-name-two-folders"],
)
def test_two_sent_files_matching_one_task_is_one_422(alice: Api, images: dict[str, bytes], archive: bool) -> None:
    others = {n: b for n, b in _images().items() if n != "img0.png"}
    classes = json.dumps(["cat", "dog", "lynx"])
    if archive:
        members = {"manifest.json": json.dumps(EXPORT).encode()} | others | images
        r = alice.post(
            "/datasets",
            data={"name": "two", "classes": classes},
            files=[("archive", ("ls.zip", zip_bytes(members), "application/zip"))],
        )
    else:
        r = _post(alice, "/datasets", EXPORT, others | images, name="two", classes=classes)
    assert r.status_code == 422, r.text
    errors = r.json()["errors"]
    assert [(e["field"], e["item"]) for e in errors] == [("data.image", "task 1")], errors
    assert "several sent files match" in errors[0]["message"]
    assert all(name in errors[0]["message"] for name in images)
    assert alice.get("/datasets").json()["data"] == []  # nothing stored


def test_a_file_named_in_full_by_one_task_is_not_another_tasks_unprefixed_match(alice: Api) -> None:
    # task 1 names a59aaddb-img0.png; task 6 now names img0.png in full: both files sent, each goes to its task
    export = copy.deepcopy(EXPORT)
    export[5]["data"]["image"] = "/data/upload/1/img0.png"
    images = {n: b for n, b in _images().items() if n not in ("img0.png", "img5.png")}
    images |= {"a59aaddb-img0.png": image_bytes(200), "img0.png": image_bytes(201)}
    r = _post(alice, "/datasets", export, images, name="exact")
    assert r.status_code == 201, r.text
    items = _items(alice, r.json()["id"])
    assert items["a59aaddb-img0.png"]["candidates"] == ["cat"]  # task 1
    assert items["img0.png"]["candidates"] == ["cat", "dog", "lynx"]  # task 6 (no annotation)

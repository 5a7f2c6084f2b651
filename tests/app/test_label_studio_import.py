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

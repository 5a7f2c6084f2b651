"""Hostile uploads (issue 27) against the real PostgreSQL and blob store: names that render alike or hide
characters, a file name an item already has, JSONL/CSV manifests that used to be misread, multipart bodies that
used to be half-read, JSON past Python's own limits. Each is the documented 4xx naming the field and the item, and
nothing is stored (every row count and every blob file unchanged); what is normalised (NFC) is stored normalised.

The name rule is docs/api.md's "Names"; ``app.names`` implements it.
"""

from __future__ import annotations

import json
import unicodedata
import uuid

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from app.db import session_scope
from app.main import create_app
from app.models import Item
from tests.app.conftest import Api, jsonl, zip_bytes
from tests.app.test_bad_input import assert_problem, good_image, multipart, post_parts, stored
from tests.app.test_web import sign_in
from tests.label_studio import LABEL_CONFIG

TAGS = ["cat", "lynx", "dog"]

#: Characters that render as nothing (or reorder what follows): refused in every name.
INVISIBLE = {
    "zero-width-space": "\u200b",
    "zero-width-non-joiner": "\u200c",
    "zero-width-joiner": "\u200d",
    "right-to-left-override": "\u202e",
    "byte-order-mark": "\ufeff",
    "hangul-filler": "\u3164",
    "hangul-choseong-filler": "\u115f",
    "hangul-jungseong-filler": "\u1160",
    "halfwidth-hangul-filler": "\uffa0",
    "line-separator": "\u2028",
    "soft-hyphen": "\u00ad",
    "variation-selector": "\ufe0f",
}
INVISIBLE_PARAMS = [pytest.param(ch, id=name) for name, ch in INVISIBLE.items()]


def _manifest_parts(rows: list[dict], images: dict[str, bytes], **fields: str) -> list:
    parts = [(k, v.encode(), None) for k, v in fields.items()]
    parts.append(("manifest", jsonl(rows), "manifest.jsonl"))
    parts += [("images", data, name) for name, data in images.items()]
    return parts


def refused(api: Api, url: str, parts: list, status: int, field: str | None, item: str | None, needle: str) -> dict:
    """POST ``parts``: the problem expected, and nothing stored (rows and blob files as before)."""
    before = stored(api)
    body = assert_problem(post_parts(api, url, parts), status, field, item, needle)
    assert stored(api) == before
    return body


@pytest.fixture
def dataset(alice: Api) -> dict:
    return alice.make_dataset(2, offset=uuid.uuid4().int % 10**9)


# --- names: invisible characters ----------------------------------------------------------------------------


@pytest.mark.parametrize("ch", INVISIBLE_PARAMS)
def test_invisible_characters_are_refused_in_every_name(alice: Api, dataset: dict, ch: str) -> None:
    url = f"/datasets/{dataset['id']}/items"
    tag, file = f"ca{ch}t", f"x{ch}gpj.png"
    img = good_image()
    # a tag in the classes field, and as a candidate
    refused(
        alice,
        "/datasets",
        _manifest_parts([], {}, name="n", classes=json.dumps(["cat", tag])),
        422,
        "classes",
        "1",
        f"U+{ord(ch):04X}",
    )
    rows = [{"file": "a.png", "candidates": [tag]}]
    refused(alice, url, _manifest_parts(rows, {"a.png": img}), 422, "candidates", "a.png", f"U+{ord(ch):04X}")
    # a file name in the manifest (and the same name on the image part)
    rows = [{"file": file, "candidates": ["cat"]}]
    refused(alice, url, _manifest_parts(rows, {file: img}), 422, "file", file, f"U+{ord(ch):04X}")
    # the dataset's name, in a multipart upload and in the JSON create
    rows = [{"file": "a.png", "candidates": ["cat"]}]
    refused(
        alice,
        "/datasets",
        _manifest_parts(rows, {"a.png": img}, name=f"my{ch}set"),
        422,
        "name",
        None,
        f"U+{ord(ch):04X}",
    )
    before = stored(alice)
    r = alice.post("/datasets", json={"name": f"my{ch}set", "classes": ["cat"]})
    assert_problem(r, 422, "name", None, f"U+{ord(ch):04X}")
    r = alice.post("/datasets", json={"name": "set", "classes": ["cat", tag]})
    assert_problem(r, 422, "classes", "1", f"U+{ord(ch):04X}")
    assert stored(alice) == before


def test_invisible_characters_in_csv_and_label_studio_manifests(alice: Api, dataset: dict) -> None:
    url = f"/datasets/{dataset['id']}/items"
    csv = "file,candidates\na.png,cat|do\u200bg\n".encode()
    parts = [("manifest", csv, "manifest.csv"), ("images", good_image(), "a.png")]
    refused(alice, url, parts, 422, "candidates", "a.png", "U+200B")
    region = {"type": "choices", "from_name": "c", "to_name": "i", "value": {"choices": ["c\u202eat"]}}
    export = [{"id": 4, "data": {"image": "/data/upload/1/a.png"}, "annotations": [{"result": [region]}]}]
    parts = [("manifest", json.dumps(export).encode(), "export.json"), ("images", good_image(), "a.png")]
    body = refused(alice, url, parts, 422, None, None, "U+202E")
    assert any(e.get("item") == "task 4" and "U+202E" in e["message"] for e in body["errors"]), body["errors"]


def test_web_upload_refuses_invisible_characters(prod_env, alice: Api) -> None:
    with TestClient(create_app(), raise_server_exceptions=False) as web:
        csrf = sign_in(web, alice.key)
        rows = [{"file": "a\u200b.png", "candidates": ["cat"]}]
        files = [
            ("manifest", ("m.jsonl", jsonl(rows), "application/x-ndjson")),
            ("images", ("a\u200b.png", good_image(), "image/png")),
        ]
        before = stored(alice)
        r = web.post("/ui/api/datasets", data={"name": "w\u3164"}, files=files, headers={"X-CSRF-Token": csrf})
        assert_problem(r, 422, "file", "a\u200b.png", "U+200B")
        assert_problem(r, 422, "name", None, "U+3164")
        assert stored(alice) == before


# --- names: one form (NFC), and look-alikes --------------------------------------------------------------------


def test_names_are_stored_in_nfc_and_match_across_forms(alice: Api) -> None:
    decomposed, composed = "cafe\u0301", "caf\u00e9"
    rows = [{"file": f"{decomposed}.png", "candidates": [composed, "tea"], "label": decomposed}]
    parts = _manifest_parts(
        rows, {f"{composed}.png": good_image()}, name=f"{decomposed} set", classes=json.dumps([decomposed, "tea"])
    )
    r = post_parts(alice, "/datasets", parts)
    assert r.status_code == 201, r.text
    ds = r.json()
    assert ds["name"] == f"{composed} set" and ds["classes"] == [composed, "tea"] and ds["added"] == 1
    with session_scope() as session:
        item = session.scalars(select(Item).where(Item.dataset_id == ds["id"])).one()
    assert (item.file, item.candidates, item.given_label) == (f"{composed}.png", [composed, "tea"], composed)
    assert unicodedata.is_normalized("NFC", item.file)
    # the two forms are one class: listing both is listing it twice
    refused(
        alice,
        "/datasets",
        _manifest_parts([], {}, name="n", classes=json.dumps([composed, decomposed])),
        422,
        "classes",
        composed,
        "listed twice",
    )


@pytest.mark.parametrize(
    ("first", "second"),
    [("cat", "Cat"), ("cat", "\uff43\uff41\uff54"), ("fish", "\ufb01sh"), ("strasse", "stra\u00dfe")],
    ids=["case", "fullwidth", "ligature", "sharp-s"],
)
def test_look_alike_classes_are_refused_naming_both(alice: Api, dataset: dict, first: str, second: str) -> None:
    # in the classes field of a new dataset
    body = refused(
        alice,
        "/datasets",
        _manifest_parts([], {}, name="n", classes=json.dumps([first, second])),
        422,
        "classes",
        second,
        "look alike",
    )
    assert any(first in e["message"] and second in e["message"] for e in body["errors"])
    # read from the candidates (no classes field)
    rows = [{"file": "a.png", "candidates": [first]}, {"file": "b.png", "candidates": [second]}]
    body = refused(
        alice,
        "/datasets",
        _manifest_parts(rows, {"a.png": good_image(), "b.png": good_image()}, name="n"),
        422,
        "classes",
        None,
        "look alike",
    )
    assert any(first in e["message"] and second in e["message"] for e in body["errors"])
    # added to an existing dataset's classes ("cat", "lynx", "dog")
    if first == "cat":
        url = f"/datasets/{dataset['id']}/items"
        rows = [{"file": "c.png", "candidates": ["dog"]}]
        parts = _manifest_parts(rows, {"c.png": good_image()}, classes=json.dumps([second]))
        refused(alice, url, parts, 422, "classes", second, "look alike")


def test_look_alike_file_names_are_refused_naming_both(alice: Api, dataset: dict) -> None:
    rows = [{"file": "Photo.png", "candidates": ["cat"]}, {"file": "photo.png", "candidates": ["dog"]}]
    images = {"Photo.png": good_image(), "photo.png": good_image()}
    body = refused(
        alice,
        "/datasets",
        _manifest_parts(rows, images, name="n", classes=json.dumps(TAGS)),
        422,
        "file",
        "photo.png",
        "looks like Photo.png",
    )
    assert body["errors"][0]["line"] == 2
    # against the dataset's items (img0.png, img1.png)
    url = f"/datasets/{dataset['id']}/items"
    rows = [{"file": "IMG0.png", "candidates": ["cat"]}]
    refused(alice, url, _manifest_parts(rows, {"IMG0.png": good_image()}), 422, "file", "IMG0.png", "img0.png")


# --- a file name the dataset already has ---------------------------------------------------------------------


def test_a_new_image_under_an_items_file_name_is_refused(alice: Api, dataset: dict) -> None:
    url = f"/datasets/{dataset['id']}/items"
    rows = [{"file": "img0.png", "candidates": ["cat"]}, {"file": "new.png", "candidates": ["dog"]}]
    body = refused(
        alice,
        url,
        _manifest_parts(rows, {"img0.png": good_image(), "new.png": good_image()}),
        422,
        "file",
        "img0.png",
        "already has an item of this file name",
    )
    assert [e["item"] for e in body["errors"]] == ["img0.png"]
    # the same image under its own name is a duplicate, reported and not stored (as any stored image is)
    with session_scope() as session:
        item = session.scalars(select(Item).where(Item.dataset_id == dataset["id"], Item.file == "img0.png")).one()
    data = alice.get(f"/items/{item.id}/image").content
    r = post_parts(alice, url, _manifest_parts(rows[:1], {"img0.png": data}))
    assert r.status_code in (200, 201), r.text
    assert r.json()["added"] == 0 and r.json()["duplicates"][0]["duplicate_of"] == item.id
    assert r.json()["item_count"] == 2


# --- manifests ------------------------------------------------------------------------------------------------


def test_jsonl_empty_label_is_refused(alice: Api, dataset: dict) -> None:
    rows = [{"file": "a.png", "candidates": ["cat", "dog"], "label": ""}]
    url = f"/datasets/{dataset['id']}/items"
    body = refused(alice, url, _manifest_parts(rows, {"a.png": good_image()}), 422, "label", "a.png", "empty")
    assert body["errors"][0]["line"] == 1


@pytest.mark.parametrize("header", ["file,candidates,file", "file,candidates,label,Label"], ids=["file", "label"])
def test_csv_with_a_repeated_column_is_refused_naming_it(alice: Api, dataset: dict, header: str) -> None:
    column = header.split(",")[-1].lower()
    values = ",".join(["a.png", "cat", "a.png" if column == "file" else "cat", "cat"][: header.count(",") + 1])
    parts = [("manifest", f"{header}\n{values}\n".encode(), "m.csv"), ("images", good_image(), "a.png")]
    refused(alice, f"/datasets/{dataset['id']}/items", parts, 422, "manifest", column, "appears 2 times")


def test_csv_unbalanced_quote_is_named_with_its_line(alice: Api, dataset: dict) -> None:
    csv = b'file,candidates\na.png,"dog\nb.png,cat\n'
    parts = [("manifest", csv, "m.csv"), ("images", good_image(), "a.png"), ("images", good_image(), "b.png")]
    body = refused(alice, f"/datasets/{dataset['id']}/items", parts, 422, "manifest", None, "unbalanced quote")
    assert any(e.get("line") == 2 and "unbalanced quote" in e["message"] for e in body["errors"])
    assert not any("whitespace" in e["message"] for e in body["errors"]), body["errors"]


@pytest.mark.parametrize("sep", ["\u2028", "\u2029", "\x85"], ids=["U+2028", "U+2029", "U+0085"])
def test_jsonl_splits_lines_only_at_newlines(alice: Api, dataset: dict, sep: str) -> None:
    # a raw separator inside a string is valid JSON: line 1 is one line (its tag is refused for the character),
    # and the empty label on line 2 is reported on line 2
    text = '{"file": "a.png", "candidates": ["c' + sep + 'at"]}\n'
    text += '{"file": "b.png", "candidates": ["dog"], "label": ""}\n'
    parts = [
        ("manifest", text.encode(), "m.jsonl"),
        ("images", good_image(), "a.png"),
        ("images", good_image(), "b.png"),
    ]
    body = refused(alice, f"/datasets/{dataset['id']}/items", parts, 422, "label", "b.png", "empty")
    assert {(e["field"], e.get("item"), e.get("line")) for e in body["errors"]} == {
        ("candidates", "a.png", 1),
        ("label", "b.png", 2),
    }, body["errors"]
    assert any(f"U+{ord(sep):04X}" in e["message"] for e in body["errors"] if e.get("line") == 1)


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ("1" * 5000, "a number of 5000 digits, over the limit of 100 characters"),
        ("[" * 3000 + "]" * 3000, "nested more than 64 levels deep"),
        ("NaN", "NaN is not a JSON number"),
    ],
    ids=["5000-digit-integer", "3000-deep", "NaN"],
)
def test_json_past_pythons_limits_is_a_422_in_every_upload_field(
    alice: Api, dataset: dict, value: str, needle: str
) -> None:
    url = f"/datasets/{dataset['id']}/items"
    line = '{"file": "a.png", "candidates": ["cat"], "label": ' + value + "}\n"
    parts = [("manifest", line.encode(), "m.jsonl"), ("images", good_image(), "a.png")]
    refused(alice, url, parts, 422, "manifest", None, f"manifest line 1: {needle}")
    parts = _manifest_parts([{"file": "a.png", "candidates": ["cat"]}], {"a.png": good_image()}, classes=f"[{value}]")
    refused(alice, url, parts, 422, "classes", None, f"classes: {needle}")
    export = '[{"id": 1, "data": {"image": "a.png"}, "meta": ' + value + "}]"
    parts = [("manifest", export.encode(), "export.json"), ("images", good_image(), "a.png")]
    refused(alice, url, parts, 422, "manifest", None, f"manifest: {needle}")


# --- messages that name the real problem ----------------------------------------------------------------------


def test_two_archive_members_sharing_a_file_name(alice: Api, dataset: dict) -> None:
    archive = zip_bytes(
        {
            "a/cat.png": good_image(),
            "b/cat.png": good_image(),
            "manifest.jsonl": jsonl([{"file": "cat.png", "candidates": ["cat"]}]),
        }
    )
    body = refused(
        alice,
        f"/datasets/{dataset['id']}/items",
        [("archive", archive, "x.zip")],
        422,
        "manifest",
        "cat.png",
        "2 uploaded files share this file name (a/cat.png, b/cat.png)",
    )
    assert not any("not uploaded" in e["message"] or "not in the manifest" in e["message"] for e in body["errors"])


def test_multipart_body_without_its_closing_boundary(alice: Api, dataset: dict) -> None:
    rows = [{"file": "a.png", "candidates": ["cat"]}, {"file": "b.png", "candidates": ["dog"]}]
    body, ctype = multipart(_manifest_parts(rows, {"a.png": good_image(), "b.png": good_image()}))
    cut = body[: body.rindex(b"\r\n--")]  # the last part's bytes are all there; only the closing boundary is not
    before = stored(alice)
    r = alice.post(f"/datasets/{dataset['id']}/items", content=cut, headers={"Content-Type": ctype})
    problem = assert_problem(r, 400, "body", None, "truncated")
    assert "truncated" in problem["detail"] and "b.png" not in problem["detail"]
    assert stored(alice) == before


def test_images_part_without_a_filename(alice: Api, dataset: dict) -> None:
    rows = [{"file": "a.png", "candidates": ["cat"]}]
    parts = [("manifest", jsonl(rows), "m.jsonl"), ("images", good_image(), None)]  # binary, and no filename
    body = refused(alice, f"/datasets/{dataset['id']}/items", parts, 422, "images", None, "has no filename")
    assert not any("UTF-8" in e["message"] for e in body["errors"]), body["errors"]


# --- Label Studio ----------------------------------------------------------------------------------------------


def test_label_studio_import_matches_names_in_either_form(alice: Api) -> None:
    export = [{"id": 1, "data": {"image": "/data/upload/1/0a1b2c3d-cafe%CC%81.png"}}]
    parts = [("manifest", json.dumps(export).encode(), "export.json"), ("images", good_image(), "caf\u00e9.png")]
    parts.append(("classes", json.dumps(TAGS).encode(), None))
    parts.append(("name", b"ls", None))
    r = post_parts(alice, "/datasets", parts)
    assert r.status_code == 201 and r.json()["added"] == 1, r.text


def test_label_studio_predict_uses_the_config_setup_received(alice: Api, onnx_bytes: bytes) -> None:
    from tests.app.model_fixtures import RED, store_model

    r = alice.upload(
        "/datasets", [{"file": "red.png", "candidates": ["cat", "lynx"]}], {"red.png": RED}, name="ls", classes=TAGS
    )
    ds = r.json()
    assert alice.post(f"/datasets/{ds['id']}/jobs", json={}).status_code == 202
    store_model(ds["id"], onnx_bytes)
    url = f"/label-studio/{ds['id']}"
    tasks = [{"id": 1, "data": {"image": "/data/upload/3/0a1b2c3d-red.png"}}]
    assert_problem(alice.post(f"{url}/predict", json={"tasks": tasks}), 422, "label_config", None, "/setup")
    assert alice.post(f"{url}/setup", json={"project": "3.1", "schema": LABEL_CONFIG}).status_code == 200
    r = alice.post(f"{url}/predict", json={"tasks": tasks})
    assert r.status_code == 200, r.text
    assert r.json()["results"][0]["result"][0]["value"]["choices"] == ["cat"]


def test_look_alike_classes_stored_before_the_rule_do_not_block_uploads(alice: Api, dataset: dict) -> None:
    from app.models import Dataset

    with session_scope() as session:  # as a dataset created before the rule may hold them
        session.get(Dataset, dataset["id"]).classes = ["cat", "Cat", "lynx", "dog"]
        session.commit()
    rows = [{"file": "new.png", "candidates": ["Cat", "dog"]}]
    r = post_parts(alice, f"/datasets/{dataset['id']}/items", _manifest_parts(rows, {"new.png": good_image()}))
    assert r.status_code in (200, 201) and r.json()["added"] == 1, r.text
    # a third look-alike is still refused, naming the stored class it looks like
    parts = _manifest_parts([], {}, classes=json.dumps(["CAT"]))
    refused(alice, f"/datasets/{dataset['id']}/items", parts, 422, "classes", "CAT", "'cat' and 'CAT' look alike")


def test_the_refused_characters_are_every_format_character_and_the_schema_says_so(alice: Api) -> None:
    import re
    import sys

    from app.names import INVISIBLE_RANGES, invisible_char
    from app.schemas import NAME_PATTERN, TAG_SCHEMA

    refused_cps = {cp for lo, hi in INVISIBLE_RANGES for cp in range(lo, hi + 1)}
    cf = {cp for cp in range(sys.maxunicode + 1) if unicodedata.category(chr(cp)) == "Cf"}
    assert cf <= refused_cps, sorted(hex(c) for c in cf - refused_cps)  # a newer Unicode: extend INVISIBLE_RANGES
    tag, name = re.compile(TAG_SCHEMA["pattern"]), re.compile(NAME_PATTERN)
    for cp in sorted(refused_cps)[::7] + [0x200B, 0x202E, 0x3164, 0xE0041]:
        value = f"a{chr(cp)}b"
        assert invisible_char(value) is not None and not tag.match(value) and not name.match(value), hex(cp)
    assert tag.match("caf\u00e9") and name.match("my set") and invisible_char("caf\u00e9 \U0001f431") is None
    # what JSON Schema cannot say (two classes that look alike) has its own code, for clients and the fuzzer
    r = alice.post("/datasets", json={"name": "n", "classes": ["cat", "Cat"]})
    assert r.status_code == 422 and r.json()["code"] == "ambiguous_names", r.text
    r = alice.post("/datasets", json={"name": "n", "classes": ["caf\u00e9", "cafe\u0301"]})
    assert r.status_code == 422 and r.json()["code"] == "ambiguous_names", r.text
    r = alice.post("/datasets", json={"name": "n", "classes": ["cat", "Cat", ""]})
    assert r.status_code == 422 and r.json()["code"] == "invalid_input", r.text

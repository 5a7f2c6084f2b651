"""Bad input against the real PostgreSQL: every broken or hostile upload is a 4xx ``application/problem+json`` whose
``errors`` name the field and the item, nothing of the batch is stored (database rows and the blob store are
unchanged, the good image sent alongside the bad one included), and the next good request succeeds.

Covers ``POST /datasets``, ``POST /datasets/{id}/items`` and ``POST /predict``. A few shapes live elsewhere and are
not repeated here: one batch mixing many bad items (test_datasets.py::test_batch_is_all_or_nothing...), the
response of a duplicate upload (test_datasets.py::test_duplicates_are_reported_not_stored), predict's JSON
problems (test_predict.py::test_post_predict_bad_input_is_a_clear_4xx).

Bodies are encoded by :func:`multipart` here rather than by httpx, so that raw bytes (a non-UTF-8 field, a file
name httpx would percent-escape) reach the server as a hostile client would send them.
"""

from __future__ import annotations

import io
import json
import struct
import uuid
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import func, inspect, select

from app.db import get_engine, session_scope
from app.models import ApiKey, Dataset, Item, Job, JobEvent, Model, Owner
from tests.app.conftest import Api, image_bytes, jsonl
from tests.app.model_fixtures import RED, store_model

TAGS = ["cat", "lynx", "dog"]
TEN_MB = 10 * 1024 * 1024
SQL = "'; DROP TABLE items; --"

# --- bodies -----------------------------------------------------------------------------------------------

Part = tuple[str, bytes, "bytes | str | None"]  # (form field, content, file name or None for a plain field)


def multipart(parts: list[Part]) -> tuple[bytes, str]:
    """(body, Content-Type) of a multipart/form-data body; values and file names go out as the raw bytes given."""
    boundary = uuid.uuid4().hex.encode()
    out = bytearray()
    for name, content, filename in parts:
        disposition = b'form-data; name="' + name.encode() + b'"'
        if filename is not None:
            raw = filename.encode() if isinstance(filename, str) else filename
            disposition += b'; filename="' + raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
        out += b"--" + boundary + b"\r\nContent-Disposition: " + disposition + b"\r\n"
        if filename is not None:
            out += b"Content-Type: application/octet-stream\r\n"
        out += b"\r\n" + content + b"\r\n"
    out += b"--" + boundary + b"--\r\n"
    return bytes(out), f"multipart/form-data; boundary={boundary.decode()}"


def post_parts(api: Api, url: str, parts: list[Part], *, streamed: bool = False):
    body, ctype = multipart(parts)
    if streamed:  # no Content-Length: the server sees the size only while reading

        def chunks() -> Iterator[bytes]:
            for i in range(0, len(body), 4096):
                yield body[i : i + 4096]

        return api.post(url, content=chunks(), headers={"Content-Type": ctype})
    return api.post(url, content=body, headers={"Content-Type": ctype})


# --- images -----------------------------------------------------------------------------------------------


def noise(fmt: str, size: tuple[int, int] = (64, 48), seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


def garble(data: bytes, at: int, n: int = 64) -> bytes:
    junk = np.random.default_rng(1).integers(0, 256, n, dtype=np.uint8).tobytes()
    return data[:at] + junk + data[at + n :]


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(width: int, height: int) -> bytes:
    """A ~70-byte PNG whose header declares ``width`` x ``height`` pixels (a decompression bomb's header)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + _png_chunk(b"IEND", b"")
    )


def jpeg_claiming(width: int, height: int) -> bytes:
    """A small JPEG whose frame header (SOF0) is rewritten to declare ``width`` x ``height`` pixels."""
    data = bytearray(noise("JPEG", (8, 8)))
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def jpeg_with(fn: Callable[[bytearray], None]) -> bytes:
    data = bytearray(_JPEG)
    fn(data)
    return bytes(data)


def _bad_huffman_table(data: bytearray) -> None:
    dht = data.index(b"\xff\xc4")
    data[dht + 5 : dht + 21] = b"\xff" * 16  # code counts that no Huffman table can have


def _marker_in_scan(data: bytearray) -> None:
    mid = len(data) // 2
    data[mid : mid + 4] = b"\xff\xc0\x00\x11"  # a frame header in the middle of the entropy-coded data


def _flip_bit(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x10]) + data[at + 1 :]


# libjpeg conceals damage inside entropy-coded data (random bytes there decode, with artefacts, as they do in any
# viewer, and Pillow does not surface libjpeg's warnings), so the corrupt JPEGs here break the structure: a table,
# a header, a marker. A PNG is checked end to end (zlib and chunk CRCs): one flipped bit is enough.
_JPEG, _PNG = noise("JPEG"), noise("PNG")
IMAGE_CASES = [
    pytest.param("huffman.jpg", jpeg_with(_bad_huffman_table), "corrupt or truncated", id="corrupt-jpeg-table"),
    pytest.param("marker.jpg", jpeg_with(_marker_in_scan), "corrupt or truncated", id="corrupt-jpeg-scan"),
    pytest.param("bad-header.jpg", garble(_JPEG, 2, 40), "corrupt or truncated", id="corrupt-jpeg-header"),
    pytest.param("corrupt.png", garble(_PNG, len(_PNG) // 2), "corrupt or truncated", id="corrupt-png"),
    pytest.param("bitflip.png", _flip_bit(_PNG, len(_PNG) // 2), "corrupt or truncated", id="corrupt-png-one-bit"),
    pytest.param("half.jpg", _JPEG[: len(_JPEG) // 2], "truncated", id="truncated-jpeg"),
    pytest.param("no-eoi.jpg", _JPEG[:-2], "truncated", id="truncated-jpeg-end"),
    pytest.param("half.png", _PNG[: len(_PNG) // 2], "truncated", id="truncated-png"),
    pytest.param("no-iend.png", _PNG[:-12], "truncated", id="truncated-png-end"),
    pytest.param("notes.png", b"%PDF-1.7 these are not pixels\n" * 20, "not an image", id="non-image"),
    pytest.param("empty.png", b"", "0 bytes", id="zero-bytes"),
    pytest.param("bomb.png", png_claiming(30000, 30000), "too large to decode safely", id="bomb-png-30000x30000"),
    pytest.param("bomb.jpg", jpeg_claiming(30000, 30000), "too large to decode safely", id="bomb-jpeg-30000x30000"),
    pytest.param("huge.png", png_claiming(8000, 8000), "8000x8000 pixels, over the limit of 40000000", id="over-limit"),
]


# --- what is stored ---------------------------------------------------------------------------------------


def stored(api: Api) -> dict:
    """Every row count and every file under the data dir: a rejected request must leave all of it as it was."""
    with session_scope() as session:
        rows = {
            m.__tablename__: session.scalar(select(func.count()).select_from(m))
            for m in (Owner, ApiKey, Dataset, Item, Job, JobEvent, Model)
        }
    data_dir = api.settings.data_dir
    files = (
        sorted(str(p.relative_to(data_dir)) for p in data_dir.rglob("*") if p.is_file()) if data_dir.exists() else []
    )
    return {"rows": rows, "files": files}


def assert_problem(r, status: int, field: str | None, item: str | None, needle: str) -> dict:
    """A problem+json with ``status`` and an error on ``field`` (and ``item``) whose message holds ``needle``
    (``field`` None: a problem about the whole body, ``needle`` in its detail)."""
    assert r.status_code == status, r.text[:2000]
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["status"] == status and body["detail"]
    if field is None:
        assert needle in body["detail"], body
        return body
    matching = [
        e
        for e in body.get("errors", [])
        if e["field"] == field and (item is None or e.get("item") == item) and needle in e["message"]
    ]
    assert matching, (field, item, needle, body.get("errors"), body["detail"][:500])
    return body


def good_image() -> bytes:
    """An image no other test stored (so its blob appearing would show a partly stored batch)."""
    return image_bytes(uuid.uuid4().int % 10**9, size=(20, 14))


@pytest.fixture
def dataset(alice: Api) -> dict:
    """An existing dataset with items (classes cat, lynx, dog)."""
    return alice.make_dataset(2, offset=uuid.uuid4().int % 10**9)


@pytest.fixture
def model_id(alice: Api, onnx_bytes: bytes) -> str:
    """A model of alice's with real ONNX artifacts (test_predict's channel classifier: red is a cat)."""
    ds = alice.make_dataset(3, offset=uuid.uuid4().int % 10**9)
    assert alice.post(f"/datasets/{ds['id']}/jobs", json={}).status_code == 202  # store_model takes its owner
    return store_model(ds["id"], onnx_bytes)


def upload_parts(rows: list[dict] | bytes, images: list[tuple[str | bytes, bytes]], **fields: bytes) -> list[Part]:
    manifest = rows if isinstance(rows, bytes) else jsonl(rows)
    parts: list[Part] = [(k, v, None) for k, v in fields.items()]
    parts.append(("manifest", manifest, "manifest.jsonl"))
    parts += [("images", content, name) for name, content in images]
    return parts


def post_upload(api: Api, target: str, dataset: dict, parts: list[Part], *, streamed: bool = False):
    """Send an upload to ``POST /datasets`` (target "create", with a name) or ``POST /datasets/{id}/items``."""
    if target == "create":
        if not any(p[0] == "name" for p in parts):
            parts = [("name", f"bad-input-{uuid.uuid4().hex[:6]}".encode(), None), *parts]
        return post_parts(api, "/datasets", parts, streamed=streamed)
    return post_parts(api, f"/datasets/{dataset['id']}/items", parts, streamed=streamed)


def assert_still_serving(api: Api, target: str, dataset: dict) -> None:
    """The next good request of the same kind succeeds."""
    name = f"ok-{uuid.uuid4().hex[:6]}.png"
    parts = upload_parts([{"file": name, "candidates": ["cat", "dog"]}], [(name, good_image())])
    r = post_upload(api, target, dataset, parts)
    assert r.status_code == 201, r.text[:2000]
    assert r.json()["added"] == 1


TARGETS = ["create", "add"]


# --- images: the same checks on the three upload routes ---------------------------------------------------


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize(("name", "data", "needle"), IMAGE_CASES)
def test_bad_image_upload_is_refused_and_nothing_stored(
    alice: Api, dataset: dict, target: str, name: str, data: bytes, needle: str
) -> None:
    before = stored(alice)
    rows = [{"file": "good.png", "candidates": ["cat", "lynx"]}, {"file": name, "candidates": ["dog"]}]
    r = post_upload(alice, target, dataset, upload_parts(rows, [("good.png", good_image()), (name, data)]))
    body = assert_problem(r, 422, "images", name, needle)
    assert all(e.get("item") != "good.png" for e in body["errors"])
    assert "nothing was stored" in body["detail"]
    assert stored(alice) == before
    assert_still_serving(alice, target, dataset)


@pytest.mark.parametrize(("name", "data", "needle"), IMAGE_CASES)
def test_bad_image_to_predict_is_refused(alice: Api, model_id: str, name: str, data: bytes, needle: str) -> None:
    before = stored(alice)
    parts: list[Part] = [("model_id", model_id.encode(), None), ("image", RED, "red.png"), ("image", data, name)]
    assert_problem(post_parts(alice, "/predict", parts), 422, "image", name, needle)
    assert stored(alice) == before
    r = post_parts(alice, "/predict", [("model_id", model_id.encode(), None), ("image", RED, "red.png")])
    assert r.status_code == 200 and r.json()["predictions"][0]["label"] == "cat", r.text


# --- zips -------------------------------------------------------------------------------------------------


def zip_of(members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name, (2024, 1, 1, 0, 0, 0)), data, compress_type=compression)
    return buf.getvalue()


def lying_zip(real_size: int, claimed_size: int) -> bytes:
    """A zip whose headers say its member is ``claimed_size`` bytes while it inflates to ``real_size``."""
    data = bytearray(zip_of({"manifest.jsonl": b"", "liar.png": b"\0" * real_size}))
    local = data.index(b"PK\x03\x04", 1)  # the second member's local header
    struct.pack_into("<I", data, local + 22, claimed_size)
    central = data.rindex(b"PK\x01\x02")  # the last central directory entry is liar.png's
    struct.pack_into("<I", data, central + 24, claimed_size)
    return bytes(data)


@dataclass
class ZipCase:
    members: Callable[[], dict[str, bytes]] | Callable[[], bytes]
    item: str | None
    needle: str
    settings: dict = field(default_factory=dict)


ZIP_CASES = {
    "dotdot-path": ZipCase(lambda: {"../evil.png": image_bytes(1)}, "../evil.png", "unsafe path"),
    "nested-dotdot-path": ZipCase(lambda: {"a/../../evil.png": image_bytes(2)}, "a/../../evil.png", "unsafe path"),
    "backslash-dotdot-path": ZipCase(lambda: {"..\\evil.png": image_bytes(3)}, "..\\evil.png", "unsafe path"),
    "absolute-path": ZipCase(lambda: {"/etc/evil.png": image_bytes(4)}, "/etc/evil.png", "unsafe path"),
    "drive-path": ZipCase(lambda: {"C:/evil.png": image_bytes(5)}, "C:/evil.png", "unsafe path"),
    "bomb-compressible-member": ZipCase(lambda: {"bomb.png": b"\0" * 30_000_000}, "bomb.png", "(zip bomb?)"),
    "bomb-huge-member": ZipCase(
        lambda: {"huge.png": b"\0" * 40_000_000}, "huge.png", "40000000 bytes, over the limit of 33554432"
    ),
    "bomb-lying-header": ZipCase(lambda: lying_zip(20_000_000, 100), "liar.png", "cannot be read"),
    "bomb-many-members": ZipCase(
        lambda: {f"m{i}.png": b"" for i in range(41)},
        None,
        "43 members, over the limit of 40",
        {"max_archive_members": 40},
    ),
    "bomb-total-size": ZipCase(
        lambda: {f"m{i}.png": noise("PNG", (32, 32), i) for i in range(4)},
        None,
        "over 12000 bytes uncompressed in total",
        {"max_archive_bytes": 12000},
    ),
}


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("case", list(ZIP_CASES), ids=list(ZIP_CASES))
def test_hostile_zip_is_refused_and_nothing_stored(
    alice: Api, dataset: dict, tagsift_env, target: str, case: str
) -> None:
    spec = ZIP_CASES[case]
    if spec.settings:
        tagsift_env(**spec.settings)
    made = spec.members()
    manifest = jsonl([{"file": "good.png", "candidates": ["cat"]}])
    if isinstance(made, bytes):  # a zip built by hand: prepend nothing, its manifest is empty; send one alongside
        archive, parts = made, [("manifest", manifest, "manifest.jsonl")]
    else:
        archive, parts = zip_of({"manifest.jsonl": manifest, "photos/good.png": good_image(), **made}), []
    before = stored(alice)
    r = post_upload(alice, target, dataset, [*parts, ("archive", archive, "photos.zip")])
    assert_problem(r, 422, "archive", spec.item, spec.needle)
    assert stored(alice) == before
    assert_still_serving(alice, target, dataset)


def test_zip_with_more_members_than_the_default_limit(alice: Api, dataset: dict) -> None:
    """100,001 empty members (a 10 MB zip) with the default settings: refused from the central directory alone."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        info = zipfile.ZipInfo("m", (2024, 1, 1, 0, 0, 0))
        for i in range(alice.settings.max_archive_members + 1):
            info.filename = f"{i:x}"
            zf.writestr(info, b"")
    before = stored(alice)
    r = post_upload(alice, "add", dataset, [("archive", buf.getvalue(), "many.zip")])
    assert_problem(r, 422, "archive", None, "100001 members, over the limit of 100000")
    assert stored(alice) == before


# --- manifests and text fields ----------------------------------------------------------------------------


@dataclass
class TextCase:
    parts: Callable[[bytes], list[Part]]  # given the good image
    field: str | None
    item: str | None
    needle: str
    settings: dict = field(default_factory=dict)
    status: int = 422
    max_answer: int = 20_000  # bytes: a 10 MB value is never echoed back


def _one(rows: list[dict] | bytes, names: list[str | bytes] | None = None, **fields: bytes) -> Callable:
    def build(good: bytes) -> list[Part]:
        files = names if names is not None else ["good.png"]
        images = [(n, good if i == 0 else image_bytes(900 + i)) for i, n in enumerate(files)]
        return upload_parts(rows, images, **fields)

    return build


CLASSES = json.dumps(TAGS).encode()
TEXT_CASES = {
    "manifest-names-a-file-not-uploaded": TextCase(
        _one([{"file": "good.png", "candidates": ["cat"]}, {"file": "missing.png", "candidates": ["dog"]}]),
        "manifest",
        "missing.png",
        "named in the manifest (line 2) but not uploaded",
    ),
    "empty-candidate-set": TextCase(
        _one([{"file": "good.png", "candidates": []}]), "candidates", "good.png", "the candidate set is empty"
    ),
    "candidate-not-in-classes": TextCase(
        _one([{"file": "good.png", "candidates": ["cat", "wolf"]}], classes=CLASSES),
        "candidates",
        "good.png",
        "candidate 'wolf' is not one of the dataset's classes",
    ),
    "label-not-among-candidates": TextCase(
        _one([{"file": "good.png", "candidates": ["cat", "lynx"], "label": "dog"}]),
        "label",
        "good.png",
        "label 'dog' is not among its candidates",
    ),
    "ten-mb-candidate": TextCase(
        _one([{"file": "good.png", "candidates": ["cat", "t" * TEN_MB]}], classes=CLASSES),
        "candidates",
        "good.png",
        f"is {TEN_MB} characters, over the limit of 200",
    ),
    "ten-mb-class": TextCase(
        _one([{"file": "good.png", "candidates": ["cat"]}], classes=json.dumps(["cat", "c" * TEN_MB]).encode()),
        "classes",
        "1",
        f"is {TEN_MB} characters, over the limit of 200",
    ),
    "ten-mb-file-name": TextCase(
        _one([{"file": "f" * TEN_MB, "candidates": ["cat"]}]),
        "file",
        None,
        f"the file name is {TEN_MB} characters, over the limit of 500",
    ),
    "long-file-name-header": TextCase(
        _one([{"file": "good.png", "candidates": ["cat"]}], names=["f" * 10_000]),
        None,
        None,
        "Maximum header size exceeded",
        status=400,
    ),
    "non-utf8-manifest": TextCase(
        _one('{"file": "good.png", "candidates": ["caf\xe9"]}\n'.encode("latin-1")),
        "manifest",
        None,
        "manifest: not UTF-8 (invalid byte at offset",
    ),
    "lone-surrogate-in-manifest": TextCase(
        _one(b'{"file": "good\\ud800.png", "candidates": ["cat"]}\n'),
        "manifest",
        None,
        "manifest line 1: invalid Unicode (an unpaired \\u surrogate)",
    ),
    "non-utf8-form-field": TextCase(
        _one([{"file": "good.png", "candidates": ["cat"]}], classes='["caf\xe9"]'.encode("latin-1")),
        "classes",
        None,
        "classes: the value is not valid UTF-8 text",
    ),
    "non-utf8-file-name": TextCase(
        _one([{"file": "good.png", "candidates": ["cat"]}], names=["caf\xe9.png".encode("latin-1")]),
        "images",
        "café.png",
        "images: its file name is not valid UTF-8 text",
    ),
    "nul-in-tag": TextCase(
        _one([{"file": "good.png", "candidates": ["c\0t"]}]),
        "candidates",
        "good.png",
        "contains the control character U+0000",
    ),
    "nul-in-manifest-file-name": TextCase(
        _one([{"file": "go\0od.png", "candidates": ["cat"]}], names=["go\0od.png"]),
        "file",
        "go\0od.png",
        "the file name contains the control character U+0000",
    ),
    "same-file-name-twice": TextCase(
        _one([{"file": "good.png", "candidates": ["cat"]}], names=["good.png", "good.png"]),
        "images",
        "good.png",
        "uploaded twice under the same name",
    ),
    "manifest-lists-a-file-twice": TextCase(
        _one([{"file": "good.png", "candidates": ["cat"]}, {"file": "good.png", "candidates": ["dog"]}]),
        "manifest",
        "good.png",
        "listed twice in the manifest (lines 1 and 2)",
    ),
    "manifest-over-its-limit": TextCase(
        _one(
            [{"file": "good.png", "candidates": ["cat"]}] + [{"file": f"x{i}", "candidates": ["c"]} for i in range(50)]
        ),
        "manifest",
        "manifest.jsonl",
        "over the limit of 1000",
        settings={"max_manifest_bytes": 1000},
    ),
}


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("case", list(TEXT_CASES), ids=list(TEXT_CASES))
def test_bad_manifest_or_field_is_refused_and_nothing_stored(
    alice: Api, dataset: dict, tagsift_env, target: str, case: str
) -> None:
    spec = TEXT_CASES[case]
    if spec.settings:
        tagsift_env(**spec.settings)
    before = stored(alice)
    r = post_upload(alice, target, dataset, spec.parts(good_image()))
    assert_problem(r, spec.status, spec.field, spec.item, spec.needle)
    assert len(r.content) < spec.max_answer
    assert stored(alice) == before
    assert_still_serving(alice, target, dataset)


@pytest.mark.parametrize(
    ("name", "needle"),
    [
        ("\0".join(["bad", "name"]), "name: contains the control character U+0000"),
        ("caf\xe9".encode("latin-1"), "name: the value is not valid UTF-8 text"),
        ("n" * TEN_MB, "name: required, 1 to 200 characters"),
    ],
    ids=["nul", "non-utf8", "ten-mb"],
)
def test_bad_dataset_name_creates_no_dataset(alice: Api, dataset: dict, name: str | bytes, needle: str) -> None:
    before = stored(alice)
    raw = name if isinstance(name, bytes) else name.encode()
    parts = [("name", raw, None), *upload_parts([{"file": "a.png", "candidates": ["cat"]}], [("a.png", good_image())])]
    r = post_parts(alice, "/datasets", parts)
    assert_problem(r, 422, "name", None, needle)
    assert len(r.content) < 20_000
    # The JSON create says the same about a NUL, and a 10 MB name is a plain length error.
    if isinstance(name, str):
        r = alice.post("/datasets", json={"name": name, "classes": TAGS})
        assert r.status_code == 422 and r.json()["errors"][0]["field"] == "name" and len(r.content) < 20_000
    assert stored(alice) == before
    assert_still_serving(alice, "create", dataset)


def test_non_utf8_json_bodies_are_refused(alice: Api, dataset: dict) -> None:
    item = alice.get(f"/datasets/{dataset['id']}/items").json()["data"][0]
    before = stored(alice)
    latin1 = {"Content-Type": "application/json"}
    cases = [
        ("POST", "/datasets", b'{"name": "caf\xe9", "classes": ["cat"]}'),
        ("PATCH", f"/items/{item['id']}", b'{"label": "caf\xe9"}'),
        ("POST", f"/datasets/{dataset['id']}/jobs", b'{"ctx_init": "caf\xe9"}'),
    ]
    for method, url, body in cases:
        r = alice.client.request(method, url, content=body, headers={**alice.headers, **latin1})
        assert r.status_code in (400, 422), (url, r.text)
        assert r.headers["content-type"].startswith("application/problem+json")
        problem = r.json()
        assert problem["errors"][0]["field"] == "body", (url, problem)  # the field is named, also for FastAPI's 400
        assert problem["status"] == 422 or "UTF-8" in problem["detail"], (url, problem)
    assert stored(alice) == before
    assert alice.patch(f"/items/{item['id']}", json={"label": "cat"}).status_code == 200


PREDICT_FIELD_CASES = {
    "non-utf8-candidates": ([("candidates", '["caf\xe9"]'.encode("latin-1"), None)], 422, "candidates", "UTF-8"),
    "ten-mb-candidates": (
        [("candidates", json.dumps(["x" * TEN_MB]).encode(), None)],
        422,
        "candidates",
        "over the limit of 1048576 bytes",
    ),
    "non-utf8-file-name": ([("image", RED, "caf\xe9.png".encode("latin-1"))], 422, "image", "file name is not valid"),
    "unknown-field-image-url": ([("image_url", b"http://127.0.0.1:1/x.png", None)], 422, "image_url", "unknown"),
}


@pytest.mark.parametrize("case", list(PREDICT_FIELD_CASES), ids=list(PREDICT_FIELD_CASES))
def test_bad_predict_field_is_refused(alice: Api, model_id: str, case: str) -> None:
    extra, status, field_name, needle = PREDICT_FIELD_CASES[case]
    before = stored(alice)
    parts: list[Part] = [("model_id", model_id.encode(), None), ("image", RED, "red.png"), *extra]
    r = post_parts(alice, "/predict", parts)
    assert_problem(r, status, field_name, None, needle)
    assert len(r.content) < 20_000
    assert stored(alice) == before
    assert post_parts(alice, "/predict", parts[:2]).status_code == 200


@pytest.mark.parametrize("model", ["m\0", "x" * 100_000, SQL], ids=["nul", "100k-chars", "sql"])
def test_impossible_model_id_to_predict_is_404(alice: Api, model_id: str, model: str) -> None:
    r = post_parts(alice, "/predict", [("model_id", model.encode(), None), ("image", RED, "red.png")])
    assert r.status_code == 404 and r.headers["content-type"].startswith("application/problem+json"), r.text[:500]
    assert len(r.content) < 20_000
    assert post_parts(alice, "/predict", [("model_id", model_id.encode(), None), ("image", RED, "r.png")]).is_success


# --- duplicates, SQL-looking strings, oversized bodies ----------------------------------------------------


def test_duplicate_images_are_reported_and_stored_once(alice: Api, dataset: dict) -> None:
    """Duplicates are not an error (issue 5: reported, not stored twice): one blob and one row per image."""
    existing = alice.get(f"/datasets/{dataset['id']}/items").json()["data"][0]
    stored_bytes = alice.get(existing["image_url"]).content
    new = good_image()
    rows = [{"file": n, "candidates": ["cat"]} for n in ("again.png", "new.png", "new-copy.png")]
    parts = upload_parts(rows, [("again.png", stored_bytes), ("new.png", new), ("new-copy.png", new)])
    before = stored(alice)
    r = post_upload(alice, "add", dataset, parts)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["added"] == 1 and {d["file"] for d in body["duplicates"]} == {"again.png", "new-copy.png"}
    after = stored(alice)
    assert after["rows"]["items"] == before["rows"]["items"] + 1
    assert len(after["files"]) == len(before["files"]) + 1
    # The same batch again adds nothing at all.
    r = post_upload(alice, "add", dataset, parts)
    assert r.status_code == 201 and r.json()["added"] == 0 and len(r.json()["duplicates"]) == 3
    assert stored(alice) == after


def test_sql_looking_strings_are_stored_verbatim(alice: Api, dataset: dict) -> None:
    before_items = alice.get(f"/datasets/{dataset['id']}").json()["item_count"]
    rows = [{"file": SQL, "candidates": [SQL, "cat"], "label": SQL}]
    parts = [
        ("name", SQL.encode(), None),
        ("classes", json.dumps([SQL, "cat"]).encode(), None),
        *upload_parts(rows, [(SQL, good_image())]),
    ]
    r = post_parts(alice, "/datasets", parts)
    assert r.status_code == 201, r.text
    ds = r.json()
    assert ds["name"] == SQL and ds["classes"] == [SQL, "cat"]
    (item,) = alice.get(f"/datasets/{ds['id']}/items").json()["data"]
    assert item["file"] == SQL and item["candidates"] == [SQL, "cat"] and item["given_label"] == SQL
    r = alice.patch(f"/items/{item['id']}", json={"label": SQL})
    assert r.status_code == 200 and r.json()["label"] == SQL
    assert SQL in alice.get(f"/datasets/{ds['id']}/labels", params={"format": "csv"}).text
    r = alice.post("/datasets", json={"name": SQL, "classes": [SQL]})
    assert r.status_code == 201 and r.json()["name"] == SQL
    # In ids and query parameters: not found / invalid, never a 500.
    assert alice.get(f"/datasets/{SQL}").status_code == 404
    assert alice.get("/datasets/' OR '1'='1").status_code == 404
    assert alice.get(f"/items/{SQL}").status_code == 404
    assert alice.get(f"/datasets/{dataset['id']}/items", params={"cursor": SQL}).status_code == 422
    # Every table is still there and the other dataset still has its items.
    tables = set(inspect(get_engine()).get_table_names())
    assert {"owners", "api_keys", "datasets", "items", "jobs", "job_events", "models"} <= tables
    assert alice.get(f"/datasets/{dataset['id']}").json()["item_count"] == before_items
    assert any(d["name"] == SQL for d in alice.get("/datasets").json()["data"])


OVERSIZE_TARGETS = ["create", "add", "predict"]


@pytest.mark.parametrize("streamed", [False, True], ids=["content-length", "streamed"])
@pytest.mark.parametrize("target", OVERSIZE_TARGETS)
def test_oversized_body_is_413_and_nothing_stored(
    alice: Api, dataset: dict, tagsift_env, request: pytest.FixtureRequest, target: str, streamed: bool
) -> None:
    model_id = request.getfixturevalue("model_id") if target == "predict" else ""
    tagsift_env(max_request_bytes=30_000)
    big = noise("PNG", (100, 100), seed=7)  # ~30 KB: with the rest of the form, over the limit
    assert len(big) > 29_000
    before = stored(alice)
    if target == "predict":
        parts: list[Part] = [("model_id", model_id.encode(), None), ("image", big, "big.png")]
        r = post_parts(alice, "/predict", parts, streamed=streamed)
    else:
        parts = upload_parts([{"file": "big.png", "candidates": ["cat"]}], [("big.png", big)])
        r = post_upload(alice, target, dataset, parts, streamed=streamed)
    assert r.status_code == 413, r.text[:500]
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["code"] == "payload_too_large" and "over the limit of 30000" in r.json()["detail"]
    assert stored(alice) == before
    # A body under the same limit is served.
    if target == "predict":
        r = post_parts(alice, "/predict", [("model_id", model_id.encode(), None), ("image", RED, "red.png")])
        assert r.status_code == 200, r.text
    else:
        assert_still_serving(alice, target, dataset)

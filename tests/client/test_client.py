"""The client against the real service (``conftest.service``: uvicorn + a worker, embedded and PostgreSQL + Redis).

One dataset is uploaded (interrupted twice, then resumed) and trained on; the later tests read it: the job waited on
to the end, labels as a DataFrame equal to the API's JSON and as files equal to the API's bytes, the review queue,
decisions in bulk, predict, export, webhooks, the command line, and each kind of error as a TagsiftError.
"""

from __future__ import annotations

import csv
import http.server
import io
import json
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest
from tagsift_client import TagsiftError
from tagsift_client.client import FINISHED

from tests.client.conftest import MAX_REQUEST_BYTES, Service, free_port, write_images

pytestmark = pytest.mark.integration

N = 30
CHUNK = 8
JOB = {"method": "coop", "loss": "rc", "epochs": 3, "batch_size": 8, "lr": 0.01, "n_ctx": 4, "seed": 1}
COLOURS = ["blue", "green", "red"]


class Interrupted(Exception):
    """Stands for a client stopped mid-upload (Ctrl-C, a killed notebook kernel)."""


class DropOneAnswer(httpx.HTTPTransport):
    """Sends every request to the server, but loses the answer of the ``nth`` upload request: the server stored the
    chunk, the client sees a broken connection (what a proxy timeout or a network cut looks like)."""

    def __init__(self, nth: int) -> None:
        super().__init__()
        self.nth, self.uploads = nth, 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if request.method == "POST" and "/datasets" in request.url.path:
            self.uploads += 1
            if self.uploads == self.nth:
                response.read()
                raise httpx.ReadError("connection lost", request=request)
        return response


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> tuple[Path, Path, dict[str, str]]:
    folder = tmp_path_factory.mktemp("photos")
    truth = dict(write_images(folder, N))
    manifest = folder / "manifest.csv"
    with manifest.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", "candidates", "label"])
        for i, (name, colour) in enumerate(truth.items()):
            other = COLOURS[(COLOURS.index(colour) + 1 + i % 2) % 3]
            writer.writerow([name, "|".join(sorted({colour, other})), colour if i == 0 else ""])
    return folder, manifest, truth


@pytest.fixture(scope="module")
def uploaded(service: Service, photos) -> dict:
    """The dataset, uploaded the hard way: stopped after two chunks, then a chunk's answer lost, then resumed."""
    folder, manifest, truth = photos
    name = f"photos-{service.kind}"
    calls = []

    def stop_after_two(answer: dict) -> None:
        calls.append(answer)
        if len(calls) == 2:
            raise Interrupted

    with service.client() as client, pytest.raises(Interrupted):
        client.upload(folder, manifest, name=name, chunk_images=CHUNK, progress=False, on_chunk=stop_after_two)
    first_id = calls[0]["id"]
    with service.raw() as raw:
        assert raw.get(f"/datasets/{first_id}").json()["item_count"] == 2 * CHUNK  # mid-way: 2 of 4 chunks stored

    # resumed, and this time the answer of the third chunk is lost after the server stored it (retried, same key)
    lossy = service.client()
    lossy.http._transport = DropOneAnswer(nth=2)
    result = lossy.upload(folder, manifest, name=name, chunk_images=CHUNK, progress=False)
    lossy.close()
    return {"id": result.dataset_id, "result": result, "first_id": first_id, "truth": truth, "name": name}


def test_an_interrupted_upload_resumes_without_duplicates(service: Service, uploaded: dict, photos) -> None:
    folder, manifest, truth = photos
    result = uploaded["result"]
    assert result.dataset_id == uploaded["first_id"] and result.resumed
    with service.raw() as raw:
        datasets = [d for d in raw.get("/datasets", params={"limit": 1000}).json()["data"]]
        assert [d["id"] for d in datasets if d["name"] == uploaded["name"]] == [result.dataset_id]  # one dataset
        items = raw.get(f"/datasets/{result.dataset_id}/items", params={"limit": 1000}).json()
    files = [it["file"] for it in items["data"]]
    assert items["total"] == N and sorted(files) == sorted(truth)  # every image once: no duplicate item
    assert result.already_stored == 2 * CHUNK  # the first chunk (its stored answer) and the second (skipped) ...
    assert result.added == N - 2 * CHUNK  # ... and the rest, the chunk whose answer was lost counted once
    given = {it["file"]: it["given_label"] for it in items["data"]}
    assert given["img0000.png"] == truth["img0000.png"] and given["img0001.png"] is None  # the CSV's labels
    assert all(set(it["candidates"]) <= set(COLOURS) and truth[it["file"]] in it["candidates"] for it in items["data"])

    # the same call once more: nothing new, nothing twice
    with service.client() as client:
        again = client.upload(folder, manifest, name=uploaded["name"], chunk_images=CHUNK, progress=False)
        assert again.dataset_id == result.dataset_id and again.added == 0 and again.already_stored == N
        assert client.dataset(result.dataset_id)["item_count"] == N
        # unless asked for a new dataset
        other = client.upload(folder, manifest, name=uploaded["name"], chunk_images=CHUNK, progress=False, resume=False)
        assert other.dataset_id != result.dataset_id and other.added == N
        client.delete_dataset(other.dataset_id)


def test_upload_idempotency_keys_on_the_server(service: Service, photos) -> None:
    """Raw HTTP: the same key and upload twice is the same dataset (a new multipart boundary each time); the key
    with another upload is a 422; the same for POST /datasets/{id}/items."""
    folder, _, _ = photos
    manifest = b'{"file": "img0001.png", "candidates": ["green", "red"]}\n'

    def files(name: str = "img0001.png"):
        return [
            ("manifest", ("m.jsonl", manifest, "application/x-ndjson")),
            ("images", (name, (folder / name).read_bytes())),
        ]

    with service.raw() as raw:
        key = {"Idempotency-Key": f"key-{service.kind}-1"}
        one = raw.post("/datasets", data={"name": "keyed"}, files=files(), headers=key)
        two = raw.post("/datasets", data={"name": "keyed"}, files=files(), headers=key)
        assert one.status_code == two.status_code == 201 and two.headers.get("Idempotent-Replayed") == "true"
        assert one.json() == two.json()
        other = raw.post("/datasets", data={"name": "keyed 2"}, files=files(), headers=key)
        assert other.status_code == 422 and other.json()["code"] == "idempotency_key_reused"
        assert other.json()["errors"][0]["field"] == "Idempotency-Key"
        ds = one.json()["id"]
        assert raw.get(f"/datasets/{ds}").json()["item_count"] == 1

        more = b'{"file": "img0002.png", "candidates": ["green", "red"]}\n'
        body = [("manifest", ("m.jsonl", more)), ("images", ("img0002.png", (folder / "img0002.png").read_bytes()))]
        key2 = {"Idempotency-Key": f"key-{service.kind}-2"}
        a = raw.post(f"/datasets/{ds}/items", files=body, headers=key2)
        b = raw.post(f"/datasets/{ds}/items", files=body, headers=key2)
        assert a.status_code == b.status_code == 201 and a.json() == b.json() and a.json()["added"] == 1
        assert raw.post(f"/datasets/{ds}/items", files=files(), headers=key2).status_code == 422
        assert raw.get(f"/datasets/{ds}").json()["item_count"] == 2
        # deleted with its dataset: the key is free again
        assert raw.delete(f"/datasets/{ds}").status_code == 204
        three = raw.post("/datasets", data={"name": "keyed"}, files=files(), headers=key)
        assert three.status_code == 201 and three.json()["id"] != ds and "Idempotent-Replayed" not in three.headers


def test_an_upload_over_the_body_limit_is_split(service: Service, tmp_path: Path) -> None:
    """Images that together pass the server's body limit (1 MB here): the client splits the chunk on the 413."""
    big = dict(write_images(tmp_path, 10, start=500, size=220))
    total = sum(p.stat().st_size for p in tmp_path.iterdir())
    assert total > MAX_REQUEST_BYTES
    (tmp_path / "m.jsonl").write_text(
        "".join(json.dumps({"file": f, "candidates": [c]}) + "\n" for f, c in big.items())
    )
    with service.client() as client:
        result = client.upload(tmp_path, tmp_path / "m.jsonl", name="big", classes=COLOURS, progress=False)
        assert result.added == 10 and result.requests >= 2
        assert client.dataset(result.dataset_id)["item_count"] == 10
        client.delete_dataset(result.dataset_id)


@pytest.fixture(scope="module")
def trained(service: Service, uploaded: dict) -> dict:
    events: list[dict] = []
    with service.client() as client:
        job = client.train(uploaded["id"], wait=True, progress=True, on_event=events.append, timeout=300, **JOB)
    return {"job": job, "events": events}


def test_a_job_is_waited_on_to_the_end_with_its_events(service: Service, trained: dict) -> None:
    job, events = trained["job"], trained["events"]
    assert job["status"] == "succeeded", job
    assert job["progress"]["fraction"] == 1.0 and job["model_id"]
    with service.raw() as raw:
        api_events = raw.get(f"/jobs/{job['id']}/events", params={"limit": 1000}).json()["data"]
    assert [e["id"] for e in events] == [e["id"] for e in api_events]  # every event, once, in order
    assert any(e["kind"] == "stage" and e["data"].get("stage") == "succeeded" for e in events)


def test_labels_as_a_dataframe_equal_the_api_json(service: Service, uploaded: dict, trained: dict) -> None:
    pytest.importorskip("pandas")
    with service.raw() as raw:
        api = raw.get(f"/datasets/{uploaded['id']}/labels").json()
    with service.client() as client:
        df = client.labels_df(uploaded["id"])
    assert len(df) == N and list(df.columns) == list(api["items"][0])
    records = df.astype(object).where(df.notna(), None).to_dict("records")
    assert records == api["items"]
    assert set(df["label"]) <= set(COLOURS) and (df["label_source"] == "model").sum() >= N - 1


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "json", "label-studio"])
def test_labels_saved_to_files_are_the_api_export(service: Service, uploaded: dict, trained: dict, tmp_path, fmt):
    with service.raw() as raw:
        expected = raw.get(f"/datasets/{uploaded['id']}/labels", params={"format": fmt}).content
    with service.client() as client:
        path = client.save_labels(uploaded["id"], tmp_path / f"labels.{fmt}", format=fmt)
    assert path.read_bytes() == expected


def test_review_queue_and_decisions_in_bulk(service: Service, uploaded: dict, trained: dict) -> None:
    with service.raw() as raw:
        api_queue = raw.get(
            f"/datasets/{uploaded['id']}/items", params={"needs_review": "true", "order": "margin", "limit": 1000}
        ).json()["data"]
    with service.client() as client:
        queue = client.review_queue(uploaded["id"])
        assert [it["id"] for it in queue] == [it["id"] for it in api_queue]
        items = list(client.items(uploaded["id"]))[:3]
        truth = uploaded["truth"]
        decided = client.decide_many({it["id"]: truth[it["file"]] for it in items})
        assert [d["label"] for d in decided] == [truth[it["file"]] for it in items]
        assert all(client.item(it["id"])["label_source"] == "reviewer" for it in items)
        with pytest.raises(TagsiftError) as err:  # a tag that is no class: refused, the earlier ones kept
            client.decide_many([(items[0]["id"], truth[items[0]["file"]]), (items[1]["id"], "purple")])
        assert err.value.status == 422 and err.value.problem["decided"] == [items[0]["id"]]


def test_predict_a_folder_and_load_the_export(service: Service, trained: dict, photos, tmp_path: Path) -> None:
    folder, _, truth = photos
    model_id = trained["job"]["model_id"]
    with service.client() as client:
        predictions = client.predict(folder, model_id, top_k=2, batch=7)
        assert [p["file"] for p in predictions] == sorted(truth)  # every image, in order, over 5 requests
        assert all(p["label"] in COLOURS and len(p["top_k"]) == 2 for p in predictions)
        path = client.export(model_id, tmp_path / "model.zip")
        assert client.model(model_id)["id"] == model_id
    from tagsift_client import load_export

    export = load_export(path)
    assert export.classes == COLOURS and export.model["id"] == model_id
    assert {"classes.json", "preprocess.json", "predict.py"} <= set(export.files)


def test_webhooks(service: Service) -> None:
    with service.client() as client:
        hook = client.create_webhook("http://127.0.0.1:9/hook", events=["job.succeeded"], description="ci")
        assert hook["secret"] and hook["events"] == ["job.succeeded"]
        assert hook["id"] in [h["id"] for h in client.webhooks()]
        assert client.webhook(hook["id"])["description"] == "ci" and client.deliveries(hook["id"]) == []
        client.delete_webhook(hook["id"])
        with pytest.raises(TagsiftError) as err:
            client.webhook(hook["id"])
        assert err.value.status == 404


def test_every_error_class_is_one_exception_with_the_problem(service: Service, uploaded: dict, trained: dict, photos):
    folder, _, _ = photos
    with service.client() as client:
        cases = {
            "missing": (404, "not_found", lambda: client.dataset("no-such-dataset")),
            "finished job": (409, "job_finished", lambda: client.cancel(trained["job"]["id"])),
            "body limit": (413, "payload_too_large", lambda: client.predict([_big_file(folder)], "m")),
            "form": (
                415,
                "unsupported_media_type",
                lambda: client.request("POST", f"/datasets/{uploaded['id']}/items", json={}),
            ),
            "bad job": (422, "invalid_input", lambda: client.train(uploaded["id"], epochs=0)),
        }
        for what, (status, code, call) in cases.items():
            with pytest.raises(TagsiftError) as err:
                call()
            assert (err.value.status, err.value.code) == (status, code), what
            assert err.value.problem["status"] == status and err.value.detail == err.value.problem["detail"]
        # a refused upload: the field and the item (file) the server named
        extra = folder.parent / f"{folder.name}-extra"
        write_images(extra, 1, start=700)
        (extra / "bad.jsonl").write_text(json.dumps({"file": "img0700.png", "candidates": ["red", "purple"]}) + "\n")
        with pytest.raises(TagsiftError) as err:
            client.upload(extra, extra / "bad.jsonl", dataset_id=uploaded["id"], progress=False)
        assert err.value.status == 422 and err.value.item == "img0700.png" and err.value.field, err.value.problem
    with service.client() as client:
        client.http.headers["Authorization"] = "Bearer not-a-key"
        with pytest.raises(TagsiftError) as err:
            client.datasets()
        assert (err.value.status, err.value.code) == (401, "unauthorized")
    with _proxy_error_server() as url, pytest.raises(TagsiftError) as err:
        from tagsift_client import Client

        Client(url, "k").datasets()  # retried (a 502 may pass), then raised with the proxy's text
    assert (err.value.status, err.value.code) == (502, "bad_gateway") and "upstream" in err.value.detail
    with pytest.raises(TagsiftError) as err:
        from tagsift_client import Client

        Client(f"http://127.0.0.1:{free_port()}", "k").request("GET", "/datasets")
    assert err.value.status is None and err.value.code == "connection_error" and err.value.retryable


def _big_file(folder: Path) -> Path:
    path = folder.parent / f"{folder.name}-big.png"
    path.write_bytes(b"\x89PNG" + b"0" * (MAX_REQUEST_BYTES + 10))
    return path


class _ProxyError(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"<html>502 upstream unavailable</html>"
        self.send_response(502)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


class _proxy_error_server:
    """A real HTTP server answering 502 with an HTML page, as a proxy in front of a down API does."""

    def __enter__(self) -> str:
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ProxyError)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def _cli(service: Service, *args: str, config: Path | None = None) -> subprocess.CompletedProcess:
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("TAGSIFT_URL", "TAGSIFT_API_KEY")}
    if config is None:
        env |= {"TAGSIFT_URL": service.url, "TAGSIFT_API_KEY": service.key}
    else:
        env["TAGSIFT_CONFIG"] = str(config)
    return subprocess.run(
        [sys.executable, "-m", "tagsift_client", "-q", *args], env=env, capture_output=True, text=True, timeout=300
    )


def test_the_command_line(service: Service, uploaded: dict, trained: dict, photos, tmp_path: Path) -> None:
    folder, manifest, truth = photos
    res = _cli(service, "upload", str(folder), "--manifest", str(manifest), "--name", "cli", "--chunk-images", "12")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["added"] == N and out["requests"] == 3
    # the key from a config file instead of the environment
    config = tmp_path / "client.ini"
    config.write_text(f"[default]\nurl = {service.url}\napi_key = {service.key}\n")
    res = _cli(service, "labels", out["dataset_id"], "--format", "csv", config=config)
    assert res.returncode == 0, res.stderr
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert sorted(r["file"] for r in rows) == sorted(truth)
    res = _cli(service, "review", uploaded["id"], "--limit", "2")
    assert res.returncode == 0 and len(json.loads(res.stdout)) <= 2
    assert json.loads(_cli(service, "jobs", trained["job"]["id"]).stdout)["status"] == "succeeded"
    res = _cli(service, "train", out["dataset_id"], "--wait", *[f"-p{k}={json.dumps(v)}" for k, v in JOB.items()])
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["status"] in FINISHED
    item = json.loads(_cli(service, "review", out["dataset_id"]).stdout or "[]") or list(
        service.client().items(out["dataset_id"], limit=1)
    )
    res = _cli(service, "decide", f"{item[0]['id']}={truth[item[0]['file']]}")
    assert res.returncode == 0 and json.loads(res.stdout)[0]["label_source"] == "reviewer", res.stderr
    model_id = trained["job"]["model_id"]
    res = _cli(service, "predict", str(folder), "--model", model_id, "--top-k", "1")
    assert res.returncode == 0 and len(json.loads(res.stdout)) == N, res.stderr
    res = _cli(service, "export", model_id, "-o", str(tmp_path / "m.zip"), "--unpack")
    assert res.returncode == 0 and "classes.json" in json.loads(res.stdout)["files"], res.stderr
    res = _cli(service, "webhooks", "create", "http://127.0.0.1:9/cli", "--event", "job.failed")
    assert res.returncode == 0, res.stderr
    hook = json.loads(res.stdout)["id"]
    assert hook in [h["id"] for h in json.loads(_cli(service, "webhooks", "list").stdout)]
    assert _cli(service, "webhooks", "delete", hook).returncode == 0
    res = _cli(service, "datasets", "no-such-dataset")
    assert res.returncode == 1 and json.loads(res.stderr.splitlines()[-1])["code"] == "not_found"


def test_a_label_studio_export_in_chunks(service: Service, tmp_path: Path) -> None:
    """A Label Studio JSON export (upload prefixes in the image paths, several annotators, a ground truth, a task
    every annotation of which was cancelled, a task nobody annotated) uploaded in chunks of 4, then resumed."""
    pairs = write_images(tmp_path, 10, start=300)
    tasks = []
    for i, (name, colour) in enumerate(pairs):
        other = COLOURS[(COLOURS.index(colour) + 1) % 3]
        choice = lambda tag, **kw: {  # noqa: E731
            "result": [{"from_name": "choice", "to_name": "image", "type": "choices", "value": {"choices": [tag]}}],
            **kw,
        }
        annotations = [choice(colour), choice(other)]  # two annotators who disagree: both are candidates
        if i == 0:
            annotations = [choice(colour, ground_truth=True)]
        if i == 1:
            annotations = [choice(colour, was_cancelled=True)]
        if i == 2:
            annotations = []
        tasks.append({"id": 100 + i, "data": {"image": f"/data/upload/1/{i:08x}-{name}"}, "annotations": annotations})
    (tmp_path / "export.json").write_text(json.dumps(tasks))
    with service.client() as client:
        first = client.upload_label_studio(
            tmp_path, tmp_path / "export.json", name="ls", chunk_images=4, progress=False
        )
        assert first.added == 9 and first.requests == 3 and first.skipped == ["task 101"]
        items = {it["file"]: it for it in client.items(first.dataset_id)}
        assert client.dataset(first.dataset_id)["classes"] == COLOURS
        again = client.upload_label_studio(
            tmp_path, tmp_path / "export.json", name="ls", chunk_images=4, progress=False
        )
        assert again.dataset_id == first.dataset_id and again.added == 0
        assert client.dataset(first.dataset_id)["item_count"] == 9
    name0, colour0 = pairs[0]
    assert items[name0]["given_label"] == colour0 and items[name0]["candidates"] == [colour0]
    assert pairs[1][0] not in items and sorted(items[pairs[2][0]]["candidates"]) == COLOURS
    assert all(pairs[i][1] in items[pairs[i][0]]["candidates"] for i in range(3, 10))

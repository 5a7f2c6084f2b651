"""The synchronous client: one method per thing a user does (docs/client.md lists them all)."""

from __future__ import annotations

import configparser
import json
import os
import sys
import time
import uuid
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tagsift_client.errors import TagsiftError
from tagsift_client.uploads import IMAGE_SUFFIXES, Entry, Plan, chunk_entries, chunk_key, plan_upload

DEFAULT_URL = "http://127.0.0.1:8000"
#: Where the URL and key are read from when neither the arguments nor the environment give them.
CONFIG_PATH = Path("~/.config/tagsift/client.ini")
FINISHED = ("succeeded", "failed", "cancelled")
PREDICT_BATCH = 64  # the server's default TAGSIFT_MAX_PREDICT_IMAGES
LABEL_FORMATS = {"json": "json", "jsonl": "jsonl", "csv": "csv", "label-studio": "label-studio"}


@dataclass
class UploadResult:
    """What :meth:`Client.upload` did: the dataset, and how many images it stored, found stored, or were
    reported as duplicates (same bytes as a stored image) by the server."""

    dataset_id: str
    added: int = 0
    already_stored: int = 0
    duplicates: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    requests: int = 0
    resumed: bool = False


def read_config(profile: str = "default", path: str | os.PathLike[str] | None = None) -> dict[str, str]:
    """``url`` and ``api_key`` of a profile of the INI config file (``TAGSIFT_CONFIG`` or
    ``~/.config/tagsift/client.ini``); empty when there is none."""
    config_path = Path(path or os.environ.get("TAGSIFT_CONFIG") or CONFIG_PATH).expanduser()
    parser = configparser.ConfigParser()
    if not config_path.is_file():
        return {}
    parser.read(config_path)
    return dict(parser[profile]) if parser.has_section(profile) else {}


class Client:
    """A tagsift API client.

    ``url`` and ``api_key`` default to ``TAGSIFT_URL`` / ``TAGSIFT_API_KEY``, then to the config file's profile,
    then (URL only) to http://127.0.0.1:8000. Every failed request raises :class:`TagsiftError`."""

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 300.0,
        profile: str = "default",
        config: str | os.PathLike[str] | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        conf = read_config(profile, config)
        self.url = (url or os.environ.get("TAGSIFT_URL") or conf.get("url") or DEFAULT_URL).rstrip("/")
        key = api_key or os.environ.get("TAGSIFT_API_KEY") or conf.get("api_key")
        headers = {"User-Agent": "tagsift-client/0.1"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout, transport=transport)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the one request path ---------------------------------------------------------------------------------

    def request(
        self, method: str, path: str, *, ok: Iterable[int] = (200,), retries: int = 0, **kwargs
    ) -> httpx.Response:
        """Send a request; any status outside ``ok`` (or no answer) raises :class:`TagsiftError`. ``retries``: how
        many times a request that may succeed when sent again (no answer, 502/503/504) is sent again."""
        for attempt in range(retries + 1):
            try:
                response = self.http.request(method, path, **kwargs)
            except httpx.TimeoutException as exc:
                error = TagsiftError(str(exc) or "timed out", code="timeout", method=method, url=self.url + path)
            except httpx.TransportError as exc:
                error = TagsiftError(
                    str(exc) or type(exc).__name__, code="connection_error", method=method, url=self.url + path
                )
            else:
                if response.status_code in ok:
                    return response
                error = TagsiftError.from_response(response)
            if attempt == retries or not (error.status is None or error.status in (502, 503, 504)):
                raise error
            time.sleep(min(30.0, 0.5 * 2**attempt))
        raise AssertionError("unreachable")  # pragma: no cover

    def _get(self, path: str, **params: Any) -> Any:
        params = {k: v for k, v in params.items() if v is not None}
        return self.request("GET", path, params=params, retries=3).json()

    def _pages(self, path: str, **params: Any) -> Iterator[dict[str, Any]]:
        """Every row of a ``{"data", "next_cursor"}`` list, page after page."""
        cursor = None
        while True:
            page = self._get(path, cursor=cursor, **params)
            yield from page["data"]
            cursor = page.get("next_cursor")
            if not cursor:
                return

    # --- datasets and uploads ---------------------------------------------------------------------------------

    def datasets(self) -> list[dict[str, Any]]:
        """Every dataset of the key's owner, oldest first."""
        return list(self._pages("/datasets", limit=1000))

    def dataset(self, dataset_id: str) -> dict[str, Any]:
        """One dataset with its counts."""
        return self._get(f"/datasets/{dataset_id}")

    def create_dataset(self, name: str, classes: list[str], *, prompt_template: str | None = None) -> dict[str, Any]:
        """An empty dataset with these classes (add images with :meth:`upload` and ``dataset_id=``)."""
        body: dict[str, Any] = {"name": name, "classes": classes}
        if prompt_template is not None:
            body["prompt_template"] = prompt_template
        return self.request("POST", "/datasets", json=body, ok=(201,)).json()

    def delete_dataset(self, dataset_id: str) -> None:
        self.request("DELETE", f"/datasets/{dataset_id}", ok=(204,))

    def items(
        self, dataset_id: str, *, needs_review: bool | None = None, order: str = "upload", limit: int | None = None
    ) -> Iterator[dict[str, Any]]:
        """The dataset's items (``order``: ``upload`` or ``margin``), all of them or the first ``limit``."""
        rows = self._pages(
            f"/datasets/{dataset_id}/items",
            limit=min(limit or 1000, 1000),
            needs_review=None if needs_review is None else str(needs_review).lower(),
            order=order,
        )
        for n, row in enumerate(rows):
            if limit is not None and n >= limit:
                return
            yield row

    def stored_files(self, dataset_id: str) -> set[str]:
        """The file names of the dataset's items."""
        return {row["file"] for row in self.items(dataset_id)}

    def upload(
        self,
        folder: str | os.PathLike[str],
        manifest: str | os.PathLike[str] | None = None,
        *,
        name: str | None = None,
        dataset_id: str | None = None,
        classes: list[str] | None = None,
        prompt_template: str | None = None,
        manifest_format: str = "auto",
        chunk_images: int = 1000,
        chunk_bytes: int = 256 * 2**20,
        retries: int = 5,
        progress: bool = True,
        on_chunk: Callable[[dict[str, Any]], None] | None = None,
        resume: bool = True,
    ) -> UploadResult:
        """Upload a folder of images with its manifest (CSV, JSONL or a Label Studio JSON export) as a new dataset
        (``name``) or into ``dataset_id``, in chunks under the server's limits; safe to call again after a failure.

        Chunks carry an Idempotency-Key made from the upload and their images, so a chunk sent twice is stored once;
        a chunk refused as too large (413) is split in two. Called again with the same arguments after an
        interruption, it finds the dataset again (the first chunk's stored answer), skips the images whose file
        name the dataset already holds, and sends the rest. ``resume=False``: a new dataset even when the same
        upload made one before (keys of its own). ``on_chunk`` gets each chunk's answer."""
        if (name is None) == (dataset_id is None):
            raise TagsiftError("give a name (a new dataset) or a dataset_id (add to it)", code="invalid_input")
        plan = plan_upload(
            folder,
            manifest,
            manifest_format=manifest_format,
            classes=classes,
            scope=(dataset_id or f"new:{name}") + ("" if resume else f":{uuid.uuid4().hex}"),
        )
        if not plan.entries:
            raise TagsiftError("manifest: it names no image to upload", code="invalid_input")
        result = UploadResult(dataset_id=dataset_id or "")
        bar = _bar(len(plan.entries), "upload", progress)
        pending = plan.entries
        try:
            if dataset_id is None:
                first = chunk_entries(pending, max_images=chunk_images, max_bytes=chunk_bytes)[0] if pending else []
                answer, first, replayed = self._create_chunk(plan, first, name or "", prompt_template, retries)
                result.dataset_id = answer["id"]
                result.resumed = replayed
                self._count(result, answer, first, bar, on_chunk, replayed)
                pending = pending[len(first) :]
            else:
                result.resumed = True
            if result.resumed and pending:
                stored = self.stored_files(result.dataset_id)
                left = [e for e in pending if e.file not in stored]
                result.already_stored += len(pending) - len(left)
                bar.update(len(pending) - len(left))
                pending = left
            for chunk in chunk_entries(pending, max_images=chunk_images, max_bytes=chunk_bytes):
                for answer, part, replayed in self._items_chunk(plan, result.dataset_id, chunk, retries):
                    self._count(result, answer, part, bar, on_chunk, replayed)
        finally:
            bar.close()
        return result

    def _count(self, result: UploadResult, answer: dict, entries: list[Entry], bar, on_chunk, replayed: bool) -> None:
        result.requests += 1
        if replayed:
            result.already_stored += len(entries)
        else:
            result.added += answer.get("added", 0)
            result.duplicates += answer.get("duplicates", [])
        result.skipped += answer.get("skipped", [])
        bar.update(len(entries))
        if on_chunk is not None:
            on_chunk(answer)

    def _multipart(self, plan: Plan, entries: list[Entry], fields: dict[str, str], *, first: bool) -> dict:
        manifest = plan.manifest(entries, with_extra=first)
        files: list[tuple[str, tuple[str, Any, str]]] = [("manifest", manifest)]
        files += [("images", (e.file, e.path.read_bytes(), _media_type(e.path))) for e in entries]
        data = dict(fields)
        classes = plan.classes if first else plan.given_classes
        if classes:  # a new dataset gets every class at once; later chunks only the classes the caller gave
            data["classes"] = json.dumps(classes, ensure_ascii=False)
        if plan.kind == "label-studio":
            data["manifest_format"] = "label-studio"
        return {"data": data, "files": files}

    def _send(self, path: str, key: str, build: Callable[[], dict], retries: int) -> tuple[dict, bool]:
        """POST one chunk with its key, again after an error that may pass (the key makes that safe)."""
        for attempt in range(retries + 1):
            try:
                res = self.request("POST", path, ok=(201,), headers={"Idempotency-Key": key}, **build())
                # a replay on a retry is the answer to this call's own first attempt (stored, answer lost)
                return res.json(), attempt == 0 and res.headers.get("Idempotent-Replayed") == "true"
            except TagsiftError as exc:
                if attempt == retries or not exc.retryable:
                    raise
                time.sleep(min(30.0, 0.5 * 2**attempt))
        raise AssertionError("unreachable")  # pragma: no cover

    def _create_chunk(
        self, plan: Plan, entries: list[Entry], name: str, prompt_template: str | None, retries: int
    ) -> tuple[dict, list[Entry], bool]:
        fields = {"name": name}
        if prompt_template is not None:
            fields["prompt_template"] = prompt_template
        while True:
            key = chunk_key(plan.upload_id, "create", entries)
            try:
                answer, replayed = self._send(
                    "/datasets", key, lambda e=entries: self._multipart(plan, e, fields, first=True), retries
                )
                return answer, entries, replayed
            except TagsiftError as exc:
                if exc.status != 413 or len(entries) < 2:
                    raise
                entries = entries[: len(entries) // 2]

    def _items_chunk(
        self, plan: Plan, dataset_id: str, entries: list[Entry], retries: int
    ) -> Iterator[tuple[dict, list[Entry], bool]]:
        key = chunk_key(plan.upload_id, "items", entries)
        try:
            answer, replayed = self._send(
                f"/datasets/{dataset_id}/items",
                key,
                lambda: self._multipart(plan, entries, {}, first=False),
                retries,
            )
        except TagsiftError as exc:
            if exc.status != 413 or len(entries) < 2:
                raise
            half = len(entries) // 2
            yield from self._items_chunk(plan, dataset_id, entries[:half], retries)
            yield from self._items_chunk(plan, dataset_id, entries[half:], retries)
            return
        yield answer, entries, replayed

    def upload_label_studio(
        self, folder: str | os.PathLike[str], export: str | os.PathLike[str], **kwargs: Any
    ) -> UploadResult:
        """:meth:`upload` with a Label Studio JSON export as the manifest."""
        return self.upload(folder, export, manifest_format="label-studio", **kwargs)

    # --- jobs ---------------------------------------------------------------------------------------------------

    def train(
        self,
        dataset_id: str,
        *,
        wait: bool = False,
        idempotency_key: str | None = None,
        progress: bool = True,
        on_event: Callable[[dict[str, Any]], None] | None = None,
        timeout: float | None = None,
        **params: Any,
    ) -> dict[str, Any]:
        """Start a training job (``params``: the job's fields, e.g. ``method``, ``epochs``); with ``wait``, wait for
        it to finish (see :meth:`wait`) and return the finished job."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        job = self.request("POST", f"/datasets/{dataset_id}/jobs", json=params, headers=headers, ok=(202,)).json()
        if wait:
            return self.wait(job["id"], progress=progress, on_event=on_event, timeout=timeout)
        return job

    def job(self, job_id: str) -> dict[str, Any]:
        return self._get(f"/jobs/{job_id}")

    def jobs(self, *, dataset_id: str | None = None, status: str | None = None) -> list[dict[str, Any]]:
        return list(self._pages("/jobs", limit=1000, dataset_id=dataset_id, status=status))

    def events(self, job_id: str, *, after: int | None = None) -> list[dict[str, Any]]:
        """The job's events after the id ``after`` (all of them without it)."""
        out: list[dict[str, Any]] = []
        while True:
            page = self._get(f"/jobs/{job_id}/events", after=after, limit=1000)
            out += page["data"]
            after = page["next_after"]
            if not page["has_more"]:
                return out

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self.request("POST", f"/jobs/{job_id}/cancel", ok=(202,)).json()

    def wait(
        self,
        job_id: str,
        *,
        progress: bool = True,
        on_event: Callable[[dict[str, Any]], None] | None = None,
        poll: float = 1.0,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Wait until the job finishes, showing its progress (a bar of its fraction done) and passing each of its
        events to ``on_event`` (default with ``progress``: one line per event); returns the finished job. A job that
        failed or was cancelled is returned too: check ``job["status"]``. ``timeout`` raises a ``timeout`` error."""
        bar = _bar(1000, f"job {job_id[:8]}", progress)
        if on_event is None and progress:
            on_event = lambda event: bar.write(_event_line(event))  # noqa: E731
        after = None
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                job = self.job(job_id)
                for event in self.events(job_id, after=after):
                    after = event["id"]
                    if on_event is not None:
                        on_event(event)
                fraction = float((job.get("progress") or {}).get("fraction") or 0.0)
                bar.update(max(0, round(fraction * 1000) - bar.n))
                bar.set_postfix_str(f"{job['status']} {(job.get('progress') or {}).get('stage', '')}")
                if job["status"] in FINISHED:
                    return job
                if deadline is not None and time.monotonic() > deadline:
                    raise TagsiftError(f"job {job_id} still {job['status']} after {timeout} s", code="timeout")
                time.sleep(poll)
        finally:
            bar.close()

    # --- labels -------------------------------------------------------------------------------------------------

    def labels(self, dataset_id: str) -> dict[str, Any]:
        """The labels export as JSON: ``items`` (one row per item), ``produced_by``, ``model_id``, ``job_id``."""
        return self._get(f"/datasets/{dataset_id}/labels", format="json")

    def labels_df(self, dataset_id: str):
        """The labels as a pandas DataFrame, one row per item, the columns of the JSON export (needs pandas:
        ``pip install tagsift-client[pandas]``)."""
        try:
            import pandas as pd
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise TagsiftError("labels_df needs pandas: pip install 'tagsift-client[pandas]'", code="missing") from exc
        rows = self.labels(dataset_id)["items"]
        return pd.DataFrame.from_records(rows)

    def save_labels(self, dataset_id: str, path: str | os.PathLike[str], *, format: str = "csv", **params: str) -> Path:
        """Stream the labels export to a file: ``csv``, ``jsonl``, ``json`` or ``label-studio`` (``from_name`` /
        ``to_name``: the project's control names)."""
        if format not in LABEL_FORMATS:
            raise TagsiftError(f"format: one of {', '.join(LABEL_FORMATS)}", code="invalid_input")
        return self._download(f"/datasets/{dataset_id}/labels", Path(path), {"format": format, **params})

    def _download(self, url: str, path: Path, params: dict[str, Any]) -> Path:
        with self.http.stream("GET", url, params=params) as res:
            if res.status_code != 200:
                res.read()
                raise TagsiftError.from_response(res)
            tmp = path.with_name(path.name + ".part")
            with tmp.open("wb") as fh:
                for chunk in res.iter_bytes():
                    fh.write(chunk)
            tmp.replace(path)
        return path

    # --- reviews ------------------------------------------------------------------------------------------------

    def review_queue(self, dataset_id: str, *, limit: int | None = None) -> list[dict[str, Any]]:
        """The items that need review, most doubtful (smallest margin) first."""
        return list(self.items(dataset_id, needs_review=True, order="margin", limit=limit))

    def item(self, item_id: str) -> dict[str, Any]:
        return self._get(f"/items/{item_id}")

    def decide(self, item_id: str, label: str, *, add_to_candidates: bool = False) -> dict[str, Any]:
        """Set a reviewer's tag on one item (``add_to_candidates``: a tag outside its candidates)."""
        body = {"label": label, "add_to_candidates": add_to_candidates}
        return self.request("PATCH", f"/items/{item_id}", json=body).json()

    def decide_many(
        self, decisions: Mapping[str, str] | Iterable[tuple[str, str]] | Any, *, add_to_candidates: bool = False
    ) -> list[dict[str, Any]]:
        """Many decisions: a ``{item_id: label}`` mapping, ``(item_id, label)`` pairs, or a DataFrame with
        ``item_id`` (or ``id``) and ``label`` columns. Stops at the first refused one (raising it, with the
        decisions already made in ``error.problem["decided"]``)."""
        pairs = _decision_pairs(decisions)
        done: list[dict[str, Any]] = []
        for item_id, label in pairs:
            try:
                done.append(self.decide(item_id, label, add_to_candidates=add_to_candidates))
            except TagsiftError as exc:
                exc.problem = {**exc.problem, "decided": [d["id"] for d in done]}
                raise
        return done

    # --- models, prediction, export -----------------------------------------------------------------------------

    def models(self, *, dataset_id: str | None = None) -> list[dict[str, Any]]:
        return list(self._pages("/models", limit=1000, dataset_id=dataset_id))

    def model(self, model_id: str) -> dict[str, Any]:
        return self._get(f"/models/{model_id}")

    def predict(
        self,
        images: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
        model_id: str,
        *,
        candidates: list[str] | None = None,
        top_k: int | None = None,
        batch: int = PREDICT_BATCH,
    ) -> list[dict[str, Any]]:
        """Predict a folder (its images, sorted by name) or a list of image files, ``batch`` per request; one
        prediction per image in order (``file``, ``label``, ``score``, ``top_k``)."""
        paths = _image_paths(images)
        out: list[dict[str, Any]] = []
        for lo in range(0, len(paths), batch):
            part = paths[lo : lo + batch]
            data: dict[str, str] = {"model_id": model_id}
            if candidates is not None:
                data["candidates"] = json.dumps(candidates)
            if top_k is not None:
                data["top_k"] = str(top_k)
            files = [("image", (p.name, p.read_bytes(), _media_type(p))) for p in part]
            out += self.request("POST", "/predict", data=data, files=files).json()["predictions"]
        return out

    def export(self, model_id: str, path: str | os.PathLike[str], *, merged: bool = False) -> Path:
        """Download the model's export zip (ONNX, classes, preprocessing, predict.py) to ``path``."""
        params = {"merged": "true"} if merged else {}
        return self._download(f"/models/{model_id}/export", Path(path), params)

    # --- webhooks -----------------------------------------------------------------------------------------------

    def create_webhook(
        self, url: str, *, events: list[str] | None = None, description: str | None = None
    ) -> dict[str, Any]:
        """Register a webhook; the answer holds its signing ``secret``, shown this once."""
        body: dict[str, Any] = {"url": url}
        if events is not None:
            body["events"] = events
        if description is not None:
            body["description"] = description
        return self.request("POST", "/webhooks", json=body, ok=(201,)).json()

    def webhooks(self) -> list[dict[str, Any]]:
        return list(self._pages("/webhooks", limit=1000))

    def webhook(self, webhook_id: str) -> dict[str, Any]:
        return self._get(f"/webhooks/{webhook_id}")

    def delete_webhook(self, webhook_id: str) -> None:
        self.request("DELETE", f"/webhooks/{webhook_id}", ok=(204,))

    def deliveries(self, webhook_id: str, *, status: str | None = None) -> list[dict[str, Any]]:
        """The hook's delivery log, newest first."""
        return list(self._pages(f"/webhooks/{webhook_id}/deliveries", limit=1000, status=status))


@dataclass
class ModelExport:
    """A downloaded model export, unpacked: its folder, classes, preprocessing and record."""

    folder: Path
    classes: list[str]
    preprocess: dict[str, Any]
    model: dict[str, Any]

    @property
    def files(self) -> list[str]:
        return sorted(p.name for p in self.folder.iterdir())

    def predict(self, images: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> list[dict[str, Any]]:
        """Run the export's own ``predict.py`` (onnxruntime, NumPy, Pillow: ``tagsift-client[onnx]``) on images."""
        import subprocess

        paths = [str(p) for p in _image_paths(images)]
        out = subprocess.run(
            [sys.executable, str(self.folder / "predict.py"), "--model", str(self.folder), *paths],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]


def load_export(path: str | os.PathLike[str], folder: str | os.PathLike[str] | None = None) -> ModelExport:
    """Unpack an export zip (into ``folder``, default: next to it without ``.zip``) and read its JSON files."""
    source = Path(path)
    target = Path(folder) if folder else source.with_suffix("")
    if source.is_file():
        with zipfile.ZipFile(source) as zf:
            zf.extractall(target)
    else:
        target = source
    read = lambda name: json.loads((target / name).read_text())  # noqa: E731
    return ModelExport(
        folder=target, classes=read("classes.json"), preprocess=read("preprocess.json"), model=read("model.json")
    )


def _decision_pairs(decisions: Any) -> list[tuple[str, str]]:
    if hasattr(decisions, "to_dict") and hasattr(decisions, "columns"):  # a DataFrame
        id_col = "item_id" if "item_id" in decisions.columns else "id"
        return list(zip(decisions[id_col].astype(str), decisions["label"].astype(str), strict=True))
    if isinstance(decisions, Mapping):
        return [(str(k), str(v)) for k, v in decisions.items()]
    return [(str(k), str(v)) for k, v in decisions]


def _image_paths(images: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> list[Path]:
    if isinstance(images, (str, os.PathLike)):
        root = Path(images)
        if root.is_dir():
            return sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        return [root]
    return [Path(p) for p in images]


def _media_type(path: Path) -> str:
    suffix = path.suffix.lower()
    return {
        ".jpg": "image/jpeg",
        ".jpeg": "image/jpeg",
        ".png": "image/png",
        ".webp": "image/webp",
        ".bmp": "image/bmp",
        ".gif": "image/gif",
        ".tif": "image/tiff",
        ".tiff": "image/tiff",
    }.get(suffix, "application/octet-stream")


def _event_line(event: dict[str, Any]) -> str:
    data = event.get("data") or {}
    text = " ".join(f"{k}={v}" for k, v in data.items() if v is not None and not isinstance(v, (dict, list)))
    return f"[{event.get('kind')}] {text}"


class _NoBar:
    n = 0

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix_str(self, text: str) -> None:
        pass

    def write(self, text: str) -> None:
        print(text, file=sys.stderr)

    def close(self) -> None:
        pass


def _bar(total: int, desc: str, enabled: bool):
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img" if desc == "upload" else "", file=sys.stderr)

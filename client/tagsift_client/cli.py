"""``tagsift-client``: the command line on :class:`tagsift_client.Client` (argparse only).

The URL and key come from ``--url`` / ``--api-key``, else ``TAGSIFT_URL`` / ``TAGSIFT_API_KEY``, else the config
file's profile (``--profile``, ``--config``; default ``~/.config/tagsift/client.ini``). Results are printed as JSON
on stdout; errors as the server's problem+json on stderr, with exit status 1.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from tagsift_client.client import Client, load_export
from tagsift_client.errors import TagsiftError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tagsift-client", description="The tagsift API from the command line.")
    p.add_argument("--url", help="API URL (default: TAGSIFT_URL, the config file, http://127.0.0.1:8000)")
    p.add_argument("--api-key", help="API key (default: TAGSIFT_API_KEY, the config file)")
    p.add_argument("--profile", default="default", help="config file section (default: default)")
    p.add_argument("--config", help="config file (default: TAGSIFT_CONFIG or ~/.config/tagsift/client.ini)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("upload", help="upload a folder with its manifest (new dataset, or --dataset)")
    s.add_argument("folder")
    s.add_argument("--manifest", help="CSV, JSONL or Label Studio JSON export (default: manifest.* in the folder)")
    s.add_argument("--format", default="auto", choices=["auto", "jsonl", "csv", "label-studio"])
    s.add_argument("--name", help="name of the new dataset (default: the folder's name)")
    s.add_argument("--dataset", help="add to this dataset instead of creating one")
    s.add_argument("--classes", help='JSON list of classes, e.g. ["cat", "dog"] (default: from the manifest)')
    s.add_argument("--prompt-template")
    s.add_argument("--chunk-images", type=int, default=1000)
    s.add_argument("--chunk-mb", type=float, default=256)
    s.add_argument("--no-resume", action="store_true", help="a new dataset even if this upload made one before")

    s = sub.add_parser("datasets", help="list datasets, or show one")
    s.add_argument("dataset", nargs="?")

    s = sub.add_parser("train", help="start a training job")
    s.add_argument("dataset")
    s.add_argument("--wait", action="store_true", help="wait for the job, showing its progress and events")
    s.add_argument("--param", "-p", action="append", default=[], metavar="KEY=VALUE", help="a job field (JSON value)")
    s.add_argument("--idempotency-key")

    s = sub.add_parser("wait", help="wait for a job")
    s.add_argument("job")

    s = sub.add_parser("jobs", help="list jobs, or show one")
    s.add_argument("job", nargs="?")
    s.add_argument("--dataset")

    s = sub.add_parser("cancel", help="cancel a job")
    s.add_argument("job")

    s = sub.add_parser("labels", help="the labels export, to stdout or a file")
    s.add_argument("dataset")
    s.add_argument("--format", default="csv", choices=["csv", "jsonl", "json", "label-studio"])
    s.add_argument("--output", "-o", help="file (default: stdout)")

    s = sub.add_parser("review", help="the review queue (most doubtful first)")
    s.add_argument("dataset")
    s.add_argument("--limit", type=int)

    s = sub.add_parser("decide", help="reviewer decisions: ITEM=LABEL pairs, or a CSV with item_id,label")
    s.add_argument("decisions", nargs="*", metavar="ITEM=LABEL")
    s.add_argument("--csv", help="CSV file with columns item_id (or id) and label")
    s.add_argument("--add-to-candidates", action="store_true")

    s = sub.add_parser("predict", help="predict a folder of images (or files)")
    s.add_argument("images", nargs="+")
    s.add_argument("--model", required=True)
    s.add_argument("--candidates", help='JSON list of tags, e.g. ["cat", "lynx"]')
    s.add_argument("--top-k", type=int)

    s = sub.add_parser("export", help="download a model's export zip (and unpack it with --unpack)")
    s.add_argument("model")
    s.add_argument("--output", "-o", help="zip path (default: tagsift-model-<id>.zip)")
    s.add_argument("--merged", action="store_true")
    s.add_argument("--unpack", action="store_true")

    s = sub.add_parser("webhooks", help="list, create or delete webhooks, or show deliveries")
    w = s.add_subparsers(dest="action")
    w.add_parser("list")
    c = w.add_parser("create")
    c.add_argument("hook_url", metavar="URL")  # not "url": that is the API's (--url)
    c.add_argument("--event", action="append", dest="events")
    c.add_argument("--description")
    d = w.add_parser("delete")
    d.add_argument("webhook")
    d = w.add_parser("deliveries")
    d.add_argument("webhook")
    d.add_argument("--status", choices=["pending", "succeeded", "failed"])
    return p


def _print(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, ensure_ascii=False, default=str)
    sys.stdout.write("\n")


def _param(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep:
        raise TagsiftError(f"--param {text!r}: KEY=VALUE", code="invalid_input")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def _decisions(args: argparse.Namespace) -> list[tuple[str, str]]:
    pairs = []
    for text in args.decisions:
        item, sep, label = text.partition("=")
        if not sep:
            raise TagsiftError(f"{text!r}: ITEM=LABEL", code="invalid_input")
        pairs.append((item, label))
    if args.csv:
        with open(args.csv, newline="", encoding="utf-8-sig") as fh:
            for row in csv.DictReader(fh):
                pairs.append((row.get("item_id") or row["id"], row["label"]))
    return pairs


def run(args: argparse.Namespace, client: Client) -> Any:
    progress = not args.quiet
    cmd = args.command
    if cmd == "upload":
        from pathlib import Path

        name = None if args.dataset else (args.name or Path(args.folder).resolve().name)
        result = client.upload(
            args.folder,
            args.manifest,
            name=name,
            dataset_id=args.dataset,
            classes=json.loads(args.classes) if args.classes else None,
            prompt_template=args.prompt_template,
            manifest_format=args.format,
            chunk_images=args.chunk_images,
            chunk_bytes=int(args.chunk_mb * 2**20),
            progress=progress,
            resume=not args.no_resume,
        )
        return asdict(result)
    if cmd == "datasets":
        return client.dataset(args.dataset) if args.dataset else client.datasets()
    if cmd == "train":
        params = dict(_param(p) for p in args.param)
        return client.train(
            args.dataset, wait=args.wait, idempotency_key=args.idempotency_key, progress=progress, **params
        )
    if cmd == "wait":
        return client.wait(args.job, progress=progress)
    if cmd == "jobs":
        return client.job(args.job) if args.job else client.jobs(dataset_id=args.dataset)
    if cmd == "cancel":
        return client.cancel(args.job)
    if cmd == "labels":
        if args.output:
            return {"saved": str(client.save_labels(args.dataset, args.output, format=args.format))}
        with client.http.stream("GET", f"/datasets/{args.dataset}/labels", params={"format": args.format}) as res:
            if res.status_code != 200:
                res.read()
                raise TagsiftError.from_response(res)
            for chunk in res.iter_bytes():
                sys.stdout.buffer.write(chunk)
        return None
    if cmd == "review":
        return client.review_queue(args.dataset, limit=args.limit)
    if cmd == "decide":
        return client.decide_many(_decisions(args), add_to_candidates=args.add_to_candidates)
    if cmd == "predict":
        images = args.images[0] if len(args.images) == 1 else args.images
        candidates = json.loads(args.candidates) if args.candidates else None
        return client.predict(images, args.model, candidates=candidates, top_k=args.top_k)
    if cmd == "export":
        path = client.export(args.model, args.output or f"tagsift-model-{args.model}.zip", merged=args.merged)
        if args.unpack:
            export = load_export(path)
            return {"saved": str(path), "folder": str(export.folder), "files": export.files}
        return {"saved": str(path)}
    if cmd == "webhooks":
        if args.action == "create":
            return client.create_webhook(args.hook_url, events=args.events, description=args.description)
        if args.action == "delete":
            client.delete_webhook(args.webhook)
            return {"deleted": args.webhook}
        if args.action == "deliveries":
            return client.deliveries(args.webhook, status=args.status)
        return client.webhooks()
    raise AssertionError(cmd)  # pragma: no cover - argparse requires a known command


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        with Client(args.url, args.api_key, profile=args.profile, config=args.config) as client:
            result = run(args, client)
    except TagsiftError as exc:
        problem = exc.problem or {"status": exc.status, "code": exc.code, "detail": exc.detail}
        print(f"tagsift-client: {exc}", file=sys.stderr)
        json.dump(problem, sys.stderr, ensure_ascii=False)
        sys.stderr.write("\n")
        return 1
    except KeyboardInterrupt:
        print("tagsift-client: interrupted (run the same command again to resume an upload)", file=sys.stderr)
        return 130
    if result is not None:
        _print(result)
    if args.command in ("train", "wait") and isinstance(result, dict) and result.get("status") in ("failed",):
        return 2
    return 0

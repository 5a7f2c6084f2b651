"""``tagsift bench review --live``: what live refits save a reviewer, and how long a refit takes.

**Review with and without refits** (CIFAR-10 train split, ``per_class`` images per class, symmetric candidate sets
at rate q, the reference backbone's clean features): the job's default configuration is trained once on the
candidate sets (``bench.review.default_params``; its deployed head is what a job stores). A simulated reviewer then
fixes items in queue order (lowest margin first), ``every`` at a time:

- static: the queue and every other tag stay the job's (no refits);
- live: after every ``every`` decisions the head is refit (``ml.refit``, as the worker does, starting from the
  previous revision) with the reviewed items certain; every other item takes its new tag and the queue re-ranks.

R95 is the reviewed share after which at least 95% of the labels are right (reviewed ones included). It prints
``live r95_static=<share> r95_live=<share> r95_ratio=<live/static> refit_p50_s=<s> refit_p95_s=<s> items=<n>`` per
(q, seed) and for their means.

**Refit latency** (``--latency-items``): synthetic features (``bench.live_data``) in the configured database and
store; one decision through ``app.services.reviews.decide`` (stored, the refit queued), then the refit's task body
(``worker.refit.run_refit``) until every untouched item is retagged: ``refit items=<n> p50_s=<s> p95_s=<s>``. The
broker's delivery (``TAGSIFT_BROKER_POLL_SECONDS`` on the embedded broker, milliseconds on Redis) comes on top.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

TARGET = 0.95


def _pct(values: Sequence[float], q: float) -> float:
    xs = sorted(values)
    return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))] if xs else float("nan")


def simulate(feats, mask, truth, head, *, every: int, max_share: float, live: bool) -> dict:
    """One reviewer run (module doc): R95 and the refit times."""
    from ml.refit import RefitConfig, refit, relabel

    n = truth.numel()
    labels, _, margin, _ = relabel(head.logits(feats), mask)
    reviewed = torch.zeros(n, dtype=torch.bool)
    targets = torch.full((n,), -1, dtype=torch.long)
    times: list[float] = []
    r95 = None
    while True:
        right = torch.where(reviewed, torch.ones_like(reviewed), labels == truth)
        if float(right.float().mean()) >= TARGET:
            r95 = float(reviewed.float().mean())
            break
        if float(reviewed.float().mean()) >= max_share or bool(reviewed.all()):
            break
        key = margin.float().masked_fill(reviewed, float("inf"))
        pick = key.argsort()[: min(every, int((~reviewed).sum()))]
        reviewed[pick] = True
        targets[pick] = truth[pick]
        if live:
            out = refit(feats, mask, head, targets, RefitConfig())
            times.append(out.seconds)
            head = out.head
            labels, _, margin, _ = relabel(out.logits, mask)
    return {"r95": r95, "times": times}


def job_head(backbone, feats: torch.Tensor, mask: torch.Tensor, classnames: list[str], params: dict):
    """The deployed head of the job's default configuration trained on the candidate sets (nothing reviewed)."""
    from ml.ensemble import deployed_classifier
    from ml.knn_vote import prune_candidates
    from ml.pipeline import train_config
    from ml.refit import LinearHead
    from ml.train import fit

    train_mask = mask
    if params.get("knn_vote"):
        train_mask = prune_candidates(feats[0], mask, int(params["knn_k"]), float(params["knn_tau"]))
    result = fit(backbone, feats, train_mask, classnames, train_config(params, "a photo of a {}."), device="cpu")
    d = deployed_classifier(backbone, result, classnames, float(params.get("handcrafted_mix") or 0.0), None)
    return LinearHead.from_export(d.class_features, d.logit_scale, d.bias)


def line(r95_static, r95_live, times: Sequence[float], items: int) -> str:
    ratio = "nan" if not r95_static or r95_live is None else f"{r95_live / r95_static:.3f}"
    fmt = lambda x: "none" if x is None else f"{x:.4f}"  # noqa: E731
    return (
        f"live r95_static={fmt(r95_static)} r95_live={fmt(r95_live)} r95_ratio={ratio}"
        f" refit_p50_s={_pct(times, 0.5):.3f} refit_p95_s={_pct(times, 0.95):.3f} items={items}"
    )


def run_review(
    *,
    backbone: str,
    cifar10_path: Path,
    cache_dir: Path | None,
    feature_dir: Path,
    per_class: int,
    qs: Sequence[float],
    seeds: Sequence[int],
    every: int,
    max_share: float,
    epochs: int | None = None,
    out: Callable[[str], None] = print,
) -> list[dict]:
    from ml.data import load_cifar10, partialize

    from bench.review import default_params
    from ml.backbone import load_backbone
    from ml.features import FeatureCache, encode_images

    torch.set_num_threads(1)  # as the live worker (worker.refit.REFIT_THREADS): the refit times are comparable
    bb = load_backbone(backbone, device="cpu", cache_dir=cache_dir)
    runs = []
    for seed in seeds:
        data = load_cifar10(cifar10_path, "train", per_class=per_class, seed=seed)
        k = len(data.classnames)
        feats = encode_images(bb, data.images, shas=data.shas, views=1, cache=FeatureCache(feature_dir), seed=0)
        clean = torch.nn.functional.normalize(feats[0].float(), dim=-1)
        for q in qs:
            mask = partialize(data.labels, k, q, seed)
            overrides = {"epochs": epochs} if epochs else {}
            params = default_params(len(data), k, views=1, seed=seed, **overrides)
            head = job_head(bb, feats, mask, list(data.classnames), params)
            static = simulate(clean, mask, data.labels, head, every=every, max_share=max_share, live=False)
            live = simulate(clean, mask, data.labels, head, every=every, max_share=max_share, live=True)
            run = {"q": q, "seed": seed, "static": static["r95"], "live": live["r95"], "times": live["times"]}
            runs.append(run)
            out(f"q={q} seed={seed} " + line(run["static"], run["live"], run["times"], len(data)))
    for q in qs:
        sub = [r for r in runs if r["q"] == q]
        if all(r["static"] is not None and r["live"] is not None for r in sub):
            s = statistics.mean(r["static"] for r in sub)
            v = statistics.mean(r["live"] for r in sub)
            out(f"q={q} mean " + line(s, v, [t for r in sub for t in r["times"]], per_class * 10))
    return runs


def run_latency(sizes: Sequence[int], runs: int, out: Callable[[str], None] = print) -> list[dict]:
    """Decision stored -> every untouched item retagged, on synthetic features in the configured database."""
    from app.db import session_scope, upgrade_database
    from app.models import Owner, Refit
    from app.services.reviews import Reviewer, decide
    from bench.live_data import make_synthetic
    from worker.refit import run_refit

    upgrade_database()
    results = []
    for n in sizes:
        data = make_synthetic(n, d=384, seed=n)
        with session_scope() as session:
            owner = session.get(Owner, data.owner_id)
        times = []
        for r in range(runs + 1):  # the first loads the matrix from the store into memory: not timed
            j = r * 7919 % n
            with session_scope() as session:
                decide(
                    session=session,
                    owner=owner,
                    item_ids=[data.item_ids[j]],
                    action="assign",
                    label=data.classes[int(data.truth[j])],
                    reviewer=Reviewer(api_key_id=None, name="bench"),
                )
            started = time.perf_counter()
            with session_scope() as session:
                refit_id = session.query(Refit.id).filter_by(dataset_id=data.dataset_id, status="queued").scalar()
            outcome = run_refit(refit_id)
            if r:
                times.append(time.perf_counter() - started)
            assert outcome == "succeeded", outcome
        out(f"refit items={n} p50_s={_pct(times, 0.5):.3f} p95_s={_pct(times, 0.95):.3f}")
        results.append({"items": n, "times": times})
    return results

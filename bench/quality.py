"""``tagsift bench quality``: how close ml.quality's accuracy figure lands to the truth, with and without an audit.

For each seed, q and method: the "dataset" is ``per_class`` images per class of CIFAR-10's **test** split (data no
setting of ml.quality was chosen on; ``--split train`` gives the development split the settings were chosen on),
with symmetric candidate sets at rate q. The method is trained on the candidate sets as a job would (the API's
defaults for it), every item is labelled over its own candidates, and ``ml.quality.assess`` gives its figure:

* ``audit=0``: no item known (the consistency estimate);
* ``audit=n``: a seeded uniformly random sample of n items with their true tag (the audit). The largest audit's
  items are held out of the one training of the run, as the job pipeline holds audited items out (so ``audit=0``
  labels them out of sample: the same model is judged both ways).

The truth is the share of right labels over all items (audited items right). Per run it prints
``quality audit=<n> est=<x> true=<y> covered=<0|1> ...``, then per audit size a summary line. Everything runs on
cached features (ml.features): the first run encodes the images once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

METHODS = ("aligned_head", "linear_probe", "coop")


def train_and_logits(backbone, feats: torch.Tensor, mask: torch.Tensor, classes, method: str, seed: int, held=()):
    """(N, K) logits of every item from ``method`` (its API defaults) trained on the candidate sets of the items not
    in ``held`` (the audited items, held out as the job pipeline holds them out)."""
    from bench.review import default_params
    from ml.ensemble import deployed_classifier
    from ml.knn_vote import prune_candidates
    from ml.pipeline import train_config
    from ml.train import class_logits, fit

    params = default_params(len(mask), len(classes), method=method, seed=seed)
    if method == "coop":
        params["epochs"] = min(params["epochs"], 5)
    keep = torch.ones(len(mask), dtype=torch.bool)
    keep[list(held)] = False
    train_feats, train_mask = feats[:, keep], mask[keep]
    if params.get("knn_vote"):
        train_mask = prune_candidates(train_feats[0], train_mask, int(params["knn_k"]), float(params["knn_tau"]))
    cfg = train_config(params, "a photo of a {}.")
    result = fit(backbone, train_feats, train_mask, list(classes), cfg, device="cpu")
    mix = float(params.get("handcrafted_mix") or 0.0)
    deployed = deployed_classifier(backbone, result, list(classes), mix, params.get("templates"))
    return class_logits(feats[0], deployed.class_features, deployed.logit_scale, deployed.bias)


def one_run(backbone, feats, truth, classes, *, q: float, seed: int, method: str, audits: Sequence[int], log) -> list:
    """Rows {method, q, seed, audit, est, lo, hi, true, covered} of one (q, seed, method)."""
    from bench.data import partialize
    from ml.quality import assess

    n, k = len(truth), len(classes)
    mask = partialize(truth, k, q, seed)
    g = torch.Generator().manual_seed(1000 + seed)
    order = torch.randperm(n, generator=g).tolist()
    held = sorted(order[: max(audits)])  # the largest audit, held out of training as the job pipeline holds it out
    logits = train_and_logits(backbone, feats, mask, classes, method, seed, held)
    rows = []
    for a in audits:
        started = time.perf_counter()
        audited = {i: int(truth[i]) for i in order[:a]}
        res = assess(logits, mask, classes=list(classes), certain=[False] * n, audited=audited, features=feats[0])
        true = float((res.labels == truth).float().mean())
        e = res.report["estimate"]
        lo, hi = e["ci95"]
        row = {
            "method": method,
            "q": q,
            "seed": seed,
            "audit": a,
            "est": e["accuracy"],
            "lo": lo,
            "hi": hi,
            "true": true,
            "covered": int(lo <= true <= hi),
            "temperature": res.temperature,
            "needs_review": int((res.confidence < 0.9).sum()),
            "seconds": round(time.perf_counter() - started, 2),
        }
        log(
            f"quality audit={a} est={row['est']:.4f} true={true:.4f} covered={row['covered']} "
            f"ci95=[{lo:.4f},{hi:.4f}] method={method} q={q} seed={seed} T={res.temperature:.3g} "
            f"needs_review={row['needs_review']} assess_s={row['seconds']}"
        )
        rows.append(row)
    return rows


def summary(rows: list[dict]) -> list[str]:
    """One line per audit size: runs, mean and max |est - true| in points, share within the goal, coverage."""
    lines = []
    for a in sorted({r["audit"] for r in rows}):
        rs = [r for r in rows if r["audit"] == a]
        err = [100 * abs(r["est"] - r["true"]) for r in rs]
        goal = 3.0 if a else 5.0
        lines.append(
            f"quality summary audit={a} runs={len(rs)} mean_abs_err_pts={sum(err) / len(err):.2f} "
            f"max_abs_err_pts={max(err):.2f} within_{goal:g}pts={sum(e <= goal for e in err) / len(err):.2f} "
            f"covered={sum(r['covered'] for r in rs) / len(rs):.2f}"
        )
        for m in sorted({r["method"] for r in rs}):
            em = [100 * abs(r["est"] - r["true"]) for r in rs if r["method"] == m]
            bias = [100 * (r["est"] - r["true"]) for r in rs if r["method"] == m]
            lines.append(
                f"quality summary audit={a} method={m} runs={len(em)} mean_abs_err_pts={sum(em) / len(em):.2f} "
                f"max_abs_err_pts={max(em):.2f} mean_bias_pts={sum(bias) / len(bias):+.2f}"
            )
    return lines


def run_cifar10(
    *,
    backbone: str,
    cifar10_path: Path,
    cache_dir: Path | None,
    feature_dir: Path,
    split: str,
    per_class: int,
    qs: Sequence[float],
    seeds: Sequence[int],
    methods: Sequence[str],
    audits: Sequence[int],
    log: Callable[[str], None] = print,
) -> list[dict]:
    from bench.data import load_cifar10
    from ml.backbone import load_backbone
    from ml.features import FeatureCache, encode_images

    for m in methods:
        if m not in METHODS:
            raise ValueError(f"method: unknown {m!r}; expected some of {METHODS}")
    bb = load_backbone(backbone, device="cpu", cache_dir=cache_dir)
    data = load_cifar10(cifar10_path, split, per_class=per_class, seed=0)
    log(f"encoding {len(data)} {split} images with {bb.id} (cached after the first run)")
    feats = encode_images(bb, data.images, shas=data.shas, views=1, cache=FeatureCache(feature_dir), seed=0)
    rows = []
    for q in qs:
        for seed in seeds:
            for method in methods:
                rows += one_run(
                    bb, feats, data.labels, data.classnames, q=q, seed=seed, method=method, audits=audits, log=log
                )
    for line in summary(rows):
        log(line)
    return rows

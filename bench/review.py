"""``tagsift bench review``: how much of a dataset a reviewer must check before its labels are right.

The simulation is the annotation team's loop, played with the true tags hidden from the model:

1. train the job's default configuration (``app.job_defaults``: method ``auto`` for the dataset's size, its loss,
   epochs, lr, neighbour-vote pruning and handcrafted mix) on the candidate sets, every reviewed item certain
   (candidate set = its true tag); label every item over its own candidates;
2. the reviewer checks the next ``budget`` share of all items in the chosen order and fixes each wrong label with
   the true tag; those items are certain from now on;
3. retrain, and repeat until ``max_share`` of the items have been reviewed.

Orders: ``margin`` (the current model's lowest margin first: the job's review queue), ``zero_shot`` (the lowest
margin of the handcrafted zero-shot classifier over the candidates, computed once) and ``random`` (seeded).
Per round: the dataset's label accuracy (the share of right labels, reviewed items included) and the share of the
wrong labels present before the round that the round found. **R95** is the reviewed share after which the labels
are at least 95% right (at round granularity; None if ``max_share`` was not enough).

Everything runs on cached features (ml.features), so a round costs one training run; true labels are used only to
play the reviewer and to score.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

ORDERS = ("margin", "zero_shot", "random")
TARGET = 0.95


@dataclass
class ReviewSetting:
    features: torch.Tensor  # (V, N, D) training views (view 0 clean)
    candidates: torch.Tensor  # (N, K) bool
    truth: torch.Tensor  # (N,) long: only the simulated reviewer and the scores read it
    classnames: Sequence[str]


def default_params(n: int, k: int, **overrides) -> dict:
    """The job parameters a user gets for a dataset of n items over k tags (as the API resolves them)."""
    from app.job_defaults import resolve_job_params
    from app.schemas import JobCreate

    return resolve_job_params(JobCreate(**overrides).model_dump(), items=n, classes=k)


def label_dataset(backbone, setting: ReviewSetting, reviewed: torch.Tensor, params: dict) -> tuple:
    """(labels, margins) of every item after training the job configuration ``params`` with ``reviewed`` certain."""
    from ml.ensemble import deployed_classifier
    from ml.knn_vote import prune_candidates
    from ml.pipeline import train_config
    from ml.train import disambiguate, fit

    mask = setting.candidates.clone()
    rows = reviewed.nonzero().flatten()
    mask[rows] = False
    mask[rows, setting.truth[rows]] = True
    train_mask = mask
    if params.get("knn_vote"):
        train_mask = prune_candidates(setting.features[0], mask, int(params["knn_k"]), float(params["knn_tau"]))
    cfg = train_config(params, "a photo of a {}.")
    result = fit(backbone, setting.features, train_mask, setting.classnames, cfg, device="cpu")
    deployed = deployed_classifier(
        backbone, result, setting.classnames, float(params.get("handcrafted_mix") or 0.0), params.get("templates")
    )
    labels, _, margin = disambiguate(
        setting.features[0], deployed.class_features, deployed.logit_scale, mask, deployed.bias
    )
    return labels, margin


def zero_shot_margin(backbone, setting: ReviewSetting) -> torch.Tensor:
    """Margin of the handcrafted (8-template) zero-shot classifier over each item's candidates."""
    from ml.ensemble import handcrafted_features
    from ml.prompts import ENSEMBLE_TEMPLATES
    from ml.train import disambiguate

    hand = handcrafted_features(backbone, setting.classnames, ENSEMBLE_TEMPLATES)
    scale = float(backbone.model.logit_scale.exp())
    return disambiguate(setting.features[0], hand, scale, setting.candidates)[2]


def simulate(
    backbone,
    setting: ReviewSetting,
    *,
    order: str,
    budget: float,
    max_share: float,
    params: dict,
    seed: int = 1,
    zs_margin: torch.Tensor | None = None,
    memo: dict | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """One review simulation (see the module doc); returns its rounds and R95. ``memo`` shares training runs
    between simulations (the first round, with nothing reviewed, is the same for every order)."""
    if order not in ORDERS:
        raise ValueError(f"order: unknown {order!r}; expected one of {ORDERS}")
    n = setting.truth.numel()
    per_round = max(1, round(budget * n))
    gen = torch.Generator().manual_seed(seed)
    tie = torch.rand(n, generator=gen)  # seeded tie-break (and the random order itself)
    reviewed = torch.zeros(n, dtype=torch.bool)
    rounds: list[dict] = []
    r95 = None
    while True:
        t0 = time.perf_counter()
        key_bytes = bytes(reviewed.numpy().tobytes())
        if memo is not None and key_bytes in memo:
            labels, margin = memo[key_bytes]
        else:
            labels, margin = label_dataset(backbone, setting, reviewed, params)
            if memo is not None:
                memo[key_bytes] = (labels, margin)
        right = labels == setting.truth
        accuracy = float(right.float().mean())
        share = float(reviewed.float().mean())
        entry = {"reviewed_share": round(share, 4), "accuracy": round(accuracy, 4), "wrong": int((~right).sum())}
        if r95 is None and accuracy >= TARGET:
            r95 = share
        if share >= max_share - 1e-9 or bool(reviewed.all()):
            entry["seconds"] = round(time.perf_counter() - t0, 2)
            rounds.append(entry)
            break
        if order == "margin":
            key = margin.float() + 1e-6 * tie
        elif order == "zero_shot":
            assert zs_margin is not None, "the zero_shot order needs the zero-shot margins"
            key = zs_margin.float() + 1e-6 * tie
        else:
            key = tie
        key = key.masked_fill(reviewed, float("inf"))
        pick = key.argsort()[: min(per_round, int((~reviewed).sum()))]
        found = int((~right[pick]).sum())
        entry.update(
            {
                "checked": len(pick),
                "found": found,
                "found_share": round(found / max(int((~right).sum()), 1), 4),  # of the wrong labels before the round
                "seconds": round(time.perf_counter() - t0, 2),
            }
        )
        rounds.append(entry)
        log(f"  {order:9s} budget {budget:.0%}: reviewed {share:.1%} accuracy {accuracy:.1%} found {found}")
        reviewed[pick] = True
    return {"order": order, "budget": budget, "rounds": rounds, "r95": None if r95 is None else round(r95, 4)}


def run(
    backbone,
    setting: ReviewSetting,
    *,
    budgets: Sequence[float] = (0.05, 0.10, 0.20),
    orders: Sequence[str] = ORDERS,
    max_share: float = 0.4,
    seed: int = 1,
    params: dict | None = None,
    log: Callable[[str], None] = print,
    on_run: Callable[[dict], None] | None = None,
) -> dict:
    """Every (order, budget) simulation on one setting; ``on_run(report so far)`` after each simulation."""
    n, k = setting.candidates.shape
    params = params or default_params(n, k)
    zs = zero_shot_margin(backbone, setting) if "zero_shot" in orders else None
    runs, memo = [], {}
    report = {
        "items": n,
        "classes": k,
        "mean_set_size": round(float(setting.candidates.sum(1).float().mean()), 3),
        "params": {key: params.get(key) for key in ("method", "loss", "epochs", "lr", "knn_vote", "handcrafted_mix")},
        "max_share": max_share,
        "seed": seed,
        "runs": runs,
    }
    for budget in budgets:
        for order in orders:
            runs.append(
                simulate(
                    backbone,
                    setting,
                    order=order,
                    budget=budget,
                    max_share=max_share,
                    params=params,
                    seed=seed,
                    zs_margin=zs,
                    memo=memo,
                    log=log,
                )
            )
            if on_run is not None:
                on_run(report)
    return report


def _find(report: dict, order: str, budget: float) -> dict:
    return next(r for r in report["runs"] if r["order"] == order and math.isclose(r["budget"], budget))


def report_md(report: dict, command: str, png_name: str | None) -> str:
    """Markdown tables (per budget: accuracy and found share per round, per order; R95) for docs."""
    lines = [
        f"Command: `{command}`",
        "",
        f"{report['items']} items, {report['classes']} tags, mean candidate set {report['mean_set_size']}; job "
        f"defaults {report['params']}; seed {report['seed']}.",
        "",
        "| order | budget / round | R95 (share of items reviewed) | first round: wrong labels found | "
        "found vs random |",
        "| --- | --- | --- | --- | --- |",
    ]
    budgets = sorted({r["budget"] for r in report["runs"]})
    for budget in budgets:
        base = next((r for r in report["runs"] if r["order"] == "random" and math.isclose(r["budget"], budget)), None)
        base_found = base["rounds"][0].get("found") if base else None
        for r in [x for x in report["runs"] if math.isclose(x["budget"], budget)]:
            first = r["rounds"][0]
            ratio = f"{first['found'] / base_found:.1f}x" if base_found and "found" in first else "n/a"
            r95 = "not reached" if r["r95"] is None else f"{r['r95']:.0%}"
            found = f"{first.get('found', 0)} ({first.get('found_share', 0):.0%})"
            lines.append(f"| {r['order']} | {budget:.0%} | {r95} | {found} | {ratio} |")
    lines += ["", "Label accuracy after each round (reviewed share -> accuracy):", ""]
    for budget in budgets:
        for r in [x for x in report["runs"] if math.isclose(x["budget"], budget)]:
            steps = ", ".join(f"{e['reviewed_share']:.0%}: {e['accuracy']:.1%}" for e in r["rounds"])
            lines.append(f"- {r['order']}, {budget:.0%} per round: {steps}")
    if png_name:
        lines += ["", f"![label accuracy against the share of items reviewed]({png_name})"]
    return "\n".join(lines) + "\n"


def plot(report: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets = sorted({r["budget"] for r in report["runs"]})
    fig, axes = plt.subplots(1, len(budgets), figsize=(4.5 * len(budgets), 3.6), squeeze=False)
    for ax, budget in zip(axes[0], budgets, strict=True):
        for r in [x for x in report["runs"] if math.isclose(x["budget"], budget)]:
            xs = [100 * e["reviewed_share"] for e in r["rounds"]]
            ys = [100 * e["accuracy"] for e in r["rounds"]]
            ax.plot(xs, ys, marker="o", label=r["order"])
        ax.axhline(100 * TARGET, color="grey", linestyle="--", linewidth=0.8)
        ax.set_title(f"{budget:.0%} of the items per round")
        ax.set_xlabel("items reviewed (%)")
        ax.set_ylabel("labels right (%)")
        ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def run_cifar10(
    *,
    backbone: str,
    cifar10_path: Path,
    cache_dir: Path | None,
    feature_dir: Path,
    per_class: int,
    q: float,
    views: int,
    budgets: Sequence[float],
    max_share: float,
    seed: int,
    out_dir: Path,
    command: str,
    log: Callable[[str], None] = print,
) -> dict:
    """The benchmark on CIFAR-10's train split: per_class images per class, symmetric candidate sets at q."""
    from bench.data import load_cifar10, partialize
    from ml.backbone import load_backbone
    from ml.features import FeatureCache, encode_images
    from ml.pipeline import encoded_views
    from ml.train import TrainConfig

    bb = load_backbone(backbone, device="cpu", cache_dir=cache_dir)
    data = load_cifar10(cifar10_path, "train", per_class=per_class, seed=seed)
    k = len(data.classnames)
    cands = partialize(data.labels, k, q, seed)
    params = default_params(len(data), k)
    v = encoded_views(views, TrainConfig(method=params["method"], loss=params["loss"]))
    log(f"encoding {len(data)} images x {v} views with {bb.id}")
    feats = encode_images(bb, data.images, shas=data.shas, views=v, cache=FeatureCache(feature_dir), seed=0)
    setting = ReviewSetting(feats, cands, data.labels, list(data.classnames))
    extra = {"backbone": bb.id, "q": q, "per_class": per_class, "views": v, "command": command}
    out_dir.mkdir(parents=True, exist_ok=True)

    def save(so_far: dict) -> None:  # after every simulation: a stopped run keeps what it measured
        (out_dir / "review.json").write_text(json.dumps({**so_far, **extra}, indent=2))

    report = run(bb, setting, budgets=budgets, max_share=max_share, seed=seed, params=params, log=log, on_run=save)
    report.update(extra)
    save(report)
    plot(report, out_dir / "review.png")
    (out_dir / "review.md").write_text(report_md(report, command, "review.png"))
    return report

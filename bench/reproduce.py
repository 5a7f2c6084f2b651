"""`tagsift bench reproduce`: the arXiv 2407.07638 grid on CIFAR-10 with cached features (pure ml, no app/worker).

Every cell (regime, method, q, seed) trains once on cached features with `ml.train.fit` and writes
``<out>/cells/<regime>__<method>__q<q>__s<seed>.json`` (metrics) and ``.pt`` (the deployable classifier), so a run
can stop at any time, resume (`resume=True` skips finished cells) and be re-evaluated on more test images later
(`reevaluate`). `write_report` turns the JSON files into markdown tables and a PNG plot.

Metrics per cell: test accuracy (argmax over all classes, no candidates), training-set disambiguation accuracy
(argmax over each item's own candidates, against the hidden true labels), validation accuracy (clean held-out
split of the train set, bench.data) and, for prompt methods, the same after ensembling the learned and the
handcrafted logits at inference ((1 - b) z + b z~, "ens b").
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from bench.data import Split

PLL_LOSSES = ("cc", "rc", "lws", "cavl", "plcr", "pico")
ENS_BETAS = (0.25, 0.5)
LP_LR_GRID = (25.0, 5.0, 1.0, 0.25, 0.05, 0.01)
MIX_ALPHA = 0.5  # the "mixed" teacher: ramp of the learned posterior's weight from 0 to 0.5 (method.md 6.1)


@dataclass(frozen=True)
class MethodSpec:
    name: str
    method: str  # TrainConfig.method
    loss: str = "rc"
    mix: str = "none"
    templates: tuple[str, ...] | None = None  # None: the single default template
    supervised: bool = False  # q = 0 (true labels as singleton candidate sets)
    knn: bool = False  # prune candidate sets by neighbourhood voting first (ml.knn_vote)
    group: str = "paper"  # "paper" | "beyond"
    label: str = ""
    extra: tuple[tuple[str, object], ...] = ()  # further TrainConfig fields (aligned head: mix, graph, ...)
    epochs: int | None = None  # None: the grid's epochs for the method's kind
    lr: float | None = None  # None: 0.002 for prompts, the validated LP lr for heads

    @property
    def prompt(self) -> bool:
        return self.method in ("coop", "prompt_alignment")


def method_table() -> dict[str, MethodSpec]:
    """All methods, in table order."""
    from ml.prompts import ENSEMBLE_TEMPLATES

    specs = [MethodSpec("zs", "zero_shot", label="zero-shot (a photo of a {}.)")]
    for loss in PLL_LOSSES:
        specs.append(MethodSpec(f"coop-{loss}", "coop", loss, label=f"CoOp + {loss.upper()}"))
    for loss in PLL_LOSSES:
        specs.append(MethodSpec(f"pa-{loss}", "prompt_alignment", loss, label=f"PA (a=0) + {loss.upper()}"))
    for loss in PLL_LOSSES:
        specs.append(
            MethodSpec(f"pamix-{loss}", "prompt_alignment", loss, mix="ramp", label=f"PA mixed + {loss.upper()}")
        )
    specs += [
        MethodSpec("lp-cc", "linear_probe", "cc", label="linear probe + CC"),
        MethodSpec("lp-rc", "linear_probe", "rc", label="linear probe + RC"),
        MethodSpec("sup-coop", "coop", "rc", supervised=True, label="CoOp, true labels (q=0)"),
        MethodSpec("sup-lp", "linear_probe", "rc", supervised=True, label="linear probe, true labels (q=0)"),
        MethodSpec(
            "zs-ens", "zero_shot", templates=ENSEMBLE_TEMPLATES, group="beyond", label="zero-shot, 8-template ensemble"
        ),
        MethodSpec("knn-lp-rc", "linear_probe", "rc", knn=True, group="beyond", label="kNN-pruned sets, LP + RC"),
        MethodSpec("knn-coop-rc", "coop", "rc", knn=True, group="beyond", label="kNN-pruned sets, CoOp + RC"),
        MethodSpec("knn-pa-rc", "prompt_alignment", "rc", knn=True, group="beyond", label="kNN-pruned sets, PA + RC"),
        MethodSpec(
            "paens-rc",
            "prompt_alignment",
            "rc",
            templates=ENSEMBLE_TEMPLATES,
            group="beyond",
            label="PA + RC, 8-template ensemble teacher",
        ),
        MethodSpec(
            "lp-rc-g",
            "linear_probe",
            "rc",
            group="method",
            label="LP + RC, graph 0.5",
            extra=(("graph_weight", 0.5),),
        ),
    ]
    return {s.name: s for s in specs}


#: Aligned-head configurations (issue 12 item 4) are named, not listed:
#: "ah-<teacher>[-g<w>][-k<k>]-p<s>-lr<lr>[-e<epochs>][-ens][-knn]". Teacher "a0" = the calibrated prior (the
#: paper's a = 0), "trust" = a = 1 - trust (ml.prior), "self" = a = 1 (the head's own posterior: RC on the
#: prior-initialised head); g = graph weight (RC confidences propagated over the kNN feature graph, k neighbours),
#: p = prior strength, e = epochs, ens = the 8-template prior, knn = candidate sets pruned by neighbour voting first.
AH_EPOCHS = 50
_TEACHERS = {"a0": (("mix", "none"),), "trust": (("mix", "trust"),), "self": (("mix", "constant"), ("mix_alpha", 1.0))}


def aligned_head_spec(name: str) -> MethodSpec | None:
    """The MethodSpec an "ah-..." name stands for (see above), or None when the name does not parse."""
    from ml.prompts import ENSEMBLE_TEMPLATES

    parts = name.split("-")
    if len(parts) < 4 or parts[0] != "ah" or parts[1] not in _TEACHERS:
        return None
    fields = {"g": 0.0, "k": 10.0, "p": None, "lr": None, "e": float(AH_EPOCHS)}
    ens = knn = False
    for part in parts[2:]:
        if part in ("ens", "knn"):
            ens, knn = ens or part == "ens", knn or part == "knn"
            continue
        key = "lr" if part.startswith("lr") else part[:1]
        if key not in fields:
            return None
        try:
            fields[key] = float(part[len(key) :])
        except ValueError:
            return None
    if fields["p"] is None or fields["lr"] is None:
        return None
    extra = (*_TEACHERS[parts[1]], ("graph_weight", fields["g"]), ("graph_k", int(fields["k"])))
    return MethodSpec(
        name,
        "aligned_head",
        "rc",
        templates=ENSEMBLE_TEMPLATES if ens else None,
        knn=knn,
        group="method",
        label=f"aligned head ({name})",
        extra=(*extra, ("prior_strength", fields["p"])),
        epochs=int(fields["e"]),
        lr=fields["lr"],
    )


def lookup(names: Sequence[str] | None) -> dict[str, MethodSpec]:
    """method_table() plus the aligned-head configurations named in ``names``."""
    table = method_table()
    for name in names or ():
        spec = aligned_head_spec(name) if name not in table else None
        if spec is not None:
            table[name] = spec
    return table


QUICK_METHODS = ("zs", "lp-rc", "coop-rc", "pa-rc", "knn-pa-rc")
LARGE_METHODS = ("zs", "zs-ens", "lp-rc", "knn-lp-rc", "coop-rc", "pa-rc", "knn-pa-rc")


@dataclass
class BenchData:
    backbone: object
    classnames: tuple[str, ...]
    fewshot: Callable[[int], Split]  # seed -> training split (views 0 + augmented)
    val: Split
    test: Split | None
    large: Callable[[], Split] | None = None
    dataset: str = "cifar10"
    protocol: str = "uniform"  # candidate sets: "uniform" (bench.data.partialize) | "instance" (partialize_instance)
    templates: tuple[str, ...] | None = None  # the dataset's handcrafted template (None: the default)
    confusion: Callable[[Split], torch.Tensor] | None = None  # instance protocol: (N, K) confuser posteriors
    confuser_split: Callable[[], Split] | None = None  # the split the confuser learns from (true labels)

    def candidates(self, split: Split, q: float, seed: int) -> torch.Tensor:
        """(N, K) candidate sets of ``split`` under this bench's protocol (seeded)."""
        from bench.data import partialize, partialize_instance

        if self.protocol == "instance" and q > 0:
            return partialize_instance(split.labels, self.confusion(split), q, seed)
        return partialize(split.labels, len(self.classnames), q, seed)


@dataclass
class GridConfig:
    out_dir: Path
    qs: Sequence[float] = (0.1, 0.3, 0.5, 0.7)
    seeds: Sequence[int] = (1, 2, 3, 4)
    epochs: int = 100  # prompt methods, few-shot regime
    lp_epochs: int = 100  # linear probe (cheap)
    large_epochs: int = 2
    large_qs: Sequence[float] = (0.3,)
    large_seeds: Sequence[int] = (1,)
    methods: Sequence[str] | None = None  # None: all (few-shot); LARGE_METHODS for the large regime
    regime: str = "fewshot"  # "fewshot" | "large" | "both"
    resume: bool = True
    knn_k: int = 10
    knn_tau: float = 0.5
    commit: str = ""
    extra: dict = field(default_factory=dict)  # recorded in every cell (e.g. the command line)


def cell_name(regime: str, method: str, q: float, seed: int) -> str:
    return f"{regime}__{method}__q{q:g}__s{seed}"


def _accuracy(pred: torch.Tensor, labels: torch.Tensor) -> float:
    return float((pred.cpu() == labels.cpu()).float().mean()) if len(labels) else float("nan")


def _eval(features: torch.Tensor, cls: torch.Tensor, scale: float, bias, labels, candidates=None) -> float:
    from ml.train import disambiguate

    pred, _, _ = disambiguate(features, cls, scale, candidates, bias)
    return _accuracy(pred, labels)


def hand_features(backbone, classnames: Sequence[str], templates: Sequence[str] | None = None) -> torch.Tensor:
    from ml.ensemble import handcrafted_features
    from ml.prompts import DEFAULT_TEMPLATE

    return handcrafted_features(backbone, classnames, templates or (DEFAULT_TEMPLATE,))


def select_lp_lr(data: BenchData, cfg: GridConfig, log: Callable[[str], None]) -> float:
    """The official LP recipe picks the LR on seed 1 (method.md 2.4); here on the validation split, LP + RC, q=0.3."""
    from ml.train import TrainConfig, fit

    path = cfg.out_dir / "lp_lr.json"
    if path.is_file():
        return float(json.loads(path.read_text())["lr"])
    train = data.fewshot(1)
    mask = data.candidates(train, 0.3, 1)
    scores = {}
    for lr in LP_LR_GRID:
        res = fit(
            data.backbone,
            train.features,
            mask,
            data.classnames,
            TrainConfig(method="linear_probe", loss="rc", epochs=cfg.lp_epochs, lr=lr, seed=1),
        )
        scores[lr] = _eval(data.val.features[0], res.class_features, res.logit_scale, res.class_bias, data.val.labels)
        log(f"  LP lr {lr:g}: val {scores[lr]:.4f}")
    best = max(scores, key=lambda k: (scores[k], -k))
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"lr": best, "val_acc": {str(k): v for k, v in scores.items()}}, indent=1))
    return best


KNN_GRID = ((5, 0.5), (5, 0.75), (10, 0.5), (10, 0.75))


def select_knn(data: BenchData, cfg: GridConfig, lp_lr: float, log: Callable[[str], None]) -> tuple[int, float]:
    """(k, tau) of the neighbourhood-vote pruning, chosen on the validation split with LP + RC (seed 1, q 0.3 and
    0.7, mean validation accuracy); cached in <out>/knn.json. Sets cfg.knn_k / cfg.knn_tau."""
    from ml.knn_vote import prune_candidates
    from ml.train import TrainConfig, fit

    path = cfg.out_dir / "knn.json"
    if path.is_file():
        best = json.loads(path.read_text())["best"]
    else:
        train = data.fewshot(1)
        scores = {}
        for k, tau in KNN_GRID:
            accs = []
            for q in (0.3, 0.7):
                mask = prune_candidates(train.features[0], data.candidates(train, q, 1), k, tau)
                tc = TrainConfig(method="linear_probe", loss="rc", epochs=cfg.lp_epochs, lr=lp_lr, seed=1)
                res = fit(data.backbone, train.features, mask, data.classnames, tc)
                accs.append(
                    _eval(data.val.features[0], res.class_features, res.logit_scale, res.class_bias, data.val.labels)
                )
            scores[f"{k},{tau}"] = sum(accs) / len(accs)
            log(f"  kNN k={k} tau={tau}: val {scores[f'{k},{tau}']:.4f}")
        best = max(scores, key=scores.get)
        cfg.out_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"best": best, "val_acc": scores}, indent=1))
    k, tau = best.split(",")
    cfg.knn_k, cfg.knn_tau = int(k), float(tau)
    return cfg.knn_k, cfg.knn_tau


def run_cell(
    data: BenchData,
    spec: MethodSpec,
    q: float,
    seed: int,
    regime: str,
    cfg: GridConfig,
    lp_lr: float,
    hand: torch.Tensor,
) -> dict:
    """Train and evaluate one cell; returns the record (also written to disk)."""
    from ml.knn_vote import prune_candidates
    from ml.train import TrainConfig, fit

    train = data.fewshot(seed) if regime == "fewshot" else data.large()
    q_eff = 0.0 if spec.supervised else q
    mask = data.candidates(train, q_eff, seed)
    record: dict = {"regime": regime, "method": spec.name, "q": q_eff, "seed": seed, "n_train": len(train.labels)}
    record.update(dataset=data.dataset, protocol=data.protocol)
    record["mean_set_size"] = float(mask.float().sum(1).mean())
    if spec.knn:
        pruned = prune_candidates(train.features[0], mask, cfg.knn_k, cfg.knn_tau)
        record["knn"] = {
            "k": cfg.knn_k,
            "tau": cfg.knn_tau,
            "mean_set_size": float(pruned.float().sum(1).mean()),
            "true_label_kept": float(pruned[torch.arange(len(mask)), train.labels].float().mean()),
        }
        mask = pruned
    head = spec.method in ("linear_probe", "aligned_head")
    epochs = spec.epochs or (cfg.lp_epochs if head else (cfg.epochs if regime == "fewshot" else cfg.large_epochs))
    tc = TrainConfig(
        method=spec.method,
        loss=spec.loss,
        epochs=epochs,
        seed=seed,
        mix=spec.mix,
        mix_alpha=MIX_ALPHA,
        lr=spec.lr or (lp_lr if head else 0.002),
    )
    for key, value in spec.extra:
        setattr(tc, key, value)
    if spec.templates or data.templates:
        tc.templates = tuple(spec.templates or data.templates)
    t0 = time.perf_counter()
    res = fit(data.backbone, train.features, mask, data.classnames, tc)
    record["wall_s"] = time.perf_counter() - t0
    record["prior"] = res.prior
    record["epochs"] = 0 if spec.method == "zero_shot" else epochs
    record["config"] = asdict(tc)
    # disambiguation: labels of the training items within their *original* candidate sets' pruned version
    record["disamb_acc"] = _accuracy(res.labels, train.labels)
    cls, scale, bias = res.class_features, res.logit_scale, res.class_bias
    val_mask = data.candidates(data.val, q_eff, 1000 + seed)
    record["val_acc"] = _eval(data.val.features[0], cls, scale, bias, data.val.labels)
    record["val_disamb_acc"] = _eval(data.val.features[0], cls, scale, bias, data.val.labels, val_mask)
    classifier = {"class_features": cls, "logit_scale": scale, "bias": bias, "ens": {}}
    record["ens"] = {}
    if spec.prompt:
        for b in ENS_BETAS:
            c_ens = (1 - b) * cls + b * hand
            classifier["ens"][str(b)] = c_ens
            record["ens"][str(b)] = {
                "val_acc": _eval(data.val.features[0], c_ens, scale, None, data.val.labels),
                "disamb_acc": _eval(train.features[0], c_ens, scale, None, train.labels, mask),
            }
    record.update(cfg.extra)
    record["commit"] = cfg.commit
    _evaluate_test(record, classifier, data.test)
    name = cell_name(regime, spec.name, q_eff, seed)
    cells = cfg.out_dir / "cells"
    cells.mkdir(parents=True, exist_ok=True)
    torch.save(classifier, cells / f"{name}.pt")
    _write_json(cells / f"{name}.json", record)
    return record


def _evaluate_test(record: dict, classifier: dict, test: Split | None) -> None:
    if test is None or len(test.labels) == 0:
        return
    f = test.features[0]
    record["test_n"] = len(test.labels)
    record["test_acc"] = _eval(
        f, classifier["class_features"], classifier["logit_scale"], classifier["bias"], test.labels
    )
    for b, c_ens in classifier.get("ens", {}).items():
        record["ens"][b]["test_acc"] = _eval(f, c_ens, classifier["logit_scale"], None, test.labels)


def _write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=float))
    tmp.replace(path)


def reevaluate(out_dir: Path, test: Split, log: Callable[[str], None] = print) -> int:
    """Recompute the test metrics of every cell evaluated on fewer test images than `test` has."""
    n = 0
    for js in sorted((Path(out_dir) / "cells").glob("*.json")):
        record = json.loads(js.read_text())
        pt = js.with_suffix(".pt")
        if record.get("test_n", 0) >= len(test.labels) or not pt.is_file():
            continue
        _evaluate_test(record, torch.load(pt, weights_only=False), test)
        _write_json(js, record)
        n += 1
    log(f"re-evaluated {n} cells on {len(test.labels)} test images")
    return n


def posthoc_ensembles(out_dir: Path, data: BenchData, log: Callable[[str], None] = print) -> int:
    """Inference ensemble with the 8-template handcrafted classifier ("ens8", beyond the paper), from the saved
    classifiers of the prompt cells: (1 - b) z + b z~8 for b in ENS_BETAS; validation, disambiguation, test."""
    from ml.knn_vote import prune_candidates
    from ml.prompts import ENSEMBLE_TEMPLATES

    table = method_table()
    hand8 = hand_features(data.backbone, data.classnames, ENSEMBLE_TEMPLATES)
    n_test = len(data.test.labels) if data.test is not None else 0
    n = 0
    for js in sorted((Path(out_dir) / "cells").glob("*.json")):
        rec = json.loads(js.read_text())
        spec = table.get(rec["method"]) or aligned_head_spec(rec["method"])
        if spec is None or spec.method == "zero_shot" or (rec["regime"] == "large" and data.large is None):
            continue
        if rec.get("ens8_test_n", -1) >= n_test:
            continue
        clf = torch.load(js.with_suffix(".pt"), weights_only=False)
        train = data.fewshot(rec["seed"]) if rec["regime"] == "fewshot" else data.large()
        mask = data.candidates(train, rec["q"], rec["seed"])
        if spec.knn:
            mask = prune_candidates(train.features[0], mask, rec["knn"]["k"], rec["knn"]["tau"])
        scale, bias = clf["logit_scale"], clf["bias"]
        # linear probe (scale 1, bias): the handcrafted logits s·<f, t~8> enter as s·t~8 rows, the bias is shrunk
        hand_rows = hand8 if spec.prompt else hand8 * float(data.backbone.model.logit_scale.exp())
        rec["ens8"] = {}
        for b in ENS_BETAS:
            c = (1 - b) * clf["class_features"] + b * hand_rows
            cb = None if bias is None else (1 - b) * bias
            rec["ens8"][str(b)] = {
                "val_acc": _eval(data.val.features[0], c, scale, cb, data.val.labels),
                "disamb_acc": _eval(train.features[0], c, scale, cb, train.labels, mask),
            }
            if n_test:
                rec["ens8"][str(b)]["test_acc"] = _eval(data.test.features[0], c, scale, cb, data.test.labels)
        rec["ens8_test_n"] = n_test
        _write_json(js, rec)
        n += 1
    log(f"inference ensembles (8 templates) for {n} cells")
    return n


def plan(cfg: GridConfig, regime: str) -> list[tuple[str, float, int]]:
    """(method, q, seed) in run order: cheap methods first, q 0.3, 0.7, 0.1, 0.5, seeds in pairs (tables early)."""
    table = lookup(cfg.methods)
    if regime == "large":
        names = [m for m in (cfg.methods or LARGE_METHODS) if m in table]
        qs, seeds = list(cfg.large_qs), list(cfg.large_seeds)
    else:
        names = [m for m in (cfg.methods or table) if m in table]
        qs, seeds = list(cfg.qs), list(cfg.seeds)
    cheap = [m for m in names if not table[m].prompt]
    names = cheap + [m for m in names if table[m].prompt]
    first = (0.3, 0.7, 0.1, 0.5)  # the likeliest paper columns first, then the extremes
    qs = sorted(qs, key=lambda x: (min((i for i, f in enumerate(first) if abs(x - f) < 1e-9), default=len(first)), x))
    out: list[tuple[str, float, int]] = []
    seen = set()
    for block in [seeds[i : i + 2] for i in range(0, len(seeds), 2)]:
        for q in qs:
            for m in names:
                for s in block:
                    key = (m, 0.0 if table[m].supervised else q, s)
                    if key not in seen:
                        seen.add(key)
                        out.append(key)
    return out


def run_grid(data: BenchData, cfg: GridConfig, log: Callable[[str], None] = print) -> list[dict]:
    """Run every planned cell not already on disk (when resume); returns the new records."""
    table = lookup(cfg.methods)
    regimes = ["fewshot", "large"] if cfg.regime == "both" else [cfg.regime]
    lp_lr = select_lp_lr(data, cfg, log)
    log(f"linear-probe lr (chosen on validation): {lp_lr:g}")
    if any(table[m].knn for m in (cfg.methods or table) if m in table):
        log(f"kNN pruning (chosen on validation): k={select_knn(data, cfg, lp_lr, log)}")
    hand = hand_features(data.backbone, data.classnames, data.templates)
    records = []
    for regime in regimes:
        if regime == "large" and data.large is None:
            log("large regime: no data, skipped")
            continue
        cells = plan(cfg, regime)
        for i, (m, q, s) in enumerate(cells):
            path = cfg.out_dir / "cells" / f"{cell_name(regime, m, q, s)}.json"
            if cfg.resume and path.is_file():
                continue
            rec = run_cell(data, table[m], q, s, regime, cfg, lp_lr, hand)
            records.append(rec)
            log(
                f"[{regime} {i + 1}/{len(cells)}] {m} q={q:g} seed={s}: test {rec.get('test_acc', float('nan')):.4f}"
                f" val {rec['val_acc']:.4f} disamb {rec['disamb_acc']:.4f} ({rec['wall_s']:.1f} s)"
            )
    return records


# --- report ------------------------------------------------------------------------------------------------------

GEN_BEGIN = "<!-- generated by `tagsift bench reproduce --report-only`: begin -->"
GEN_END = "<!-- generated: end -->"


def load_cells(out_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((Path(out_dir) / "cells").glob("*.json"))]


def _ms(values: list[float]) -> str:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return "-"
    m = sum(vals) / len(vals)
    sd = (sum((v - m) ** 2 for v in vals) / (len(vals) - 1)) ** 0.5 if len(vals) > 1 else 0.0
    return f"{100 * m:.1f} ± {100 * sd:.1f} ({len(vals)})"


def _mean(values: list[float]) -> float:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return sum(vals) / len(vals) if vals else float("nan")


def _group(cells: list[dict], regime: str) -> dict[tuple[str, float], list[dict]]:
    out: dict[tuple[str, float], list[dict]] = {}
    for c in cells:
        if c["regime"] == regime:
            out.setdefault((c["method"], c["q"]), []).append(c)
    return out


def _metric(c: dict, key: str):
    parts = key.split(":")  # "val_acc" | "ens:0.5:val_acc" | "ens8:0.5:test_acc"
    if len(parts) == 3:
        return c.get(parts[0], {}).get(parts[1], {}).get(parts[2])
    return c.get(key)


def table_md(cells: list[dict], regime: str, key: str) -> str:
    """Markdown table: one row per method, one column per q; mean ± std (number of seeds)."""
    groups = _group(cells, regime)
    if not groups:
        return "_no cells_\n"
    qs = sorted({q for _, q in groups})
    specs = method_table()
    names = [m for m in specs if any(g[0] == m for g in groups)]
    lines = ["| method | " + " | ".join(f"q={q:g}" for q in qs) + " |", "|---" * (len(qs) + 1) + "|"]
    for m in names:
        row = [_ms([_metric(c, key) for c in groups.get((m, q), [])]) if (m, q) in groups else "" for q in qs]
        if any(r not in ("", "-") for r in row):
            lines.append(f"| {specs[m].label or m} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def wall_md(cells: list[dict], regime: str) -> str:
    specs = method_table()
    by: dict[str, list[dict]] = {}
    for c in cells:
        if c["regime"] == regime:
            by.setdefault(c["method"], []).append(c)
    lines = ["| method | epochs | runs | s / run (mean) | total s |", "|---|---|---|---|---|"]
    total = 0.0
    for m in specs:
        if m in by:
            w = [c["wall_s"] for c in by[m]]
            total += sum(w)
            lines.append(
                f"| {specs[m].label or m} | {by[m][0]['epochs']} | {len(w)} | {sum(w) / len(w):.1f} | {sum(w):.0f} |"
            )
    lines.append(f"| **all** | | {sum(len(v) for v in by.values())} | | {total:.0f} |")
    return "\n".join(lines) + "\n"


def candidates_for_default(cells: list[dict], regime: str = "fewshot") -> list[tuple[float, str, str]]:
    """(mean validation accuracy over all partial q and seeds, method, variant), best first.

    Variants: "" (the learned classifier) and "ens b" (learned + handcrafted logits at inference). Only methods
    measured at every partial q of the grid compete (a fair average); supervised references are excluded.
    """
    groups = _group(cells, regime)
    qs = sorted({q for _, q in groups if q > 0})
    specs = method_table()
    out = []
    for m in specs:
        if specs[m].supervised or not all((m, q) in groups for q in qs):
            continue
        cs = [c for q in qs for c in groups[(m, q)]]
        out.append((_mean([c["val_acc"] for c in cs]), m, ""))
        if specs[m].method != "zero_shot":
            for kind, what in (("ens", "+ handcrafted"), ("ens8", "+ 8-template handcrafted")):
                if kind == "ens" and not specs[m].prompt:
                    continue
                for b in ENS_BETAS:
                    out.append((_mean([_metric(c, f"{kind}:{b}:val_acc") for c in cs]), m, f"{what}, b={b}"))
    return sorted(out, key=lambda t: -t[0] if not math.isnan(t[0]) else 1.0)


def plot(cells: list[dict], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = _group(cells, "fewshot")
    specs = method_table()
    panels = [
        ("CoOp + PLL", "coop-"),
        ("prompt alignment (a=0) + PLL", "pa-"),
        ("prompt alignment, mixed", "pamix-"),
        ("linear probe, zero-shot, beyond the paper", None),
    ]
    fig, axes = plt.subplots(1, 4, figsize=(20, 4.8), sharey=True)
    for ax, (title, prefix) in zip(axes, panels, strict=True):
        names = [
            m
            for m in specs
            if (
                m.startswith(prefix)
                if prefix
                else (specs[m].method in ("linear_probe", "zero_shot") or specs[m].group == "beyond")
            )
        ]
        names = [m for m in names if not specs[m].supervised] + (["zs"] if prefix else [])
        for m in dict.fromkeys(names):
            pts = sorted((q, _mean([c.get("test_acc") for c in groups[(m, q)]])) for (mm, q) in groups if mm == m)
            pts = [(q, v) for q, v in pts if not math.isnan(v)]
            if pts:
                ax.plot(
                    [p[0] for p in pts],
                    [100 * p[1] for p in pts],
                    marker="o",
                    linestyle="--" if m.startswith("zs") else "-",
                    label=specs[m].label or m,
                )
        for m, style in (("sup-coop", ":"), ("sup-lp", "-.")):
            sup = [c.get("test_acc") for (mm, q), cs in groups.items() if mm == m for c in cs]
            if sup and (prefix or m == "sup-lp"):
                ax.axhline(100 * _mean(sup), color="grey", linestyle=style, label=specs[m].label)
        ax.set_title(title)
        ax.set_xlabel("partial rate q")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("test accuracy (%), effnetlite0-minilm, CIFAR-10 16-shot")
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)


def generated_md(cells: list[dict], png_name: str) -> str:
    parts = []
    commits = sorted({c.get("commit", "") for c in cells} - {""})
    test_n = sorted({c.get("test_n", 0) for c in cells})
    parts.append(
        f"Cells: {len(cells)}. Commit(s) the runs used: {', '.join(commits) or 'unknown'}. "
        f"Test images per evaluation: {', '.join(map(str, test_n))}.\n"
    )
    for regime, title in (
        ("fewshot", "Few-shot regime (16 images per class)"),
        ("large", "Large regime (500 images per class)"),
    ):
        if not any(c["regime"] == regime for c in cells):
            continue
        n_train = sorted({c["n_train"] for c in cells if c["regime"] == regime})
        parts.append(f"### {title}\n\nTraining images per run: {', '.join(map(str, n_train))}.\n")
        for key, what in (
            ("test_acc", "Test accuracy (%), full CIFAR-10 test set, mean ± std (seeds)"),
            ("disamb_acc", "Training-set disambiguation accuracy (%)"),
            ("val_acc", "Validation accuracy (%) (the selection metric)"),
            ("ens8:0.5:test_acc", "Test accuracy (%), learned + 8-template handcrafted logits, b = 0.5 (beyond)"),
            ("ens8:0.5:val_acc", "Validation accuracy (%), learned + 8-template handcrafted logits, b = 0.5"),
            ("ens8:0.5:disamb_acc", "Disambiguation accuracy (%), learned + 8-template handcrafted, b = 0.5"),
            ("ens:0.5:val_acc", "Validation accuracy (%), learned + single-template handcrafted, b = 0.5"),
        ):
            parts.append(f"#### {what}\n\n" + table_md(cells, regime, key))
        parts.append(
            "#### Wall time (training + evaluation of one cell, 2 shared CPU cores)\n\n" + wall_md(cells, regime)
        )
        knn = [c for c in cells if c["regime"] == regime and "knn" in c]
        if knn:
            rows = ["| q | mean set size before | after | true label kept |", "|---|---|---|---|"]
            for q in sorted({c["q"] for c in knn}):
                cs = [c for c in knn if c["q"] == q]
                rows.append(
                    f"| {q:g} | {_mean([c['mean_set_size'] for c in cs]):.2f} | "
                    f"{_mean([c['knn']['mean_set_size'] for c in cs]):.2f} | "
                    f"{100 * _mean([c['knn']['true_label_kept'] for c in cs]):.1f}% |"
                )
            parts.append("#### Neighbourhood-vote pruning of the candidate sets\n\n" + "\n".join(rows) + "\n")
    specs = method_table()
    for regime in ("fewshot", "large"):
        ranking = candidates_for_default(cells, regime)
        if not ranking:
            continue
        rows = ["| rank | method | inference | mean validation accuracy (all q, seeds) |", "|---|---|---|---|"]
        for i, (v, m, var) in enumerate(ranking[:12]):
            rows.append(f"| {i + 1} | {specs[m].label or m} | {var or 'learned classifier'} | {100 * v:.1f} |")
        parts.append(
            f"### Selection of the service default, {regime} regime (validation split, never test)\n\n"
            + "\n".join(rows)
            + "\n"
        )
    parts.append(f"![test accuracy against q]({png_name})\n")
    return "\n".join(parts)


def write_report(out_dir: Path, md_path: Path, png_path: Path) -> str:
    """Write the PNG and the generated block of `md_path` (hand-written text outside the markers is kept)."""
    cells = load_cells(out_dir)
    plot(cells, png_path)
    block = f"{GEN_BEGIN}\n{generated_md(cells, png_path.name)}\n{GEN_END}"
    md_path.parent.mkdir(parents=True, exist_ok=True)
    if md_path.is_file() and GEN_BEGIN in md_path.read_text():
        text = md_path.read_text()
        head, rest = text.split(GEN_BEGIN, 1)
        tail = rest.split(GEN_END, 1)[1] if GEN_END in rest else ""
        text = head + block + tail
    else:
        text = f"# Benchmark results\n\n{block}\n"
    md_path.write_text(text)
    return text


# --- real data ---------------------------------------------------------------------------------------------------


def cached_split(backbone, image_set, rows: torch.Tensor, feature_dir: str | Path) -> Split:
    """View-0 features of the rows already in the cache (nothing is encoded)."""
    from ml.features import FeatureCache

    cache = FeatureCache(feature_dir)
    keep, feats = [], []
    for r in rows.tolist():
        f = cache.get(backbone.id, image_set.shas[r], 0)
        if f is not None and f.numel() == backbone.embed_dim:
            keep.append(r)
            feats.append(f)
    keep_t = torch.tensor(keep, dtype=torch.long)
    x = torch.stack(feats).unsqueeze(0) if feats else torch.zeros(1, 0, backbone.embed_dim)
    return Split(x, image_set.labels[keep_t].clone() if keep else torch.zeros(0, dtype=torch.long), keep_t)


def load_bench_data(
    cifar10_path: str | Path,
    model_cache_dir: str | Path,
    feature_dir: str | Path,
    *,
    seeds: Sequence[int],
    regime: str,
    quick: bool = False,
    test_cached_only: bool = False,
    dataset: str = "cifar10",
    protocol: str = "uniform",
    log: Callable[[str], None] = print,
) -> BenchData:
    """Load the reference backbone and the dataset, encode (or read from the cache) every split the grid needs.

    ``dataset``: "cifar10" or "digits" (scikit-learn's, bench.data); ``protocol``: "uniform" or "instance"
    candidate sets (the instance protocol's confuser is a linear probe trained with true labels on a disjoint split).
    """
    from ml.backbone import load_backbone

    if dataset not in ("cifar10", "digits") or protocol not in ("uniform", "instance"):
        raise ValueError(f"dataset {dataset!r} / protocol {protocol!r}: expected cifar10|digits, uniform|instance")
    backbone = load_backbone("reference", cache_dir=model_cache_dir)
    log(f"backbone {backbone.id}")
    if dataset == "digits":
        data = _digits_data(backbone, feature_dir, log)
    else:
        data = _cifar10_data(backbone, cifar10_path, feature_dir, regime, quick, test_cached_only, log)
    data.protocol = protocol
    if protocol == "instance":
        data.confusion = _confuser(backbone, data, data.confuser_split(), log)
    return data


def _cifar10_data(backbone, cifar10_path, feature_dir, regime: str, quick: bool, test_cached_only: bool, log):
    from bench import data as D
    from bench.data import load_cifar10

    train = load_cifar10(cifar10_path, "train")
    test = load_cifar10(cifar10_path, "test")
    views = 1 + D.FEWSHOT_AUG_VIEWS
    memo: dict[int, Split] = {}

    def fewshot(seed: int) -> Split:
        if seed not in memo:
            memo[seed] = D.encode_rows(backbone, train, D.fewshot_rows(train.labels, seed), views, feature_dir, log)
        return memo[seed]

    val = D.encode_rows(backbone, train, D.val_rows(train.labels), 1, feature_dir, log)
    order = D.test_order(len(test))
    if quick:
        order = order[:1000]
    if test_cached_only:
        test_split = cached_split(backbone, test, order, feature_dir)
        log(f"test: {len(test_split.labels)} cached images")
    else:
        log(f"test: encoding / reading {len(order)} images")
        test_split = D.encode_rows(backbone, test, order, 1, feature_dir, log)
    large = None
    if regime in ("large", "both"):
        large_memo: list[Split] = []

        def large() -> Split:
            if not large_memo and test_cached_only:  # the encoded part of the large set only (see the report)
                large_memo.append(cached_split(backbone, train, D.large_rows(train.labels), feature_dir))
                log(f"large: {len(large_memo[0].labels)} cached images")
            if not large_memo:
                large_memo.append(
                    D.encode_rows(backbone, train, D.large_rows(train.labels), 1 + D.LARGE_AUG_VIEWS, feature_dir, log)
                )
            return large_memo[0]

    data = BenchData(backbone, tuple(train.classnames), fewshot, val, test_split, large)
    data.confuser_split = lambda: D.encode_rows(backbone, train, D.confuser_rows(train.labels), 1, feature_dir, log)
    return data


def _digits_data(backbone, feature_dir, log) -> BenchData:
    """scikit-learn's digits (bench.data): few-shot 16 per class and "large" = the whole training pool. One (clean)
    view per image, no augmented views (the CPU budget of the run that measured it; docs/results.md)."""
    from bench import data as D
    from bench.data import few_shot_indices

    digits = D.load_digits_set()
    splits = D.digits_splits(digits.labels)
    pool = splits["pool"]
    views = 1
    memo: dict = {}

    def fewshot(seed: int) -> Split:
        if seed not in memo:
            rows = pool[few_shot_indices(digits.labels[pool], D.FEWSHOT_SHOTS, seed)]
            memo[seed] = D.encode_rows(backbone, digits, rows, views, feature_dir, log)
        return memo[seed]

    def large() -> Split:
        if "large" not in memo:
            memo["large"] = D.encode_rows(backbone, digits, pool, 1, feature_dir, log)
        return memo["large"]

    val = D.encode_rows(backbone, digits, splits["val"], 1, feature_dir, log)
    test = D.encode_rows(backbone, digits, splits["test"], 1, feature_dir, log)
    data = BenchData(backbone, digits.classnames, fewshot, val, test, large, "digits", templates=(D.DIGITS_TEMPLATE,))
    data.confuser_split = lambda: D.encode_rows(backbone, digits, splits["confuser"], 1, feature_dir, log)
    return data


def _confuser(backbone, data: BenchData, split: Split, log) -> Callable[[Split], torch.Tensor]:
    """The instance protocol's confuser: a linear probe trained with the true labels of a split disjoint from every
    other (100 epochs, lr 25, seed 0); returns split -> its (N, K) class posteriors on view 0."""
    import torch.nn.functional as F

    from ml.train import TrainConfig, class_logits, fit

    k = len(data.classnames)
    onehot = F.one_hot(split.labels, k).bool()
    res = fit(
        backbone,
        split.features,
        onehot,
        data.classnames,
        TrainConfig(method="linear_probe", lr=25.0, epochs=100, seed=0),
    )
    acc = _eval(data.val.features[0], res.class_features, res.logit_scale, res.class_bias, data.val.labels)
    log(f"confuser: linear probe on {len(split.labels)} true labels, validation accuracy {acc:.3f}")

    def confusion(s: Split) -> torch.Tensor:
        return torch.softmax(class_logits(s.features[0], res.class_features, res.logit_scale, res.class_bias), dim=1)

    return confusion

"""A live refit, end to end (the ``tagsift.refit`` task; docs/architecture.md, Live refit).

1. **claim**: ``queued -> running`` in one conditional UPDATE (a duplicate message finds nothing to do).
2. **read** (``worker.refit_rows.read_input``): the dataset's latest model (the base), every item's candidates and
   tag, the certain ones (reviewers' tags, manifest labels, audited items), the dataset's ``decision_seq`` and the
   newest review id, from one snapshot.
3. **features** (``worker.refit_features``): the clean view of every item from the consolidated matrix (no image is
   read); too many items without one fail the refit with ``features_missing`` and a message naming what to do.
4. **refit** (``ml.refit``): the base model's head trained again; calibration and the quality report through
   :func:`assess` (today's ``ml.quality`` functions; one line to swap for ``ml.quality.assess``).
5. **store**: the new head (and a model card) as blobs; the rest of the model's artifacts are the base's.
6. **save** (``worker.refit_rows.save``): one transaction under the dataset's row lock, fenced (see there).
7. **one more**: when decisions came in since the read, one more refit is requested (coalescing).
"""

from __future__ import annotations

import io
import logging
import time

import numpy as np

from app.db import session_scope
from app.services.refits import request_refit
from app.storage import get_storage
from worker.refit_features import FeaturesMissing, features_for
from worker.refit_rows import RefitInput, claim, fail, read_input, save

log = logging.getLogger("worker.refit")

#: torch threads of a refit: its matrices are small, and OpenMP threads that contend with a training pool on the same
#: cores made a 10,000-item refit 15x slower on a loaded 2-core machine (27 s with 2 threads, 1.6 s with 1).
REFIT_THREADS = 1
#: Largest dataset whose refit also gets the cross-fitted consistency estimate (ml.quality.assess with features).
CONSISTENCY_ITEMS = 2000
#: A refit runs when at least this share of the items have cached features (the rest keep their tags).
MIN_FEATURE_SHARE = 0.5


def assess(logits, mask, *, classes, certain, audited, features=None, history=(), seed=0):
    """``ml.quality.assess`` for a refit's logits. The consistency estimate (which needs ``features``) cross-fits a
    head five times: seconds per thousand items, so a refit passes the features only for datasets of at most
    :data:`CONSISTENCY_ITEMS` items; a larger one is measured by its audit (or says it is not measured)."""
    from ml.quality import assess as measure

    if features is not None and len(features) > CONSISTENCY_ITEMS:
        features = None
    return measure(
        logits, mask, classes=classes, certain=certain, audited=audited, features=features, history=history, seed=seed
    )


def run_refit(refit_id: str) -> str:
    """Run refit ``refit_id`` if it is still queued; returns its outcome (for logs and tests)."""
    if not claim(refit_id):
        return "not_queued"
    started = time.perf_counter()
    data: RefitInput | None = None
    try:
        data = read_input(refit_id)
        if data is None:
            fail(refit_id, "no_model", "the dataset has no model to refit: start a job first")
            return "failed"
        outcome = _refit(data, started)
    except FeaturesMissing as exc:
        fail(refit_id, "features_missing", str(exc))
        log.warning("refit %s: %s", refit_id, exc)
        return "failed"
    except Exception as exc:  # recorded on the refit row: nothing fails silently
        log.exception("refit %s failed", refit_id)
        fail(refit_id, "internal_error", f"{type(exc).__name__}: {exc}"[:4000])
        return "failed"
    if data is not None and outcome in ("succeeded", "stale"):
        _one_more_if_decided(data)
    return outcome


def _one_more_if_decided(data: RefitInput) -> None:
    """Decisions came in after the read: exactly one more refit (``request_refit`` queues none while one is
    queued or running)."""
    from app.models import Dataset

    with session_scope() as session:
        seq = session.get(Dataset, data.dataset_id).decision_seq
        if seq != data.decision_seq:
            request_refit(session, data.dataset_id)


def _refit(data: RefitInput, started: float) -> str:
    import torch

    from ml.refit import LinearHead, refit

    torch.set_num_threads(REFIT_THREADS)
    storage = get_storage()
    feats, rows = features_for(storage, data.dataset_id, data.backbone_id, data.shas)
    n = len(data.shas)
    if len(rows) < max(1, MIN_FEATURE_SHARE * n):
        raise FeaturesMissing(n - len(rows), n, data.backbone_id)
    head_arrays = np.load(io.BytesIO(storage.get(data.head_sha)))
    base = LinearHead.from_export(head_arrays["class_features"], float(head_arrays["logit_scale"]), head_arrays["bias"])
    mask = torch.from_numpy(data.mask[rows])
    targets = torch.from_numpy(data.targets[rows])
    out = refit(torch.from_numpy(feats), mask, base, targets)
    certain = (targets >= 0).tolist()
    audited = {j: int(targets[j]) for j, r in enumerate(rows.tolist()) if r in data.audited_rows}
    result = assess(
        out.logits, mask, classes=data.classes, certain=certain, audited=audited, features=torch.from_numpy(feats)
    )
    report = dict(result.report)
    if len(rows) < n:
        report.setdefault("warnings", []).append(
            f"{n - len(rows)} of {n} items have no cached features and kept their tags: a full job labels them"
        )
    head_sha = storage.put(_head_npz(out.head, result.temperature))
    return save(
        data,
        rows=rows,
        labels=result.labels,
        confidence=result.confidence,
        margin=result.margin,
        probs=result.probs,
        head_sha=head_sha,
        report=report,
        refit_seconds=out.seconds,
        started=started,
    )


def _head_npz(head, temperature: float) -> bytes:
    """head.npz of the refit head with the temperature folded in (``class_features`` = W, ``logit_scale`` = 1/T,
    ``bias`` = b/T: /predict's scores are calibrated like the items')."""
    import tempfile
    from pathlib import Path

    from ml.export import head_arrays, write_npz

    arrays = head_arrays(head.weight, 1.0 / temperature, head.bias / temperature)
    with tempfile.TemporaryDirectory(prefix="tagsift-refit-") as tmp:
        path = Path(tmp) / "head.npz"
        write_npz(path, arrays)
        return path.read_bytes()

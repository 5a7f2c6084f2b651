"""Label Studio's project events at ``POST /label-studio/{dataset_id}/webhook``: an annotation becomes the matching
item's reviewer tag (its choice may widen the item's candidates), an annotation deleted there undoes the tag it set
here (``ANNOTATIONS_DELETED`` names only the deleted annotations' ids, so each tag records the annotation it came
from), and ``START_TRAINING`` starts a job. The rest of the backend protocol is ``app.services.label_studio``.
"""

from __future__ import annotations

import logging

from sqlalchemy.orm import Session

from app.checks import plausible_id, shorten
from app.config import Settings
from app.models import Dataset, Owner
from app.schemas import JobCreate
from app.services import jobs as jobs_service
from app.services.datasets import get_dataset
from app.services.label_studio import invalid, items_by_image, parse_label_config
from app.services.refits import request_refit
from app.services.reviews import Reviewer, apply_decision, lock_item, withdraw_source

log = logging.getLogger(__name__)


def webhook(
    *, session: Session, owner: Owner, reviewer: Reviewer, dataset_id: str, body: dict, settings: Settings
) -> tuple[int, dict]:
    """(status, body): an annotation becomes the matching item's reviewer tag, and its deletion undoes that tag;
    START_TRAINING starts a job."""
    dataset = get_dataset(session=session, owner=owner, dataset_id=dataset_id)
    action = body.get("action")
    if not isinstance(action, str) or not action:
        raise invalid("action", "action: the event's name (a non-empty string) is required")
    for key in ("annotation", "task", "project"):
        if key in body and not isinstance(body[key], dict):
            raise invalid(key, f"{key}: must be an object")
    # checked whatever the action, as the objects above
    deleted = _annotation_refs(body["annotations"]) if "annotations" in body else None
    if action == "START_TRAINING":
        job, _ = jobs_service.create_job(
            session=session,
            owner=owner,
            dataset_id=dataset.id,
            job_in=JobCreate(),
            idempotency_key=None,
            settings=settings,
        )
        return 201, {"status": "ok", "result": {"job_id": job.id, "job_status": job.status}}
    # what the decisions made here for the annotation's reviewer are recorded as
    ls_reviewer = Reviewer(api_key_id=reviewer.api_key_id, name=f"{reviewer.name} (Label Studio)")
    if action == "ANNOTATIONS_DELETED":
        if deleted is None:
            raise invalid("annotations", "annotations: ANNOTATIONS_DELETED names the deleted annotations")
        return _annotations_deleted(session, dataset, deleted, ls_reviewer)
    if action not in ("ANNOTATION_CREATED", "ANNOTATION_UPDATED"):
        return 200, {"status": "ignored", "reason": f"action {shorten(str(action))!r} is not used by tagsift"}
    annotation, task = body.get("annotation"), body.get("task")
    if not isinstance(annotation, dict) or not isinstance(task, dict):
        raise invalid("annotation", "annotation, task: an annotation event carries both objects")
    if annotation.get("was_cancelled") is True:
        return 200, {"status": "ignored", "reason": "the annotation was cancelled (skipped)"}
    project = body.get("project")
    config = project.get("label_config") if isinstance(project, dict) else None
    control = parse_label_config(config, field="project.label_config") if config else None
    result = annotation.get("result")
    choices: set[str] = set()
    for region in result if isinstance(result, list) else []:
        if not isinstance(region, dict) or region.get("type") != "choices":
            continue
        if control is not None and region.get("from_name") != control.from_name:
            continue
        value = region.get("value")
        picked = value.get("choices") if isinstance(value, dict) else None
        if isinstance(picked, list):
            choices.update(c for c in picked if isinstance(c, str))
    if len(choices) != 1:
        return 200, {
            "status": "ignored",
            "reason": f"the annotation has {len(choices)} choices; a reviewer tag is exactly one",
        }
    data = task.get("data")
    ref = data.get(control.image_key if control else "image") if isinstance(data, dict) else None
    if not isinstance(ref, str):
        raise invalid("task.data", "task.data: the task's image is missing", item=f"task {task.get('id')}")
    item = items_by_image(session, dataset.id, [ref]).get(ref)
    if item is None:
        return 200, {"status": "ignored", "reason": f"task {task.get('id')}'s image is not an item of this dataset"}
    lock_item(session, item)
    (label,) = choices
    # an annotator's choice in Label Studio is an explicit decision: it may widen the candidate set
    source_ref = _annotation_ref(annotation.get("id"))
    apply_decision(session, item, ls_reviewer, "assign", label, add_to_candidates=True, source_ref=source_ref)
    session.commit()
    request_refit(session, dataset.id)
    log.info("label-studio: task %s -> item %s reviewer label %r", task.get("id"), item.id, label)
    return 201, {"status": "ok", "result": {"item_id": item.id, "label": label}}


def _annotation_ref(annotation_id: object) -> str | None:
    """The history's ``source_ref`` of a Label Studio annotation: its id, an integer (what Label Studio sends) within
    64 bits or a string as ``plausible_id`` allows (1 to 64 characters, no control character); None for any other."""
    if isinstance(annotation_id, bool):
        return None
    if isinstance(annotation_id, float) and annotation_id.is_integer():  # 12.0 is an integer to JSON Schema
        annotation_id = int(annotation_id)
    if isinstance(annotation_id, int):
        if not -(2**63) <= annotation_id < 2**63:
            return None
    elif not isinstance(annotation_id, str) or not plausible_id(annotation_id):
        return None
    return f"label-studio:annotation:{annotation_id}"


def _annotation_refs(annotations: object) -> list[str]:
    """The ``source_ref`` of each entry of a webhook's ``annotations`` (``[{"id": N}, ...]``); 422 naming the entry."""
    if not isinstance(annotations, list):
        raise invalid("annotations", 'annotations: a list of annotations by id ([{"id": ...}, ...])')
    refs = []
    for i, entry in enumerate(annotations):
        ref = _annotation_ref(entry.get("id")) if isinstance(entry, dict) else None
        if ref is None:
            message = (
                f"annotations[{i}].id: the annotation's id (an integer, or a string of 1 to 64 characters) is required"
            )
            raise invalid(f"annotations[{i}].id", message)
        refs.append(ref)
    return refs


def _annotations_deleted(session: Session, dataset: Dataset, refs: list[str], reviewer: Reviewer) -> tuple[int, dict]:
    """Annotations deleted in Label Studio (``ANNOTATIONS_DELETED``: ``{"annotations": [{"id": N}, ...]}``, their ids
    only; ``refs`` their ``source_ref``): each tag they set here is undone, unless a later decision (in tagsift, or
    from another annotation) replaced it (``app.services.reviews.withdraw_source``)."""
    undone: list[str] = []
    kept: list[str] = []
    for ref in dict.fromkeys(refs):
        for item_id, was_undone in withdraw_source(
            session=session, dataset_id=dataset.id, source_ref=ref, reviewer=reviewer
        ).items():
            (undone if was_undone else kept).append(item_id)
    session.commit()
    if undone:
        request_refit(session, dataset.id)
    if not undone and not kept:
        return 200, {"status": "ignored", "reason": "no tag here came from the deleted annotations"}
    log.info("label-studio: annotations deleted -> items undone %s, kept (decided since) %s", undone, kept)
    return 200, {"status": "ok", "result": {"undone": undone, "kept": kept}}

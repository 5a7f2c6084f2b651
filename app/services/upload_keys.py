"""The ``Idempotency-Key`` of uploads (``POST /datasets``, ``POST /datasets/{id}/items``), as jobs have it.

The key is scoped to the owner. The request's fingerprint is the sha256 of what the upload means, not of its bytes
on the wire (a multipart boundary differs on every send): the route (create or add, and the dataset), the form
fields, the manifest's name and bytes, each image's file name and sha256, and the archive's sha256. Same key +
same fingerprint -> the stored answer (201, header ``Idempotent-Replayed: true``) and nothing stored again; same
key + another fingerprint -> 422 ``idempotency_key_reused``. The record (:class:`app.models.UploadRequest`) is
written in the upload's own transaction, so an upload that committed always has it, and one that rolled back
never; it is deleted with its dataset (the key can then be used again). Two requests with one key at the same
time: the second gets 409 (the unique key), and a retry of it gets the first one's answer.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.errors import FieldError, InvalidInput
from app.models import Owner, UploadRequest
from app.uploads import RawUpload


def fingerprint(kind: str, dataset_id: str | None, body: RawUpload | BaseModel) -> str:
    """The sha256 of what the request asks for (see the module docstring)."""
    if isinstance(body, BaseModel):
        parts: dict[str, Any] = {"json": body.model_dump(mode="json")}
    else:
        parts = {
            "fields": [body.name, body.classes, body.prompt_template, body.manifest_format],
            "manifest": [body.manifest_name, _sha(body.manifest)],
            "images": [[name, _sha(data)] for name, data in body.images],
            "archive": [body.archive_name, _sha(body.archive)],
        }
    canonical = json.dumps({"kind": kind, "dataset_id": dataset_id, **parts}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _sha(data: bytes | None) -> str | None:
    return hashlib.sha256(data).hexdigest() if data is not None else None


def replay(session: Session, owner: Owner, key: str | None, request_hash: str) -> dict[str, Any] | None:
    """The stored answer of ``key`` when it was used with this request; None when unused; 422 when it was used
    with another request."""
    if not key:
        return None
    prior = session.scalar(
        select(UploadRequest).where(UploadRequest.owner_id == owner.id, UploadRequest.idempotency_key == key)
    )
    if prior is None:
        return None
    if prior.request_hash != request_hash:
        raise InvalidInput(
            f"Idempotency-Key: {key!r} was used for a different upload (dataset {prior.dataset_id}); use a new key",
            code="idempotency_key_reused",
            errors=[FieldError(field="Idempotency-Key", message="the key was used with a different request")],
        )
    return prior.response


def remember(
    session: Session, owner: Owner, key: str | None, request_hash: str, dataset_id: str, answer: BaseModel
) -> None:
    """Add the record of ``key`` (the caller commits it with the upload)."""
    if key:
        session.add(
            UploadRequest(
                owner_id=owner.id,
                dataset_id=dataset_id,
                idempotency_key=key,
                request_hash=request_hash,
                response=answer.model_dump(mode="json"),
            )
        )

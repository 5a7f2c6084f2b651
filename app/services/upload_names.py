"""Names against what a dataset already holds (the rule is :mod:`app.names`; docs/api.md, "Names").

* a dataset's name is stored in NFC, and refused when it holds an invisible or direction-changing character;
* a new image whose file name is an item's of the dataset is refused (422 naming the file and the item), unless
  it is the same image (same sha256): then it is reported as a duplicate and not stored, as any image already in
  the dataset is. So a name always means one item, which is how the Label Studio backend finds a task's image.
  A name that only *looks like* an item's (:func:`app.names.look_alikes`) is refused as ambiguous, naming both.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.checks import shorten
from app.errors import FieldError, FieldErrors, InvalidInput
from app.models import Dataset, Item
from app.names import invisible_problem, look_alikes, nfc
from app.uploads import ValidBatch


def dataset_name(value: str, errors: list[FieldError]) -> str:
    """``value`` (a dataset's name) in NFC, stripped; an invisible character is recorded in ``errors``."""
    name = nfc(value).strip()
    problem = invisible_problem(name)
    if problem:
        errors.append(FieldError(field="name", item=shorten(name), message=f"name: {problem}"))
    return name


def refuse_taken_names(session: Session, dataset: Dataset, batch: ValidBatch) -> None:
    """422 when a new image takes the file name of a different stored item, or a name that looks like one."""
    rows = session.execute(select(Item.file, Item.sha256).where(Item.dataset_id == dataset.id))
    stored = {file: sha for file, sha in rows}
    errors = FieldErrors()
    for it in batch.items:
        sha = stored.get(it.file)
        if sha is not None and sha != it.sha256:
            errors.add(
                field="file",
                item=it.file,
                message=f"{it.file}: the dataset already has an item of this file name with a different image; "
                "rename the new file (a file name names one item of a dataset)",
            )
    new = [it.file for it in batch.items if it.file not in stored]
    for first, second in look_alikes(new, known=stored):
        if first in stored:
            errors.add(
                field="file",
                item=second,
                message=f"{second}: looks like the dataset's item {first} (the same letters up to case, width or "
                "compatibility forms): one dataset cannot tell the two apart; rename the new file",
            )
    if errors:
        head = "; ".join(e.message for e in errors[:5])
        more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
        raise InvalidInput(f"{len(errors)} problem(s), nothing was stored: {head}{more}", errors=errors)

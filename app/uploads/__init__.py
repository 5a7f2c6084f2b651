"""Upload parsing and validation: a multipart body -> a validated batch of items, or one 422 listing every problem.

An upload is a *manifest* (JSONL lines ``{"file", "candidates", "label"?}`` or CSV ``file,candidates[,label]``
with candidates separated by ``|``) plus the images, as repeated ``images`` parts or one ``archive`` zip (which
may carry the manifest itself as a top-level ``manifest.jsonl`` / ``manifest.csv``).

Checks (all of them run; every problem is reported at once, and nothing is stored unless there is none):

* form: text fields and file names are UTF-8 (starlette would quietly read other bytes as Latin-1), a text
  field is at most its part limit (named in the 422), no unknown fields;
* manifest: at most ``settings.max_manifest_bytes``, UTF-8 (a BOM is fine), one object per JSONL line with only
  the keys ``file``, ``candidates``, ``label`` (no ``image_url``: images are uploaded, never fetched) / a CSV
  header of those columns, a non-empty ``file`` named once, at most 500 characters, no control characters and
  not a URL, a non-empty candidate set, tags non-empty, at most ``settings.max_tag_length`` characters and
  without control characters, every candidate in the dataset's ``classes``, ``label`` (if any) among the row's
  candidates, at most ``settings.max_items_per_request`` rows;
* images: decoded fully by Pillow (0-byte, non-image, truncated/corrupt, over ``max_image_pixels`` or
  ``max_image_bytes`` are rejected, see :func:`app.imaging.verify_image`), each uploaded file named by a
  manifest row and each row matched by an uploaded file;
* zip: no absolute or ``..`` member names, no encrypted members, at most ``max_archive_members`` members,
  no member compressed more than ``max_archive_ratio`` times or over ``max_image_bytes``, at most
  ``max_archive_bytes`` uncompressed in total (bounded reads, the headers are not trusted);
* duplicates (same sha256) within the batch are not errors: the first is kept, the others reported.

File names are display names only; nothing is ever written under a name from the request (blobs are
content-addressed), so a hostile name cannot escape the data directory. Messages quote user values shortened
(:func:`app.services.checks.shorten`): a 10 MB tag is refused in a small answer.

A manifest row's ``file`` matches the uploaded file (or zip member path) of the same name, or else the only
uploaded file with that base name (a browser sends ``a.jpg`` for ``photos/a.jpg``).


A Label Studio JSON export is a manifest too (``manifest_format=label-studio``, or one starting with ``[``; a
``manifest.json`` in the zip): :mod:`~app.uploads.label_studio` turns its tasks into rows (its rules are there).

Modules, by concern: :mod:`~app.uploads.forms` (multipart), :mod:`~app.uploads.manifests` (JSONL/CSV),
:mod:`~app.uploads.label_studio` (Label Studio exports),
:mod:`~app.uploads.archives` (zips), :mod:`~app.uploads.rules` (tags, classes, file names) and
:mod:`~app.uploads.validation` (the whole batch). Every check reports through one collector,
:class:`app.api.errors.FieldErrors`.
"""

from app.uploads.forms import RawPredict, RawUpload, read_multipart, read_predict_form, require_multipart
from app.uploads.rules import check_classes, parse_classes
from app.uploads.validation import BatchDuplicate, ValidBatch, ValidItem, validate_upload

__all__ = [
    "BatchDuplicate",
    "RawPredict",
    "RawUpload",
    "ValidBatch",
    "ValidItem",
    "check_classes",
    "parse_classes",
    "read_multipart",
    "read_predict_form",
    "require_multipart",
    "validate_upload",
]

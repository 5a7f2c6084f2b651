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
* names (tags, file names; :mod:`app.names`, docs/api.md "Names"): NFC, no invisible or direction-changing
  character, no two classes or two files of the batch that look alike (naming both); a JSONL ``"label": ""`` is
  refused; JSONL lines end at ``\n`` / ``\r\n`` only; a CSV header names each column once; JSON is read within
  bounds (:mod:`~app.uploads.jsontext`);
* duplicates (same sha256) within the batch are not errors: the first is kept, the others reported.

Against the stored dataset (``app.services.upload_names``): a new image may not take an item's file name.

File names are display names only; nothing is ever written under a name from the request (blobs are
content-addressed), so a hostile name cannot escape the data directory. Messages quote user values shortened
(:func:`app.checks.shorten`): a 10 MB tag is refused in a small answer.

A manifest row's ``file`` matches the uploaded file (or zip member path) of the same name, or else the only
uploaded file with that base name (a browser sends ``a.jpg`` for ``photos/a.jpg``).


A Label Studio JSON export is a manifest too (``manifest_format=label-studio``, or one starting with ``[``; a
``manifest.json`` in the zip): :mod:`~app.uploads.label_studio` turns its tasks into rows (its rules are there).

One public parser, :func:`parse_upload` (:mod:`~app.uploads.pipeline`), in named steps: collect the files, parse
the manifest into rows, resolve the classes, match files to rows, verify the images. Modules, by concern:
:mod:`~app.uploads.batch` (what goes in and out), :mod:`~app.uploads.pipeline` (the steps),
:mod:`~app.uploads.manifests` (JSONL/CSV), :mod:`~app.uploads.label_studio` (Label Studio exports),
:mod:`~app.uploads.archives` (zips) and :mod:`~app.uploads.rules` (tags, classes, file names). Every check reports
through one collector, :class:`app.errors.FieldErrors`. Nothing here knows a web framework except
:mod:`~app.uploads.forms`, which reads the multipart request into a :class:`RawUpload` (routes import it from
there; this package does not, so the services, and the worker through them, load no FastAPI).
"""

from app.uploads.batch import BatchDuplicate, RawUpload, ValidBatch, ValidItem
from app.uploads.pipeline import parse_upload
from app.uploads.rules import check_classes, parse_classes

__all__ = [
    "BatchDuplicate",
    "RawUpload",
    "ValidBatch",
    "ValidItem",
    "check_classes",
    "parse_classes",
    "parse_upload",
]

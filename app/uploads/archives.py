"""Uploaded zips, read safely: member names, counts, sizes and compression ratios bounded, headers not trusted."""

from __future__ import annotations

import io
import posixpath
import zipfile

from app.checks import shorten
from app.config import Settings
from app.errors import FieldErrors
from app.uploads.rules import MAX_FILE_NAME, clean_name, is_unsafe_path

MANIFEST_NAMES = ("manifest.jsonl", "manifest.csv", "manifest.json")  # .json: a Label Studio export


def read_archive(
    data: bytes, *, settings: Settings, errors: FieldErrors
) -> tuple[list[tuple[str, bytes]], tuple[bytes, str] | None]:
    """The images of a zip (and its top-level manifest, if any), checked for zip bombs and path tricks."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        infos = zf.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError) as exc:
        errors.add(field="archive", message=f"archive: not a readable zip file ({exc})")
        return [], None
    if len(infos) > settings.max_archive_members:
        errors.add(
            field="archive",
            message=f"archive: {len(infos)} members, over the limit of {settings.max_archive_members}",
        )
        return [], None
    files: list[tuple[str, bytes]] = []
    manifest: tuple[bytes, str] | None = None
    total = 0
    with zf:
        for info in infos:
            raw_name = info.filename
            name = raw_name.replace("\\", "/")
            if info.is_dir() or name.endswith("/"):
                continue
            if is_unsafe_path(name):
                shown = shorten(raw_name, MAX_FILE_NAME)
                errors.add(field="archive", item=shown, message=f"{shown}: unsafe path in the archive")
                continue
            top = name.split("/")[0]
            name = clean_name(name)
            if top == "__MACOSX" or posixpath.basename(name) in (".DS_Store", "Thumbs.db"):
                continue
            if info.flag_bits & 0x1:
                errors.add(field="archive", item=name, message=f"{name}: encrypted zip members are refused")
                continue
            is_manifest = name.lower() in MANIFEST_NAMES
            limit = settings.max_manifest_bytes if is_manifest else settings.max_image_bytes
            if info.file_size > limit:
                errors.add(
                    field="archive", item=name, message=f"{name}: {info.file_size} bytes, over the limit of {limit}"
                )
                continue
            if info.file_size and info.file_size > settings.max_archive_ratio * max(info.compress_size, 1):
                errors.add(
                    field="archive",
                    item=name,
                    message=f"{name}: compressed {info.file_size / max(info.compress_size, 1):.0f} times, over "
                    f"the limit of {settings.max_archive_ratio} (zip bomb?)",
                )
                continue
            total += info.file_size
            if total > settings.max_archive_bytes:
                errors.add(
                    field="archive",
                    message=f"archive: over {settings.max_archive_bytes} bytes uncompressed in total",
                )
                return files, manifest
            try:
                with zf.open(info) as member:
                    content = member.read(limit + 1)
            except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError, EOFError) as exc:
                errors.add(field="archive", item=name, message=f"{name}: cannot be read ({exc})")
                continue
            if len(content) > limit:
                errors.add(field="archive", item=name, message=f"{name}: over the limit of {limit} bytes")
                continue
            if is_manifest:
                manifest = (content, name)
            else:
                files.append((name, content))
    return files, manifest

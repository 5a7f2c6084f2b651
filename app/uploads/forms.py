"""Reading multipart forms strictly: text must be UTF-8, parts have limits, unknown fields are errors; the dataset
upload form (:func:`read_multipart`, a :class:`RawUpload` for :func:`app.uploads.parse_upload`) and the
``POST /predict`` form (:func:`read_predict_form`). The HTTP side of the upload package: the only module of it
that knows Starlette, so the parser itself loads no web framework."""

from __future__ import annotations

from dataclasses import dataclass, field

from fastapi import Request
from python_multipart.multipart import parse_options_header
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartParser

from app.checks import shorten
from app.config import Settings
from app.errors import ApiError, FieldError, FieldErrors, InvalidInput
from app.uploads.batch import RawUpload
from app.uploads.rules import clean_name

FORM_FIELDS = ("name", "classes", "prompt_template", "manifest", "manifest_format", "images", "archive")


# --- reading the request ----------------------------------------------------------------------------------


class _NotText(str):
    """A form value or file name whose bytes are not valid text in the form's charset (UTF-8 unless declared).

    Starlette would quietly decode such bytes as Latin-1; the strict parser below marks them with this type so
    that the upload is refused naming the field, instead of storing mojibake.
    """


class _StrictMultiPartParser(MultiPartParser):
    """Starlette's multipart parser, except that undecodable field values and file names become :class:`_NotText`,
    a form field over the part limit is a 422 naming the field, and a body without its closing boundary is a 400
    (starlette would quietly drop its last part)."""

    ended = False

    def on_end(self) -> None:
        self.ended = True
        super().on_end()

    def on_headers_finished(self) -> None:
        super().on_headers_finished()
        upload = self._current_part.file
        if upload is not None and upload.filename is not None:
            _, options = parse_options_header(self._current_part.content_disposition)
            if not _decodes(options.get(b"filename", b""), self._charset):
                upload.filename = _NotText(upload.filename)

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        part = self._current_part
        if part.file is None and len(part.data) + end - start > self.max_part_size:
            field = shorten(part.field_name, 40)
            raise InvalidInput(
                f"{field}: the form field is over the limit of {self.max_part_size} bytes",
                errors=[FieldError(field=field, message=f"{field}: over the limit of {self.max_part_size} bytes")],
            )
        super().on_part_data(data, start, end)

    def on_part_end(self) -> None:
        part = self._current_part
        if part.file is None and not _decodes(bytes(part.data), self._charset):
            self.items.append((part.field_name, _NotText(bytes(part.data).decode("latin-1"))))
            return
        super().on_part_end()


def _not_text(value: UploadFile | str) -> bool:
    """Whether a form value, or an uploaded file's name, failed to decode (see :class:`_StrictMultiPartParser`)."""
    return isinstance(value.filename if isinstance(value, UploadFile) else value, _NotText)


def _decodes(data: bytes, charset: str) -> bool:
    try:
        data.decode(charset or "utf-8")
    except (UnicodeDecodeError, LookupError):
        return False
    return True


async def _parse_form(request: Request, *, max_files: int, max_fields: int, max_part_size: int) -> FormData:
    """The multipart form of ``request`` (strict about text, see :class:`_StrictMultiPartParser`)."""
    parser = _StrictMultiPartParser(
        request.headers, request.stream(), max_files=max_files, max_fields=max_fields, max_part_size=max_part_size
    )
    try:
        form = await parser.parse()
    except ApiError:
        raise
    except Exception as exc:  # starlette's MultiPartException, python-multipart's errors (the cause says more)
        detail = "; ".join(
            str(e) for e in (exc, exc.__cause__) if e is not None and str(e) and str(e) != "Invalid multipart data."
        )
        raise ApiError(f"body: cannot parse the multipart form ({detail})", code="malformed_multipart") from None
    if not parser.ended:
        await form.close()
        raise ApiError(
            "body: the multipart body is truncated (it ends without its closing boundary `--<boundary>--`, so its last "
            "part may be cut short); nothing was stored: send the whole body",
            code="truncated_multipart",
            errors=[FieldError(field="body", message="body: truncated, no closing multipart boundary")],
        )
    return form


async def read_multipart(request: Request, settings: Settings) -> RawUpload:
    """Read a ``multipart/form-data`` body into a :class:`RawUpload` (unknown fields become errors)."""
    form = await _parse_form(
        request,
        max_files=settings.max_items_per_request + 2,
        max_fields=len(FORM_FIELDS) + 10,
        max_part_size=settings.max_manifest_bytes,
    )
    raw = RawUpload()
    try:
        for key, value in form.multi_items():
            if key not in FORM_FIELDS:
                raw.errors.add(
                    field=shorten(key),
                    message=f"{shorten(key)}: unknown form field (expected one of {', '.join(FORM_FIELDS)})",
                )
                continue
            if key == "images" and not isinstance(value, UploadFile):
                raw.errors.add(
                    field="images",
                    message="images: each part must be a file: this part has no filename (send each image with "
                    'Content-Disposition: form-data; name="images"; filename="cat.jpg")',
                )
                continue
            if _not_text(value):
                what = "its file name" if isinstance(value, UploadFile) else "the value"
                raw.errors.add(
                    field=key,
                    item=_part_name(value),
                    message=f"{key}: {what} is not valid UTF-8 text",
                )
                continue
            if key == "images":
                assert isinstance(value, UploadFile)  # a plain field was refused above
                raw.images.append((clean_name(value.filename or ""), await value.read()))
            elif key == "archive":
                if raw.archive is not None:
                    raw.errors.add(field="archive", message="archive: send at most one zip")
                    continue
                raw.archive, raw.archive_name = await _part_bytes(value), _part_name(value)
            elif key == "manifest":
                if raw.manifest is not None:
                    raw.errors.add(field="manifest", message="manifest: send exactly one manifest")
                    continue
                raw.manifest, raw.manifest_name = await _part_bytes(value), _part_name(value)
            else:
                setattr(raw, key, (await _part_bytes(value)).decode("utf-8"))
    finally:
        await form.close()
    return raw


async def _part_bytes(value: UploadFile | str) -> bytes:
    if isinstance(value, UploadFile):
        return await value.read()
    return value.encode("utf-8")


def _part_name(value: UploadFile | str) -> str | None:
    return shorten(str(value.filename)) if isinstance(value, UploadFile) and value.filename is not None else None


@dataclass
class RawPredict:
    """The parts of a ``POST /predict`` form."""

    model_id: str | None = None
    images: list[tuple[str, bytes]] = field(default_factory=list)
    candidates: str | None = None
    top_k: str | None = None


def require_multipart(request: Request) -> None:
    """415 unless the body is ``multipart/form-data``."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "multipart/form-data":
        raise ApiError(
            f"Content-Type: expected multipart/form-data, got {ctype or 'none'}",
            status=415,
            code="unsupported_media_type",
        )


async def read_predict_form(request: Request, settings: Settings) -> RawPredict:
    """Read ``model_id``, one or more ``image`` files, ``candidates`` (JSON) and ``top_k``."""
    require_multipart(request)
    form = await _parse_form(
        request, max_files=settings.max_predict_images + 1, max_fields=20, max_part_size=1024 * 1024
    )
    raw = RawPredict()
    errors = FieldErrors()
    try:
        for key, value in form.multi_items():
            if key not in ("image", "model_id", "candidates", "top_k"):
                errors.add(field=shorten(key), message=f"{shorten(key)}: unknown form field")
            elif isinstance(value, _NotText) or (
                isinstance(value, UploadFile) and isinstance(value.filename, _NotText)
            ):
                what = "its file name" if isinstance(value, UploadFile) else "the value"
                errors.add(field=key, item=_part_name(value), message=f"{key}: {what} is not valid UTF-8 text")
            elif key == "image":
                if isinstance(value, UploadFile):
                    raw.images.append((clean_name(value.filename or ""), await value.read()))
                else:
                    errors.add(field="image", message="image: each part must be a file")
            else:
                setattr(raw, key, (await _part_bytes(value)).decode("utf-8"))
    finally:
        await form.close()
    if not raw.model_id:
        errors.add(field="model_id", message="model_id: required")
    if not raw.images and not any(e.field == "image" for e in errors):
        errors.add(field="image", message="image: send one or more image files")
    if errors:
        raise InvalidInput("; ".join(e.message for e in errors), errors=errors)
    return raw

"""Image checks and the eval preprocessing, with Pillow and NumPy only (the API never imports torch).

:func:`preprocess` is the worker's eval preprocessing (``ml.features``: the decoded image converted to RGB, then
``open_clip.image_transform(S, is_train=False, mean, std)``), step by step:

1. convert to RGB (Pillow's ``convert("RGB")``: a palette is expanded, alpha dropped, grey replicated) *first*,
   as the worker does before its transform (resizing a palette or RGBA image before the conversion gives other
   pixels: Pillow resizes a palette image with nearest and an RGBA one premultiplied);
2. ``Resize(S)`` with ``interpolation`` (bicubic): the shortest side becomes ``S``, the other
   ``int(S * long / short)`` (torchvision's rounding down);
3. ``CenterCrop(S)``: offsets ``int(round((h - S) / 2))`` (Python's round, as torchvision);
4. ``ToTensor``: float32 ``/ 255``, CHW; 5. ``Normalize``: ``(x - mean) / std`` in float32.

Same PIL calls, same float32 arithmetic, so the result matches the torch transform bit for bit (tested). Every
step is stated in the exported ``preprocess.json`` (:meth:`PreprocessConfig.to_dict`) and the model card, and the
export's ``predict.py`` (``app/export_kit/predict.py``) repeats them with Pillow and NumPy.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile

import vocab

# Truncated files must fail, never be padded with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False

ALLOWED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"})
_FILTERS = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}


class ImageInvalid(ValueError):
    """The bytes are not an acceptable image; the message says why (no file name: callers add it)."""


@dataclass(frozen=True)
class ImageInfo:
    width: int
    height: int
    format: str


#: The fixed part of ``preprocess.json`` (``vocab``, where ``ml.backbone.PreprocessConfig.to_dict`` reads it too).
PREPROCESS_STEPS = vocab.PREPROCESS_STEPS


#: How the card says to run the export: one model.onnx, or the shared tower and the model's head.
MODEL_RUN = "Then run `model.onnx` (input `image`, output `logits`: (batch, classes) in the order of `classes.json`)"
TOWER_RUN = (
    "Then run `tower.onnx` (input `image`, output `features`: (batch, dim), unit length) and apply the head in "
    "`head.npz`: `logits = features @ (logit_scale * class_features).T + bias` ((batch, classes) in the order of "
    "`classes.json`; the export with `?merged=true` has both in one `model.onnx`)"
)


@dataclass(frozen=True)
class PreprocessConfig:
    """The deployed model's ``preprocess.json`` (``ml.backbone.PreprocessConfig.to_dict()``)."""

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"

    @classmethod
    def from_dict(cls, d: dict) -> PreprocessConfig:
        cfg = cls(
            image_size=int(d["image_size"]),
            mean=tuple(float(x) for x in d["mean"]),
            std=tuple(float(x) for x in d["std"]),
            interpolation=str(d.get("interpolation", "bicubic")),
            resize_mode=str(d.get("resize_mode", "shortest")),
        )
        if cfg.interpolation not in _FILTERS:
            raise ValueError(f"preprocess.json: unsupported interpolation {cfg.interpolation!r}")
        if cfg.resize_mode != "shortest":
            raise ValueError(f"preprocess.json: unsupported resize_mode {cfg.resize_mode!r}")
        if len(cfg.mean) != 3 or len(cfg.std) != 3:
            raise ValueError("preprocess.json: mean and std need 3 values")
        for key in ("color", "layout", "dtype", "scale", "input", "output"):  # older files leave them out
            if key in d and d[key] != PREPROCESS_STEPS[key]:
                raise ValueError(
                    f"preprocess.json: unsupported {key} {d[key]!r} (supported: {PREPROCESS_STEPS[key]!r})"
                )
        return cfg

    def to_dict(self) -> dict:
        """``preprocess.json`` in full: the parameters and every step (:data:`PREPROCESS_STEPS`)."""
        return {
            "image_size": self.image_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
            "resize_mode": self.resize_mode,
            **PREPROCESS_STEPS,
        }

    def markdown(self, *, tower: bool = False) -> str:
        """The model card's "Preprocessing" section: the same steps with this model's values, then how to run the
        export's files (``tower``: the backbone's tower.onnx and the model's head.npz, else one model.onnx)."""
        values = (
            f"image_size {self.image_size}, interpolation {self.interpolation}, "
            f"mean {list(self.mean)}, std {list(self.std)}"
        )
        steps = "\n".join(f"{i}. {step}" for i, step in enumerate(PREPROCESS_STEPS["steps"], start=1))
        return (
            "## Preprocessing\n\n"
            f"As stated in `preprocess.json` ({values}):\n\n{steps}\n\n"
            f"{TOWER_RUN if tower else MODEL_RUN}; scores are the softmax of the logits. "
            "`predict.py` does all of it:\n\n"
            "```\npip install onnxruntime numpy pillow\npython predict.py photo.jpg other.png\n```\n"
        )


def decode_image(data: bytes, *, max_pixels: int, max_bytes: int) -> Image.Image:
    """Decode ``data`` fully and return the loaded image; :class:`ImageInvalid` for anything not a sound image.

    Rejects: empty files, files over ``max_bytes``, non-images and formats outside :data:`ALLOWED_FORMATS`,
    images over ``max_pixels`` (checked from the header, before decoding: decompression bombs), and
    truncated or corrupt data (the whole image is decoded; a PNG's chunk checksums and its end are checked too).
    """
    if not data:
        raise ImageInvalid("the file is empty (0 bytes)")
    if len(data) > max_bytes:
        raise ImageInvalid(f"the file is {len(data)} bytes, over the limit of {max_bytes}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            try:
                fmt = img.format or "?"
                if fmt not in ALLOWED_FORMATS:
                    raise ImageInvalid(
                        f"unsupported image format {fmt} (allowed: {', '.join(sorted(ALLOWED_FORMATS))})"
                    )
                width, height = img.size
                if width < 1 or height < 1:
                    raise ImageInvalid(f"invalid image size {width}x{height}")
                if width * height > max_pixels:
                    raise ImageInvalid(f"the image is {width}x{height} pixels, over the limit of {max_pixels}")
                img.load()
                if fmt == "PNG":  # the pixels decoded; also check every chunk's CRC and that the file ends (IEND)
                    with Image.open(io.BytesIO(data)) as again:
                        again.verify()
            except BaseException:
                img.close()
                raise
    except ImageInvalid:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageInvalid(f"the image is too large to decode safely ({exc})") from None
    except Image.UnidentifiedImageError:
        raise ImageInvalid("not an image (Pillow cannot identify it)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageInvalid(f"corrupt or truncated image ({exc})") from None
    except Exception as exc:  # Pillow plugins raise assorted errors on hostile input
        raise ImageInvalid(f"cannot decode the image ({type(exc).__name__}: {exc})") from None
    return img


def verify_image(data: bytes, *, max_pixels: int, max_bytes: int) -> ImageInfo:
    """Like :func:`decode_image` (the same checks, a full decode) but return only the size and format."""
    with decode_image(data, max_pixels=max_pixels, max_bytes=max_bytes) as img:
        return ImageInfo(width=img.width, height=img.height, format=img.format or "?")


def open_image(data: bytes) -> Image.Image:
    """A loaded PIL image of trusted bytes (untrusted bytes go through :func:`decode_image`)."""
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def resized_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(w, h) after torchvision ``Resize(size)``: shortest side ``size``, the other scaled and rounded down."""
    short, long = (width, height) if width <= height else (height, width)
    if short == size:
        return width, height
    new_short, new_long = size, int(size * long / short)
    return (new_short, new_long) if width <= height else (new_long, new_short)


def preprocess(img: Image.Image, cfg: PreprocessConfig) -> np.ndarray:
    """The eval transform: (3, S, S) float32, identical to ``open_clip.image_transform(S, is_train=False)``."""
    size = cfg.image_size
    if img.mode != "RGB":
        img = img.convert("RGB")
    w, h = resized_size(img.width, img.height, size)
    if (w, h) != img.size:
        img = img.resize((w, h), _FILTERS[cfg.interpolation])
    top = int(round((h - size) / 2.0))
    left = int(round((w - size) / 2.0))
    if (w, h) != (size, size):
        img = img.crop((left, top, left + size, top + size))
    arr = np.asarray(img, dtype=np.uint8).astype(np.float32) / np.float32(255.0)  # (S, S, 3)
    arr = arr.transpose(2, 0, 1)  # (3, S, S)
    mean = np.asarray(cfg.mean, dtype=np.float32).reshape(3, 1, 1)
    std = np.asarray(cfg.std, dtype=np.float32).reshape(3, 1, 1)
    return np.ascontiguousarray((arr - mean) / std, dtype=np.float32)

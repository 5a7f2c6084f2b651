"""Naming a backbone: `BackboneSpec` (open_clip model name + pretrained tag, checkpoint path or config JSON) and
`parse_backbone`. No torch or open_clip here, so `ml.backbone` (loading) and `ml.reference` (building the offline
reference) both depend on this module and not on each other's names."""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

_SCHEMAS = ("hf-hub:", "local-dir:")  # open_clip model-name schemas that carry a colon themselves


@functools.lru_cache(maxsize=64)
def _file_sha256(path: str, mtime_ns: int, size: int) -> str:
    """sha256 of a file, memoised on (path, mtime, size) so large checkpoints are hashed once per process."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_sha256(path: str | Path) -> str:
    """sha256 hex digest of the file at `path`."""
    st = os.stat(path)
    return _file_sha256(str(Path(path).resolve()), st.st_mtime_ns, st.st_size)


def _is_path(text: str) -> bool:
    return os.sep in text or text.startswith(".") or os.path.exists(text)


@dataclass(frozen=True)
class BackboneSpec:
    model_name: str  # open_clip model name ("ViT-B-32", "RN50", "effnetlite0-minilm", ...)
    pretrained: str | None = None  # open_clip pretrained tag ("laion2b_s34b_b79k") or a local checkpoint path
    config_path: str | None = None  # model config JSON registered with open_clip.add_model_config first

    @property
    def is_local_checkpoint(self) -> bool:
        """True when `pretrained` names a file rather than an open_clip tag."""
        return self.pretrained is not None and _is_path(self.pretrained)

    @property
    def id(self) -> str:
        """Stable cache key: name + tag, or name + sha256[:16] of the checkpoint file (and of the config JSON)."""
        parts = [self.model_name]
        if self.config_path is not None:
            parts.append("cfg-" + file_sha256(self.config_path)[:16])
        if self.pretrained is None:
            parts.append("random")  # random init is seeded in load_backbone, so it is reproducible
        elif self.is_local_checkpoint:
            parts.append("ckpt-" + file_sha256(self.pretrained)[:16])
        else:
            parts.append(self.pretrained)
        return ":".join(parts)

    def __str__(self) -> str:
        head = self.config_path or self.model_name
        return head if self.pretrained is None else f"{head}:{self.pretrained}"


def parse_backbone(text: str) -> BackboneSpec:
    """Parse "NAME", "NAME:TAG", "NAME:/path/ckpt" or "/x/model.json[:/x/ckpt]" into a `BackboneSpec`.

    A config JSON's model name is its file stem (that is the name `open_clip.add_model_config` registers).
    "reference" is not parsed here: `load_backbone` resolves it through `ml.reference`.
    """
    text = text.strip()
    if not text:
        raise ValueError("empty backbone name")
    if text.startswith(_SCHEMAS):
        return BackboneSpec(model_name=text)
    head, sep, tail = text.partition(":")
    pretrained = tail or None
    if sep and not tail:
        raise ValueError(f"backbone {text!r}: nothing after ':' (expected a pretrained tag or a checkpoint path)")
    if head.endswith(".json"):
        return BackboneSpec(model_name=Path(head).stem, pretrained=pretrained, config_path=head)
    return BackboneSpec(model_name=head, pretrained=pretrained)

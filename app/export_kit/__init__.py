"""Files shipped inside every exported model zip (``GET /models/{id}/export``), read as package data.

``predict.py`` is a stand-alone script for the user (onnxruntime, NumPy and Pillow only); tagsift never imports it.
"""

from __future__ import annotations

from importlib import resources


def predict_script() -> bytes:
    """The bytes of ``predict.py`` as it goes into the zip."""
    return (resources.files(__package__) / "predict.py").read_bytes()

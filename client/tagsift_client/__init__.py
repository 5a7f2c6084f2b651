"""tagsift_client: a Python client and command line for the tagsift API (docs/client.md)."""

from tagsift_client.client import Client, ModelExport, UploadResult, load_export, read_config
from tagsift_client.errors import FieldProblem, TagsiftError

__all__ = ["Client", "FieldProblem", "ModelExport", "TagsiftError", "UploadResult", "load_export", "read_config"]
__version__ = "0.1.0"

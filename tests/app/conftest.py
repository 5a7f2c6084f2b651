"""Fixtures for the API tests: a TestClient on create_app(), API keys for two owners, image/upload helpers."""

from __future__ import annotations

import io
import json
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.config import Settings
from app.db import session_scope
from app.main import create_app
from app.services.api_keys import create_api_key


def image_bytes(seed: int, size: tuple[int, int] = (16, 12), fmt: str = "PNG", mode: str = "RGB") -> bytes:
    """A small image whose bytes differ per ``seed``."""
    img = Image.new(mode, size, color=(seed * 37 % 256, seed * 91 % 256, seed * 13 % 256)[: len(mode)])
    img.putpixel((0, 0), (seed % 256, (seed // 256) % 256, 7)[: len(mode)])
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def zip_bytes(members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


@dataclass
class Api:
    """A client bound to one owner's key."""

    client: TestClient
    key: str
    settings: Settings

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def get(self, url: str, **kw):
        return self.client.get(url, headers={**self.headers, **kw.pop("headers", {})}, **kw)

    def post(self, url: str, **kw):
        return self.client.post(url, headers={**self.headers, **kw.pop("headers", {})}, **kw)

    def patch(self, url: str, **kw):
        return self.client.patch(url, headers={**self.headers, **kw.pop("headers", {})}, **kw)

    def delete(self, url: str, **kw):
        return self.client.delete(url, headers={**self.headers, **kw.pop("headers", {})}, **kw)

    def upload(
        self,
        url: str,
        rows: list[dict],
        images: dict[str, bytes],
        *,
        name: str | None = None,
        classes: list[str] | None = None,
        **extra: str,
    ):
        data: dict[str, str] = dict(extra)
        if name is not None:
            data["name"] = name
        if classes is not None:
            data["classes"] = json.dumps(classes)
        files = [("manifest", ("manifest.jsonl", jsonl(rows), "application/x-ndjson"))]
        files += [("images", (fname, content, "image/png")) for fname, content in images.items()]
        return self.post(url, data=data, files=files)

    def make_dataset(self, n: int = 4, *, classes: list[str] | None = None, offset: int = 0) -> dict:
        """A dataset of ``n`` images with two candidates each (cat/lynx/dog)."""
        tags = ["cat", "lynx", "dog"]
        rows = [{"file": f"img{i}.png", "candidates": [tags[i % 3], tags[(i + 1) % 3]]} for i in range(n)]
        images = {f"img{i}.png": image_bytes(offset + i) for i in range(n)}
        r = self.upload("/datasets", rows, images, name=f"ds-{uuid.uuid4().hex[:6]}", classes=classes or tags)
        assert r.status_code == 201, r.text
        return r.json()


def _key(prefix: str) -> str:
    with session_scope() as session:
        return create_api_key(session=session, owner_name=f"{prefix}-{uuid.uuid4().hex[:8]}")


@pytest.fixture
def client(prod_env: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture
def alice(client: TestClient, prod_env: Settings) -> Api:
    return Api(client=client, key=_key("alice"), settings=prod_env)


@pytest.fixture
def bob(client: TestClient, prod_env: Settings) -> Api:
    return Api(client=client, key=_key("bob"), settings=prod_env)


@pytest.fixture(scope="session")
def onnx_bytes() -> bytes:
    """The tiny channel classifier as ONNX bytes (``tests.app.model_fixtures``)."""
    from tests.app.model_fixtures import channel_classifier_onnx

    return channel_classifier_onnx()

"""Task images read from Label Studio for the ML backend: only from ``TAGSIFT_LABEL_STUDIO_URL``'s origin, with its
token, without following redirects, at most ``TAGSIFT_MAX_IMAGE_BYTES``; no other URL is ever fetched."""

from __future__ import annotations

import urllib.error
import urllib.request
from urllib.parse import urlsplit

from app.checks import shorten
from app.config import Settings

FETCH_TIMEOUT = 30.0


def same_origin(url: str, base: str) -> bool:
    a, b = urlsplit(url), urlsplit(base)
    return (a.scheme, a.hostname, a.port) == (b.scheme, b.hostname, b.port) and bool(a.scheme and a.hostname)


class FetchError(Exception):
    """Why a task image could not be read (the message names the URL or the setting to change)."""


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        raise FetchError(f"Label Studio answered a redirect ({code}) to {shorten(newurl, 200)}: not followed")


def fetch_image(ref: str, *, settings: Settings, token: str) -> bytes:
    """The image bytes from Label Studio (only from TAGSIFT_LABEL_STUDIO_URL; see the module docstring)."""
    base = settings.label_studio_url.rstrip("/")
    if not base:
        raise FetchError(
            "not an image of this dataset, and TAGSIFT_LABEL_STUDIO_URL is not set (tagsift reads task images "
            "only from the dataset or from that Label Studio)"
        )
    parts = urlsplit(ref)
    if parts.scheme or parts.netloc:
        if not same_origin(ref, base):
            raise FetchError(f"not an image of this dataset, and not on TAGSIFT_LABEL_STUDIO_URL ({base}): not read")
        url = ref
    elif ref.startswith("/"):
        url = base + ref
    else:
        raise FetchError("not an image of this dataset, and not a Label Studio path or URL")
    headers = {"Authorization": f"Token {token}"} if token else {}
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(urllib.request.Request(url, headers=headers), timeout=FETCH_TIMEOUT) as resp:
            data = resp.read(settings.max_image_bytes + 1)
    except urllib.error.HTTPError as exc:
        hint = " (set TAGSIFT_LABEL_STUDIO_TOKEN to a Label Studio API token)" if exc.code in (401, 403) else ""
        raise FetchError(f"Label Studio answered {exc.code} for {shorten(url, 200)}{hint}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise FetchError(f"cannot read {shorten(url, 200)} from Label Studio ({exc})") from None
    if len(data) > settings.max_image_bytes:
        raise FetchError(f"over the limit of {settings.max_image_bytes} bytes")
    return data

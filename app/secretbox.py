"""Secrets stored encrypted at rest (webhook signing secrets), with keys from ``TAGSIFT_SECRET_KEYS``.

``TAGSIFT_SECRET_KEYS`` is a comma-separated list of keys, newest first (each at least 32 characters, e.g.
``openssl rand -hex 32``). New values are sealed with the first key; a stored value sealed with any key of the
list opens. A stored value that is not sealed (written before keys were set, or while none is) is legacy plain text
and opens as itself; ``tagsift reencrypt-secrets`` seals every stored secret with the newest key.

Rotation: put the new key first and keep the old ones after it (every process: API and workers), restart, run
``tagsift reencrypt-secrets``, then remove the old keys. With no key set, secrets are stored in plain text as before
(the embedded single-machine default); the API logs a warning when it stores one.

The construction uses the standard library only (no AES there, and the ``cryptography`` package is not a
dependency): per key, an encryption key and a MAC key are derived with HMAC-SHA256; the plain text is XORed with an
HMAC-SHA256 keystream over a random 12-byte nonce and a block counter (a PRF in counter mode), and the key id,
nonce and cipher text are authenticated with HMAC-SHA256 truncated to 128 bits (encrypt-then-MAC, compared in
constant time). A webhook secret (``whsec_`` and 32 random bytes in base64url) is sealed as its 32 bytes, so that
the sealed form fits the 100-character column (96 characters)::

    tse1:<key id: 8 hex of SHA-256(key)>:<base64url(nonce 12 | cipher text | tag 16)>
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets

from app.config import get_settings

log = logging.getLogger(__name__)

PREFIX = "tse1:"
_NONCE, _TAG = 12, 16
_WEBHOOK = "whsec_"


class SecretKeyError(ValueError):
    """A sealed value that no configured key opens, or one that was altered."""


def _kid(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:8]


def _derive(key: str, purpose: bytes) -> bytes:
    return hmac.new(key.encode(), b"tagsift secretbox v1 " + purpose, hashlib.sha256).digest()


def _stream(enc_key: bytes, nonce: bytes, n: int) -> bytes:
    blocks = (hmac.new(enc_key, nonce + i.to_bytes(4, "big"), hashlib.sha256).digest() for i in range((n + 31) // 32))
    return b"".join(blocks)[:n]


def _tag(mac_key: bytes, kid: str, nonce: bytes, ct: bytes) -> bytes:
    return hmac.new(mac_key, PREFIX.encode() + kid.encode() + nonce + ct, hashlib.sha256).digest()[:_TAG]


def _pack(plain: str) -> bytes:
    """``w`` + the 32 bytes of a webhook secret, or ``p`` + any other text in UTF-8."""
    token = plain.removeprefix(_WEBHOOK)
    if plain.startswith(_WEBHOOK) and len(token) == 43:
        try:
            raw = base64.urlsafe_b64decode(token + "=")
        except ValueError:
            raw = b""
        if len(raw) == 32 and base64.urlsafe_b64encode(raw).decode().rstrip("=") == token:
            return b"w" + raw
    return b"p" + plain.encode()


def _unpack(data: bytes) -> str:
    if data[:1] == b"w":
        return _WEBHOOK + base64.urlsafe_b64encode(data[1:]).decode().rstrip("=")
    return data[1:].decode()


def keys() -> list[str]:
    return get_settings().secret_key_list


def seal(plain: str, key: str | None = None) -> str:
    """``plain`` sealed with ``key`` (default: the newest configured key); plain text when no key is configured."""
    if key is None:
        configured = keys()
        if not configured:
            log.warning("TAGSIFT_SECRET_KEYS is not set: a webhook secret is stored in plain text")
            return plain
        key = configured[0]
    nonce = secrets.token_bytes(_NONCE)
    data = _pack(plain)
    ct = bytes(a ^ b for a, b in zip(data, _stream(_derive(key, b"enc"), nonce, len(data)), strict=True))
    kid = _kid(key)
    blob = nonce + ct + _tag(_derive(key, b"mac"), kid, nonce, ct)
    return f"{PREFIX}{kid}:{base64.urlsafe_b64encode(blob).decode().rstrip('=')}"


def is_sealed(stored: str) -> bool:
    return stored.startswith(PREFIX)


def unseal(stored: str) -> str:
    """The plain text of a stored value (legacy plain text opens as itself); :class:`SecretKeyError` otherwise."""
    if not is_sealed(stored):
        return stored
    try:
        kid, b64 = stored[len(PREFIX) :].split(":", 1)
        blob = base64.urlsafe_b64decode(b64 + "=" * (-len(b64) % 4))
    except ValueError:
        raise SecretKeyError("a sealed secret is malformed") from None
    key = next((k for k in keys() if _kid(k) == kid), None)
    if key is None:
        raise SecretKeyError(f"no key in TAGSIFT_SECRET_KEYS has the id {kid} (was an old key removed too soon?)")
    nonce, ct, tag = blob[:_NONCE], blob[_NONCE:-_TAG], blob[-_TAG:]
    if len(blob) < _NONCE + _TAG or not hmac.compare_digest(tag, _tag(_derive(key, b"mac"), kid, nonce, ct)):
        raise SecretKeyError(f"a sealed secret does not verify with key {kid} (altered?)")
    return _unpack(bytes(a ^ b for a, b in zip(ct, _stream(_derive(key, b"enc"), nonce, len(ct)), strict=True)))


def needs_reseal(stored: str) -> bool:
    """True when ``stored`` is not sealed with the newest key (and a key is configured)."""
    configured = keys()
    return bool(configured) and not stored.startswith(f"{PREFIX}{_kid(configured[0])}:")

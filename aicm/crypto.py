"""Secrets at rest: AES-256-GCM under a key derived from ``security.encryption_key``.

The configured key is any string (a generated one, or an operator's passphrase-like value); HKDF-SHA256
turns it into the 32-byte AES key. Each value gets a fresh 96-bit nonce. ``associated_data`` binds a
ciphertext to where it is stored (``"project:12:repository"``), so a value copied into another row does not
decrypt. The stored text is ``v1.<base64url(nonce + ciphertext)>``::

    box = SecretBox(settings.security.encryption_key)
    stored = box.encrypt(token, associated_data=f"project:{project.id}:repository")
    token = box.decrypt(stored, associated_data=f"project:{project.id}:repository")
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = ["DecryptionError", "SecretBox", "generate_key", "load_or_create_key"]

VERSION = "v1"
NONCE_BYTES = 12
KEY_INFO = b"aicm secret box v1"


class DecryptionError(ValueError):
    """The stored value is damaged, or was encrypted under another key or for another place."""


def generate_key() -> str:
    """A new random key (256 bits, URL-safe text)."""
    return secrets.token_urlsafe(32)


def load_or_create_key(path: Path) -> str:
    """The key stored at ``path``, generating it (file mode 0600, never overwritten) on first use."""
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    key = generate_key()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process won the race; use its key
        return path.read_text().strip()
    with os.fdopen(fd, "w") as file:
        file.write(key + "\n")
    return key


class SecretBox:
    """Encrypts and decrypts short secrets (tokens, private keys) with one configured key."""

    def __init__(self, key: str) -> None:
        if not key:
            raise ValueError("the encryption key is empty")
        derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=KEY_INFO).derive(key.encode())
        self._aead = AESGCM(derived)

    def __repr__(self) -> str:
        return "SecretBox(<key hidden>)"

    def encrypt(self, plaintext: str, *, associated_data: str = "") -> str:
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, plaintext.encode(), associated_data.encode())
        return f"{VERSION}.{base64.urlsafe_b64encode(nonce + sealed).decode()}"

    def decrypt(self, stored: str, *, associated_data: str = "") -> str:
        version, _, body = stored.partition(".")
        if version != VERSION:
            raise DecryptionError("unknown secret format")
        try:
            raw = base64.urlsafe_b64decode(body.encode())
            plaintext = self._aead.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], associated_data.encode())
        except (binascii.Error, ValueError, InvalidTag):
            raise DecryptionError("the secret cannot be decrypted with this key") from None
        return plaintext.decode()

"""Signing keys for access tokens.

HS256 uses ``jwt.secret``; outside production an empty secret means a development secret generated once and
kept in ``<data_dir>/jwt_secret`` (mode 0600), so restarts keep tokens valid and nothing is hard-coded.
RS256/ES256 read PEM key files.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from aicm.config import Settings


@dataclass(frozen=True)
class SigningKeys:
    algorithm: str
    signing_key: str
    verifying_key: str


def development_secret(data_dir: str | Path) -> str:
    """Read the development secret, creating it on first use (safe when several workers race)."""
    path = Path(data_dir) / "jwt_secret"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_urlsafe(48))
    return path.read_text().strip()


def load_keys(settings: Settings) -> SigningKeys:
    jwt = settings.jwt
    if jwt.algorithm == "HS256":
        secret = jwt.secret or development_secret(settings.app.data_dir)
        return SigningKeys("HS256", secret, secret)
    private = Path(jwt.private_key_file).read_text()
    public = Path(jwt.public_key_file).read_text()
    return SigningKeys(jwt.algorithm, private, public)

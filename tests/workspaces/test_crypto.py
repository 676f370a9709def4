from __future__ import annotations

import stat
from pathlib import Path

import pytest

from aicm.crypto import DecryptionError, SecretBox, generate_key, load_or_create_key


def test_a_secret_round_trips_and_each_encryption_differs() -> None:
    box = SecretBox("any length key string")
    first, second = box.encrypt("ghp_token", associated_data="project:1"), box.encrypt("ghp_token")
    assert first != second
    assert "ghp_token" not in first
    assert box.decrypt(first, associated_data="project:1") == "ghp_token"
    assert box.decrypt(second) == "ghp_token"
    assert "key" not in repr(box).replace("<key hidden>", "")


@pytest.mark.parametrize(
    "change",
    [
        lambda stored: (SecretBox("another key"), stored, "project:1"),
        lambda stored: (SecretBox("k"), stored, "project:2"),
        lambda stored: (
            SecretBox("k"),
            stored[:-4] + ("AAAA" if not stored.endswith("AAAA") else "BBBB"),
            "project:1",
        ),
        lambda stored: (SecretBox("k"), "v1.not-base64!!", "project:1"),
        lambda stored: (SecretBox("k"), "v0." + stored[3:], "project:1"),
        lambda stored: (SecretBox("k"), "v1.", "project:1"),
    ],
)
def test_wrong_key_place_or_damaged_value_does_not_decrypt(change) -> None:  # type: ignore[no-untyped-def]
    stored = SecretBox("k").encrypt("secret", associated_data="project:1")
    box, value, place = change(stored)
    with pytest.raises(DecryptionError):
        box.decrypt(value, associated_data=place)


def test_generated_key_is_stored_once_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "data" / "encryption.key"
    key = load_or_create_key(path)
    assert len(key) >= 43 and key != generate_key()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_key(path) == key


def test_an_empty_key_is_refused() -> None:
    with pytest.raises(ValueError):
        SecretBox("")

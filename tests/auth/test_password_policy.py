"""The shipped common-password blocklist."""

from __future__ import annotations

from importlib import resources

import pytest

from aicm.auth.password_policy import common_passwords, is_common


@pytest.mark.parametrize(
    "password",
    [
        "password",
        "123456",
        "qwerty",
        "iloveyou",
        "password123",
        "Password123",
        "qwertyuiop",
        "QWERTYUIOP",
        "1234567890",
        "iloveyou123",
        "1q2w3e4r5t",
        "1qaz2wsx3edc",
        "administrator",
        "football2024",
        "welcome123",
        "p@ssw0rd123",
    ],
)
def test_well_known_passwords_are_common(password: str) -> None:
    assert is_common(password)


@pytest.mark.parametrize("password", ["correct horse battery staple", "vX9#qLm2!tRw", "my dog ate 7 lemons"])
def test_unusual_passwords_are_not_common(password: str) -> None:
    assert not is_common(password)


def test_the_list_ships_as_package_data_lower_case_and_matters_for_a_ten_character_minimum() -> None:
    text = resources.files("aicm.auth").joinpath("common_passwords.txt").read_text(encoding="utf-8")
    lines = text.splitlines()
    assert lines == [line.strip().lower() for line in lines if line.strip()]
    assert len(set(lines)) == len(lines) == len(common_passwords())
    assert len(lines) >= 2000
    assert sum(1 for line in lines if len(line) >= 10) >= 1000
    assert common_passwords() is common_passwords()  # loaded once

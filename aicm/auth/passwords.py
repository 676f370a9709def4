"""Password hashing (argon2id) and the password policy."""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from aicm.auth.password_policy import is_common
from aicm.errors import BadUserInput

MIN_LENGTH = 10
MAX_LENGTH = 1024  # bounds hashing work per request

_hasher = PasswordHasher()
# Verified against when the email is unknown, so both paths cost one argon2 verification.
_DUMMY_HASH = _hasher.hash("aicm-dummy-password-for-timing")


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(password_hash: str) -> bool:
    return _hasher.check_needs_rehash(password_hash)


def check_policy(password: str, *, email: str, field: str = "password") -> None:
    if len(password) < MIN_LENGTH:
        raise BadUserInput(f"Password must be at least {MIN_LENGTH} characters", field=field)
    if len(password) > MAX_LENGTH:
        raise BadUserInput(f"Password must be at most {MAX_LENGTH} characters", field=field)
    if "\x00" in password:
        raise BadUserInput("Password must not contain NUL characters", field=field)
    if password.strip().lower() in {email.lower(), email.split("@")[0].lower()}:
        raise BadUserInput("Password must not be your email address", field=field)
    if is_common(password):
        raise BadUserInput("Password is too common; choose another", field=field)

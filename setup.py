"""Packaging that pyproject.toml cannot express: the top-level ``migrations/`` folder ships in the wheel as
``aicm/migrations`` (``aicm.db.migrations_dir`` looks there first, then in the checkout)."""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["aicm*"]), "aicm.migrations", "aicm.migrations.models"],
    package_dir={"aicm.migrations": "migrations"},
)

"""Structured logging (CONTRACT §6): ``setup`` installs it; ``redaction``, ``context``, ``formatting`` and
``rotation`` hold its parts. Import from the submodules: this file imports nothing."""

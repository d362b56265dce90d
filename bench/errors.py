"""Errors shown to users as one line, with exit code 2."""

from __future__ import annotations

__all__ = ["ConfigError"]


class ConfigError(ValueError):
    """Invalid user input (sweep file, override, CLI argument); the message is one line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))

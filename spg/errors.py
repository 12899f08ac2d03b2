"""The errors that mean "the user must change something" (printed without a traceback by the CLI)."""

from __future__ import annotations


def _user_errors() -> tuple[type[BaseException], ...]:
    from .backbones import WeightsNotFoundError
    from .config import ConfigError
    from .data import DatasetError

    return (WeightsNotFoundError, DatasetError, ConfigError)


USER_ERRORS = _user_errors()

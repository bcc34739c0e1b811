"""Errors a user can fix: the CLI prints them as one line and exits non-zero, before training."""


class SegtrainError(Exception):
    """A problem with the user's configuration or data, described in one line with the fix."""


class DataError(SegtrainError, ValueError):
    """Bad or missing data: the message names the file, what is wrong and how to fix it."""


class ConfigError(SegtrainError, ValueError):
    """A bad configuration value: the message names the parameter and what is allowed."""

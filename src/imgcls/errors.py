"""Errors meant for the user: entry points print their message alone and exit non-zero."""


class UserError(Exception):
    """Bad input or configuration that the user can fix; the message says what and where."""


class DataError(UserError):
    """A dataset is missing, malformed or inconsistent (names the file, row and column)."""


class WeightsError(UserError):
    """Pretrained weights are requested but cannot be loaded offline."""


class CheckpointError(UserError):
    """A checkpoint is missing, truncated or does not match the configured model."""


class ConfigError(UserError):
    """A configuration value cannot work (e.g. an image too small for the chosen net)."""


class TrainingError(UserError):
    """Training cannot go on (e.g. the loss became NaN); says at which step and what to change."""

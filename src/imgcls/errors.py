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


def find_user_error(exc: BaseException | None) -> UserError | None:
    """The ``UserError`` behind ``exc``, also when a library wrapped it (``hydra.utils.instantiate``
    re-raises a constructor's ``ConfigError`` as an ``InstantiationException``)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, UserError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__  # explicit `raise ... from e` (as Hydra does), not any context
    return None


class ExportError(UserError):
    """An exported model cannot be written or does not reproduce the checkpoint's outputs."""

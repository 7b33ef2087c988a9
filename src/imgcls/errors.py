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


# optional libraries -> the extra of pyproject.toml that installs them
EXTRAS = {
    "optuna": "sweep",
    "cmaes": "sweep",
    "submitit": "sweep",
    "mlflow": "track",
    "wandb": "track",
    "onnx": "export",
    "onnxscript": "export",
    "onnxruntime": "export",
    "timm": "timm",
    "litdata": "stream",
    "scipy": "flowers",
}


def missing_extra(exc: BaseException) -> ConfigError | None:
    """An optional library that is not installed, as the command that installs it."""
    name = str(getattr(exc, "name", "") or "").split(".")[0]
    if not isinstance(exc, ModuleNotFoundError) or name not in EXTRAS:
        return None
    return ConfigError(f"{name} is not installed: pip install -e '.[{EXTRAS[name]}]'")


def find_user_error(exc: BaseException | None) -> UserError | None:
    """The ``UserError`` behind ``exc``, also when a library wrapped it (``hydra.utils.instantiate``
    re-raises a constructor's ``ConfigError`` as an ``InstantiationException``); a missing
    optional library becomes the install command."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, UserError):
            return exc
        if (missing := missing_extra(exc)) is not None:
            return missing
        seen.add(id(exc))
        exc = exc.__cause__  # explicit `raise ... from e` (as Hydra does), not any context
    return None


class ExportError(UserError):
    """An exported model cannot be written or does not reproduce the checkpoint's outputs."""

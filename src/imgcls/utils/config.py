"""Config helpers: project-root resolver, plain-container conversion, config tree printing."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf


def project_root() -> Path:
    """The repository root (holds ``configs/``): ``$PROJECT_ROOT``, else found from this file or cwd."""
    env = os.environ.get("PROJECT_ROOT")
    if env:
        return Path(env).resolve()
    for start in (Path(__file__).resolve(), Path.cwd().resolve()):
        for parent in (start, *start.parents):
            if (parent / "configs" / "train.yaml").is_file():
                return parent
    return Path.cwd().resolve()


def first_set(*values: Any) -> Any:
    """The first value that is not null/empty (``oc.select`` returns a null value as is)."""
    return next((v for v in values if v is not None and v != ""), None)


def register_resolvers() -> None:
    """Register ``${project_root:}`` once, so configs can locate the repo without sys.path hacks.

    Also ``${first_set:a,b,...}``, e.g. ``resume=<run dir>`` choosing ``hydra.run.dir``.
    """
    if not OmegaConf.has_resolver("project_root"):
        OmegaConf.register_new_resolver("project_root", lambda: str(project_root()))
    if not OmegaConf.has_resolver("first_set"):
        OmegaConf.register_new_resolver("first_set", first_set)
    # tracker configs (configs/logger/mlflow.yaml): a run's name, tags, a store's folder
    if not OmegaConf.has_resolver("path_name"):
        OmegaConf.register_new_resolver("path_name", lambda p: Path(str(p)).name)
    if not OmegaConf.has_resolver("tag_dict"):
        OmegaConf.register_new_resolver("tag_dict", tag_dict)
    if not OmegaConf.has_resolver("made_dir"):
        OmegaConf.register_new_resolver("made_dir", made_dir)
    # data=folder's image_size: only the bundled digits folder set is resized by default
    if not OmegaConf.has_resolver("digits_size"):
        OmegaConf.register_new_resolver("digits_size", digits_size)


def digits_size(root: Any, digits_dir: Any) -> list[int] | None:
    """``[28, 28]`` for the default digits root (its images are mixed-size), else null."""
    from imgcls.data.digits import digits_form  # lazy: the data package imports torch

    return [28, 28] if digits_form(str(root), digits_dir and str(digits_dir)) else None


def tag_dict(tags: Any) -> dict[str, str]:
    """``[dev, lr]`` -> ``{dev: "true", lr: "true"}``: MLflow's tags are key/value pairs."""
    return {str(t): "true" for t in (tags or [])}


def made_dir(path: Any) -> str:
    """``path``, created first: an SQLite store (MLflow, Optuna) cannot create its own folder."""
    Path(str(path)).mkdir(parents=True, exist_ok=True)
    return str(path)


def to_plain(value: Any) -> Any:
    """Convert OmegaConf containers/tuples into plain dicts and lists.

    Checkpoints store hyper-parameters; plain containers keep them loadable under
    ``torch.load(weights_only=True)`` (an OmegaConf object would need unpickling code).
    """
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    if isinstance(value, Mapping):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return [to_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested mappings into ``a/b/c`` keys (for hparams tables)."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(flatten(value, name))
        else:
            out[name] = value
    return out


def print_config_tree(cfg: DictConfig, save_to: Path | None = None, echo: bool = True) -> None:
    """Print the composed config as a rich tree (main groups first) and optionally save it.

    ``echo=False``: only the file (the console gets a short header, see ``utils.console``).
    """
    import rich
    import rich.syntax
    import rich.tree

    order = ["data", "model", "callbacks", "logger", "trainer", "paths", "extras"]
    tree = rich.tree.Tree("CONFIG", style="dim", guide_style="dim")
    keys = [k for k in order if k in cfg] + [k for k in cfg if k not in order]
    for key in keys:
        branch = tree.add(str(key), style="bold", guide_style="dim")
        value = cfg[key]
        text = (
            OmegaConf.to_yaml(value, resolve=False) if isinstance(value, DictConfig) else str(value)
        )
        branch.add(rich.syntax.Syntax(text, "yaml"))
    if echo:
        rich.print(tree)
    if save_to is not None:
        save_to.parent.mkdir(parents=True, exist_ok=True)
        with open(save_to, "w") as f:
            rich.print(tree, file=f)

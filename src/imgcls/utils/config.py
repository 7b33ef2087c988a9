"""Config helpers: project-root resolver, plain-container conversion, config tree printing."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from imgcls.utils.files import project_root


def first_set(*values: Any) -> Any:
    """The first value that is not null/empty (``oc.select`` returns a null value as is)."""
    return next((v for v in values if v is not None and v != ""), None)


def register_resolvers() -> None:
    """``${project_root:}`` locates the repo without sys.path hacks; ``${first_set:a,b}`` lets
    ``resume=<run dir>`` choose ``hydra.run.dir``; ``digits_size`` gives data=folder's
    bundled digits set its size; the rest serve the tracker configs."""
    resolvers: dict[str, Callable[..., Any]] = {
        "project_root": lambda: str(project_root()),
        "first_set": first_set,
        "path_name": lambda p: Path(str(p)).name,
        "tag_dict": tag_dict,
        "made_dir": made_dir,
        "digits_size": digits_size,
    }
    for name, fn in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


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
    """Plain dicts and lists: hyper-parameters in checkpoints must load under
    ``torch.load(weights_only=True)`` (an OmegaConf object would need unpickling code)."""
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    if isinstance(value, Mapping):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return [to_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_plain(dataclasses.asdict(value))
    return value


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested mappings into ``a/b/c`` keys (for hparams tables)."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        out.update(flatten(value, name) if isinstance(value, Mapping) else {name: value})
    return out


def print_config_tree(cfg: DictConfig, save_to: Path | None = None, echo: bool = True) -> None:
    """The composed config as a rich tree (main groups first), to the console and/or a file."""
    import rich
    import rich.syntax
    import rich.tree

    order = ["data", "model", "callbacks", "logger", "trainer", "paths", "extras"]
    tree = rich.tree.Tree("CONFIG", style="dim", guide_style="dim")
    keys = [k for k in order if k in cfg] + [k for k in cfg if k not in order]
    for key in keys:
        branch = tree.add(str(key), style="bold", guide_style="dim")
        value = cfg[key]
        text = OmegaConf.to_yaml(value) if isinstance(value, DictConfig) else str(value)
        branch.add(rich.syntax.Syntax(text, "yaml"))
    if echo:
        rich.print(tree)
    if save_to is not None:
        save_to.parent.mkdir(parents=True, exist_ok=True)
        with open(save_to, "w") as f:
            rich.print(tree, file=f)

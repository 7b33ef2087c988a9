"""Which data a checkpoint was trained on: what ``eval.py`` scores it on (and ``export.py`` takes
its parity batch from) unless ``data=`` is given.

It is the data config stored in the checkpoint (``datamodule_hyper_parameters``), read through
the trust boundary: a datamodule of this package (or ``extras.allowed_datamodules``), plain
values, the locations it writes to from this command's ``paths``. A run dir's
``.hydra/config.yaml`` is never read for it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from imgcls.engine import boundary
from imgcls.engine.checkpoints.load import load_checkpoint_dict, naming_file


def _data_overrides() -> tuple[bool, list[str]]:
    """(whether ``data=`` was given, the ``data.*`` overrides) of the running command."""
    try:
        from hydra.core.hydra_config import HydraConfig

        task = list(HydraConfig.get().overrides.task)
    except ValueError:  # no Hydra context
        return False, []
    keys = [o.lstrip("+~").split("=", 1)[0] for o in task]
    # data=<source>, or a whole other datamodule class: the command chooses the data
    explicit = any(k in ("data", "data._target_") for k in keys)
    return explicit, [o for o, k in zip(task, keys, strict=True) if k.startswith("data.")]


def stored_datamodule(cfg: DictConfig, ckpt_path: str | Path) -> tuple[Any, str] | None:
    """The datamodule the checkpoint's stored data config names (not set up), with a sentence
    saying where it came from; ``None`` when it stores none."""
    stored = load_checkpoint_dict(ckpt_path).get("datamodule_hyper_parameters")
    if not stored:
        return None
    where = f"stored in the checkpoint {ckpt_path} (datamodule_hyper_parameters)"
    _, dotted = _data_overrides()
    with naming_file(ckpt_path):
        data = boundary.datamodule_config(stored, "datamodule_hyper_parameters", cfg)
        if dotted:  # the command's own data.* overrides (trusted), on top of the checked values
            mine = OmegaConf.from_dotlist([o.split(".", 1)[1] for o in dotted])
            data.update(OmegaConf.to_container(mine, resolve=True))  # type: ignore[arg-type]
        dm = boundary.factory(data, "datamodule", "datamodule_hyper_parameters")()
    with open_dict(cfg):  # what the logs and the report show: the values used
        cfg.data = OmegaConf.create(data)
    return dm, f"{where}: {data['_target_']}"


def use_run_data(cfg: DictConfig) -> tuple[Any, str]:
    """The checkpoint's own datamodule unless ``data=`` was given (``None``: build ``cfg.data``),
    and a sentence for the log naming where the data config came from."""
    if _data_overrides()[0]:
        return None, f"data config: data={cfg.data._target_} as given on the command line"
    found = stored_datamodule(cfg, cfg.ckpt_path)
    if found is None:
        return None, (
            f"data config: {cfg.data._target_} from the eval config's default; the checkpoint "
            "stores no data config (datamodule_hyper_parameters): pass data=<source> to choose"
        )
    return found[0], f"data config: {found[1]} (data=<source> chooses another)"


def data_hint(ckpt_path: str) -> str:
    """What to pass when the given ``data=`` does not fit a checkpoint: its run's own choice."""
    hydra_yaml = Path(ckpt_path).parent.parent / ".hydra" / "hydra.yaml"
    choice = None
    if hydra_yaml.is_file():
        choice = OmegaConf.select(OmegaConf.load(hydra_yaml), "hydra.runtime.choices.data")
    if choice:
        return f"pass data={choice} as its run did, or leave data= out to use that run's data"
    return "pass the data= it was trained on"

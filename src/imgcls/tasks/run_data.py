"""Which data a checkpoint was trained on: what ``eval.py`` scores it on unless ``data=`` is given.

First the run's ``.hydra/config.yaml`` beside its ``checkpoints/``, then the data config stored in
the checkpoint's ``datamodule_hyper_parameters`` (runs without Hydra's run dir). A checkpoint is
data: its config is used only if every ``_target_`` is a data class of this package; the run's
config file may name your own."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from imgcls.errors import ConfigError

DATA_TARGET_PREFIX = "imgcls.data."


def _targets(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [str(node["_target_"])] if "_target_" in node else []
        return own + [t for v in node.values() for t in _targets(v)]
    if isinstance(node, list):
        return [t for v in node for t in _targets(v)]
    return []


def check_data_targets(data: dict[str, Any], where: str) -> None:
    """Refuse a stored data config that would build anything but our own data classes."""
    bad = [t for t in _targets(data) if not t.startswith(DATA_TARGET_PREFIX)]
    if bad or "_target_" not in data:
        raise ConfigError(
            f"the data config stored in {where} names {bad or 'no _target_'}, not a datamodule of "
            f"this package ({DATA_TARGET_PREFIX}*): give data=<source> explicitly"
        )


def _from_run_config(ckpt_path: Path) -> tuple[dict[str, Any], str] | None:
    run_cfg = ckpt_path.parent.parent / ".hydra" / "config.yaml"
    if ckpt_path.parent.name != "checkpoints" or not run_cfg.is_file():
        return None
    stored = OmegaConf.load(run_cfg)
    if "data" not in stored:
        return None
    data = OmegaConf.to_container(stored.data, resolve=True)  # in the run's own paths
    return data, f"the checkpoint's run ({run_cfg})"  # type: ignore[return-value]


def _from_checkpoint(ckpt_path: Path) -> tuple[dict[str, Any], str] | None:
    from imgcls.checkpointing.load import load_checkpoint_dict

    data = load_checkpoint_dict(ckpt_path).get("datamodule_hyper_parameters")
    if not isinstance(data, dict) or "_target_" not in data:
        return None
    return dict(data), f"stored in the checkpoint {ckpt_path} (datamodule_hyper_parameters)"


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


def use_run_data(cfg: DictConfig) -> str:
    """Point ``cfg.data`` at the checkpoint's own data unless ``data=`` was given (``data.*``
    overrides apply on top); returns a sentence for the log naming where it came from."""
    explicit, dotted = _data_overrides()
    if explicit:
        return f"data config: data={cfg.data._target_} as given on the command line"
    ckpt_path = Path(cfg.ckpt_path)
    found = _from_run_config(ckpt_path) or _from_checkpoint(ckpt_path)
    if found is None:
        return (
            f"data config: {cfg.data._target_} from the eval config's default; the checkpoint "
            "names no data of its own (no .hydra/config.yaml beside its run's checkpoints/): "
            "pass data=<source> to choose"
        )
    data, where = found
    if where.startswith("stored in the checkpoint"):  # a checkpoint is data: no foreign targets
        check_data_targets(data, str(ckpt_path))
    stored = OmegaConf.create(data)
    if dotted:
        stored = OmegaConf.merge(
            stored, OmegaConf.from_dotlist([o.split(".", 1)[1] for o in dotted])
        )
    with open_dict(cfg):
        cfg.data = stored
    return f"data config: {where}: {data['_target_']} (data=<source> chooses another)"


def data_hparams(cfg: DictConfig) -> dict[str, Any]:
    """The resolved ``data`` config as plain types, for the datamodule's checkpoint hparams."""
    data = OmegaConf.to_container(cfg.data, resolve=True)
    return data if isinstance(data, dict) else {}


def data_hint(ckpt_path: str) -> str:
    """What to pass when the given ``data=`` does not fit a checkpoint: its run's own choice."""
    hydra_yaml = Path(ckpt_path).parent.parent / ".hydra" / "hydra.yaml"
    choice = None
    if hydra_yaml.is_file():
        choice = OmegaConf.select(OmegaConf.load(hydra_yaml), "hydra.runtime.choices.data")
    if choice:
        return f"pass data={choice} as its run did, or leave data= out to use that run's data"
    return "pass the data= it was trained on"

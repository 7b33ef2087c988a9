"""Every config group option composes; objects instantiate; sizes come from the data."""

from __future__ import annotations

import re

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from imgcls.builder import build_model, build_trainer
from tests.conftest import CONFIGS, run_entry


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


def test_help_lists_groups_and_options_one_line_each() -> None:
    proc = run_entry("train", "--help")
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = dict(line.split(": ", 1) for line in proc.stdout.splitlines() if ": " in line)
    expected = {
        "model": {"lenet", "mlp", "simple_cnn", "resnet18", "resnet152", "timm"},
        "trainer": {"cpu", "gpu", "ddp", "ddp_sim", "mps", "default"},
        "debug": {"fdr", "overfit", "limit", "profiler", "default"},
        "logger": {"tensorboard", "csv", "many_loggers"},
        "data": {"mnist", "folder", "csv", "flowers", "shards"},
    }
    for group, names in expected.items():
        assert names <= set(lines[group].split(", ")), (group, lines[group])
    for group in ["callbacks", "experiment", "paths", "extras", "data/augment", "model/scheduler"]:
        assert lines[group], group
    # a base is not a model choice, and the help is not the whole config dump
    assert "resnet_base" not in proc.stdout and "classifier" not in lines["model"]
    assert "optimized_metric" not in proc.stdout and "python src/train.py" in proc.stdout


def test_model_configs_take_sizes_from_data() -> None:
    for path in (CONFIGS / "model").glob("*.yaml"):
        assert "num_classes" not in path.read_text(), f"{path.name} hand-types num_classes"


@pytest.mark.parametrize("option", options("model"))
def test_every_model_composes_and_is_sized_by_mnist(option, make_cfg, mnist_dm) -> None:
    # pretrained weights are not here offline (tests/test_resnet.py covers loading them)
    offline = ["model.weights=null"] if option.startswith(("resnet", "timm")) else []
    cfg = make_cfg("train", [f"model={option}", *offline])
    model = build_model(cfg, mnist_dm)
    out = model(torch.zeros(2, 1, 28, 28))
    assert out.shape == (2, 10)
    assert model.hparams["spec"]["class_names"] == [str(i) for i in range(10)]


@pytest.mark.parametrize(
    "group", ["data", "trainer", "logger", "callbacks", "debug", "experiment", "extras"]
)
def test_every_option_composes(group, make_cfg) -> None:
    for option in options(group):
        cfg = make_cfg("train", [f"{group}={option}"])
        assert cfg.hydra.runtime.choices[group] == option
        # every interpolation of the composed config resolves (resolvers, relative keys)
        job = OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"])
        assert OmegaConf.to_container(job, resolve=True)["trainer"]["_target_"]


@pytest.mark.parametrize("option", ["default", "cpu", "ddp_sim"])
def test_cpu_trainers_instantiate(option, make_cfg) -> None:
    cfg = make_cfg("train", [f"trainer={option}"])
    trainer, callbacks, loggers = build_trainer(cfg)
    assert trainer.max_epochs == cfg.trainer.max_epochs
    assert {type(c).__name__ for c in callbacks} >= {
        "ModelCheckpoint",
        "RichProgressBar",
        "LearningRateMonitor",
    }
    assert [type(lg).__name__ for lg in loggers] == ["TensorBoardLogger"]


@pytest.mark.parametrize("option", ["csv", "many_loggers", "none"])
def test_logger_options_instantiate(option, make_cfg) -> None:
    cfg = make_cfg("train", [f"logger={option}"])
    _, _, loggers = build_trainer(cfg)
    names = sorted(type(lg).__name__ for lg in loggers)
    assert (
        names
        == {"csv": ["CSVLogger"], "many_loggers": ["CSVLogger", "TensorBoardLogger"], "none": []}[
            option
        ]
    )


def test_gpu_configs_ask_for_gpus(make_cfg) -> None:
    ddp = make_cfg("train", ["trainer=ddp"]).trainer
    assert (ddp.strategy, ddp.accelerator, ddp.devices) == ("ddp", "gpu", "auto")
    # precision and SyncBN are the user's choice, not a side effect of picking DDP
    default = make_cfg("train", []).trainer
    assert (ddp.precision, ddp.sync_batchnorm) == (default.precision, False)
    assert make_cfg("train", ["trainer=gpu"]).trainer.accelerator == "gpu"
    assert make_cfg("train", ["trainer=mps"]).trainer.accelerator == "mps"


def test_folder_resizes_only_the_bundled_digits_set(make_cfg, tmp_path) -> None:
    assert list(make_cfg("train", ["data=folder"]).data.image_size) == [28, 28]
    user = make_cfg("train", ["data=folder", f"data.root={tmp_path}/photos"]).data
    assert user.image_size is None
    assert list(make_cfg("train", ["data=flowers"]).data.image_size) == [224, 224]


def test_caches_live_under_one_root(make_cfg) -> None:
    for overrides in (["data=folder"], ["data=csv"], ["data=flowers"], ["model=resnet18"]):
        cfg = make_cfg("train", overrides)
        dirs = [d for d in (cfg.data.get("cache_dir"), cfg.model.get("cache_dir")) if d]
        assert dirs and all(d.startswith(cfg.paths.cache_dir + "/") for d in dirs), overrides


def test_augment_option_builds_a_batch_transform(make_cfg) -> None:
    cfg = make_cfg("train", ["data/augment=light"])
    aug = instantiate(cfg.data.train_augment)
    assert aug.degrees == cfg.data.train_augment.degrees == 10
    # one image eight times: a per-sample transform moves each copy on its own
    x = torch.rand(1, 1, 28, 28).expand(8, 1, 28, 28).clone()
    y = aug(x)
    assert y.shape == x.shape
    assert len({tuple(image.flatten().tolist()) for image in y}) == 8


def test_run_dirs_are_unique_per_run(make_cfg, tmp_path) -> None:
    cfg = make_cfg("train", [])
    run_dir, sweep_dir = str(cfg.hydra.run.dir), str(cfg.hydra.sweep.dir)
    assert re.fullmatch(
        rf"{tmp_path}/logs/train/runs/\d{{4}}-\d\d-\d\d_\d\d-\d\d-\d\d_\d{{6}}", run_dir
    )
    assert re.fullmatch(rf"{tmp_path}/logs/train/multiruns/[\d_-]+", sweep_dir)
    assert cfg.hydra.sweep._get_node("subdir")._value() == "${hydra.job.num}"

"""Fresh runs build with Hydra (as its users expect); checkpoints rebuild through the boundary.

A new net is one file under ``imgcls/models/nets/`` plus one YAML, with no registry edit: it
trains, and its checkpoint evaluates, predicts, exports and resumes (in a copy of the project)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from imgcls.engine.boundary import UnsafeCheckpointError, allow_from_config
from imgcls.errors import ConfigError
from imgcls.models.load import load_classifier
from imgcls.tasks.train import train
from tests.conftest import MNIST_DATA, compose_config, copy_project, run_in_project
from tests.test_trust_boundary import TINY

NET = '''"""A user's net: a file here is all it takes (the trust boundary allows nets defined here)."""

from torch import Tensor, nn


class LeakyAct(nn.Module):
    def __init__(self, slope: float = 0.1) -> None:
        super().__init__()
        self.slope = slope

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.leaky_relu(x, self.slope)


class TinyNet(nn.Module):
    def __init__(self, in_channels, num_classes, image_size, hidden=32, act=None) -> None:
        super().__init__()
        size = in_channels * image_size[0] * image_size[1]
        self.act = act
        self.body = nn.Sequential(
            nn.Flatten(), nn.Linear(size, hidden), act or nn.ReLU(), nn.Linear(hidden, num_classes)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)
'''
YAML = """defaults:
  - /bases/classifier@_here_
  - scheduler: one_cycle
  - _self_

net:
  _target_: imgcls.models.nets.tiny_net.TinyNet
  hidden: 32
  act:  # a nested target: built by Hydra in a fresh run, by the boundary from the checkpoint
    _target_: imgcls.models.nets.tiny_net.LeakyAct
    slope: 0.2
optimizer:
  lr: 0.01
"""
QUIET = ["logger=none", "~callbacks.diagnostics", "extras.print_config=false"]


@pytest.mark.slow
def test_a_new_net_file_trains_evaluates_predicts_exports_and_resumes(tmp_path: Path) -> None:
    project = copy_project(tmp_path / "project")
    (project / "data").symlink_to(MNIST_DATA)
    (project / "src/imgcls/models/nets/tiny_net.py").write_text(NET)
    (project / "configs/model/tiny_net.yaml").write_text(YAML)
    logs = tmp_path / "logs"
    fit = [*TINY, "model=tiny_net", *QUIET[2:], f"paths.log_dir={logs}"]
    run_in_project(project, "train", *fit)
    run = next(logs.glob("train/runs/*"))
    ckpt = run / "checkpoints" / "last.ckpt"
    common = [f"ckpt_path={ckpt}", f"paths.log_dir={logs}", *QUIET[2:]]
    evaluated = run_in_project(project, "eval", *common, *QUIET[:2], "data.test_size=200")
    assert "test/acc" in evaluated.stdout
    image = tmp_path / "digit.png"
    torch.manual_seed(0)
    from PIL import Image

    Image.new("L", (28, 28), 128).save(image)
    run_in_project(project, "predict", *common, f"input={image}")
    assert len(list(logs.glob("predict/runs/*/predictions.csv"))) == 1
    exported = run_in_project(project, "export", *common, "format=torchscript", "parity_images=8")
    assert "parity OK" in exported.stdout
    resumed = run_in_project(project, "train", *fit, "trainer.max_epochs=2", f"resume={run}")
    assert "resuming from" in resumed.stdout + resumed.stderr
    assert torch.load(ckpt, weights_only=True)["epoch"] == 1


def test_a_fresh_run_takes_any_optimizer_its_checkpoint_needs_the_users_allow_list(
    tmp_path: Path,
) -> None:
    """Hydra builds the user's optimizer (ASGD is not in the boundary's list); loading the
    checkpoint then needs ``extras.allowed_optimizers`` from the user's own config."""
    asgd = ["model.optimizer._target_=torch.optim.ASGD", "model.scheduler=null"]
    train(compose_config("train", [*TINY, *asgd], tmp_path))
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, weights_only=True)["optimizer_states"][0]["state"]  # it stepped
    with pytest.raises(UnsafeCheckpointError, match="add your own with extras.allowed_optimizers"):
        load_classifier(ckpt)
    with pytest.raises(ConfigError, match="not a subclass of Optimizer"):
        allow_from_config({"extras": {"allowed_optimizers": ["torch.nn.Linear"]}})
    allow_from_config({"extras": {"allowed_optimizers": ["torch.optim.ASGD"]}})
    try:
        assert load_classifier(ckpt).hparams["optimizer"]["_target_"] == "torch.optim.ASGD"
    finally:
        allow_from_config({})

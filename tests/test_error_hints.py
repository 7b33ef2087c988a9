"""A user error with an obvious fix names the fix: the override, the install command, the data=."""

from __future__ import annotations

from pathlib import Path

import pytest

from imgcls.errors import ConfigError, find_user_error
from imgcls.models.nets.lenet import LeNet
from imgcls.tasks.checkpoint_data import data_hint
from tests.conftest import ROOT, run_entry


def test_too_small_input_names_a_size_that_fits_and_another_net() -> None:
    with pytest.raises(ConfigError) as e:
        LeNet(in_channels=1, image_size=[8, 8], num_classes=10)
    assert str(e.value) == (
        "lenet: input 1x8x8 is too small for this net: resize the images "
        "(data.image_size=[16,16]) or choose a net without this limit (model=mlp)"
    )
    LeNet(in_channels=1, image_size=[16, 16], num_classes=10)  # the size it names works


def test_a_missing_optional_library_is_its_install_command() -> None:
    wrapped = RuntimeError("instantiate failed")
    wrapped.__cause__ = ModuleNotFoundError("No module named 'wandb'", name="wandb")
    error = find_user_error(wrapped)
    assert str(error) == "wandb is not installed: pip install -e '.[track]'"
    assert find_user_error(ModuleNotFoundError("x", name="numpyy")) is None  # not ours to name


def test_sweep_without_optuna_is_one_line_with_the_install_command(tmp_path: Path) -> None:
    block = tmp_path / "block"
    block.mkdir()
    (block / "sitecustomize.py").write_text(
        "import sys\n"
        "class _NoOptuna:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'optuna':\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, _NoOptuna())\n"
    )
    proc = run_entry(
        "train",
        "hparams_search=mnist_optuna",
        f"paths.log_dir={tmp_path}",
        env={"PYTHONPATH": f"{block}:{ROOT / 'src'}"},
        timeout=300,
    )
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: hydra/sweeper=optuna: optuna is not installed: pip install -e '.[sweep]'"
    ], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def test_eval_data_mismatch_names_the_runs_data(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "hydra.yaml").write_text(
        "hydra:\n  runtime:\n    choices:\n      data: folder\n"
    )
    hint = data_hint(str(run / "checkpoints" / "epoch_001.ckpt"))
    assert hint == "pass data=folder as its run did, or leave data= out to use that run's data"
    assert data_hint(str(tmp_path / "elsewhere.ckpt")) == "pass the data= it was trained on"

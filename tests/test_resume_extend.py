"""Resume that extends a run (train 1 epoch, then continue to 2), refusals, resume selection.

Runs are small (20 steps per epoch on real MNIST, 1000 validation images) so that the
accuracy comparisons are on real data but take seconds.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
import torch

from imgcls.engine.checkpoints.resume import find_resume_checkpoint
from imgcls.errors import CheckpointError
from imgcls.tasks.train import train
from tests.conftest import compose_config, run_entry, tiny

# 20 steps per epoch (epochs: each test's), all 1000 validation images, no test
SMALL = tiny(
    "data.val_size=1000",
    "test=false",
    epochs=None,
    train_batches=20,
    val_batches=None,
    test_batches=None,
    logger="csv",
    accelerator="cpu",
)
NOT_SET = "`weights_only` was not set"


def _val_acc(run: Path) -> float:
    return json.loads((run / "metrics.json").read_text())["metrics"]["val/acc"]


def _epochs_done(run: Path) -> int:
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    return ckpt["loops"]["fit_loop"]["epoch_progress"]["total"]["processed"]


def test_lenet_onecycle_run_extends_from_1_to_2_epochs_as_a_user_runs_it(tmp_path: Path) -> None:
    run = tmp_path / "run"
    first = run_entry(
        "train", "model=lenet", "trainer.max_epochs=1", *SMALL, f"hydra.run.dir={run}"
    )
    assert first.returncode == 0, first.stderr[-3000:]
    acc1 = _val_acc(run)

    resumed = run_entry("train", "model=lenet", "trainer.max_epochs=2", *SMALL, f"resume={run}")

    out = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Traceback" not in out
    assert _epochs_done(run) == 2
    assert _val_acc(run) >= acc1
    assert (
        "resumed OneCycleLR at step 20 with this run's plan (total_steps 20 -> 40); "
        "its progress is the checkpoint's"
    ) in out
    assert NOT_SET not in out
    assert NOT_SET not in first.stdout + first.stderr
    assert sorted(p.name for p in (tmp_path).iterdir()) == ["run"]  # the same run dir


@pytest.mark.parametrize("model", ["simple_cnn", "mlp"])
def test_other_shipped_schedulers_extend_from_1_to_2_epochs(model: str, tmp_path: Path) -> None:
    """simple_cnn: OneCycleLR per step like lenet; mlp: no scheduler."""
    train(compose_config("train", [f"model={model}", "trainer.max_epochs=1", *SMALL], tmp_path))
    acc1 = _val_acc(tmp_path)
    # the run dir holds checkpoints: it continues from them (as with resume=<run dir>)
    train(compose_config("train", [f"model={model}", "trainer.max_epochs=2", *SMALL], tmp_path))
    assert _epochs_done(tmp_path) == 2
    assert _val_acc(tmp_path) >= acc1


@pytest.fixture(scope="module")
def two_epoch_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("two_epochs")
    train(compose_config("train", ["model=lenet", "trainer.max_epochs=2", *SMALL], out))
    return out


def test_shorter_max_epochs_is_refused(two_epoch_run: Path, tmp_path: Path) -> None:
    last = two_epoch_run / "checkpoints" / "last.ckpt"
    cfg = compose_config(
        "train", ["model=lenet", "trainer.max_epochs=1", *SMALL, f"ckpt_path={last}"], tmp_path
    )
    with pytest.raises(CheckpointError, match=r"has already trained 2 epoch\(s\).*max_epochs=1"):
        train(cfg)


def test_a_different_scheduler_is_refused_in_one_line(two_epoch_run: Path, tmp_path: Path) -> None:
    last = two_epoch_run / "checkpoints" / "last.ckpt"
    proc = run_entry(
        "train",
        "model=lenet",
        "trainer.max_epochs=3",
        "model.scheduler=null",
        *SMALL,
        f"ckpt_path={last}",
        f"paths.log_dir={tmp_path}",
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stdout + proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error")]
    assert errors == [
        f"error: checkpoint {last} was trained with scheduler OneCycleLR (interval step); this "
        "run configures none (interval step): a different scheduler cannot continue the stored "
        "schedule. Resume with the checkpoint's model.scheduler, or start a new run"
    ]


def test_resume_picks_the_highest_global_step_whatever_the_mtimes(
    two_epoch_run: Path, tmp_path: Path
) -> None:
    ckpt = torch.load(two_epoch_run / "checkpoints" / "last.ckpt", weights_only=True)
    ckpt_dir = tmp_path / "checkpoints"
    ckpt_dir.mkdir()
    for name, step in [("last", 20), ("epoch_001", 40), ("step_30", 30)]:
        torch.save({**ckpt, "global_step": step}, ckpt_dir / f"{name}.ckpt")
    # as after cp -r / rsync without -t: the older checkpoints look newest
    os.utime(ckpt_dir / "epoch_001.ckpt", (1_000_000, 1_000_000))
    os.utime(ckpt_dir / "step_30.ckpt", (2_000_000, 2_000_000))
    point = find_resume_checkpoint(ckpt_dir)
    assert point is not None and point.path.name == "epoch_001.ckpt" and point.global_step == 40

    # ties: the newest file
    torch.save({**ckpt, "global_step": 40}, ckpt_dir / "last.ckpt")
    os.utime(ckpt_dir / "last.ckpt", (3_000_000, 3_000_000))
    assert find_resume_checkpoint(ckpt_dir).path.name == "last.ckpt"  # type: ignore[union-attr]
    os.utime(ckpt_dir / "epoch_001.ckpt", (4_000_000, 4_000_000))
    assert find_resume_checkpoint(ckpt_dir).path.name == "epoch_001.ckpt"  # type: ignore[union-attr]

    # an unreadable file with a higher step in its name does not win
    (ckpt_dir / "step_99.ckpt").write_bytes(b"not a zip")
    assert find_resume_checkpoint(ckpt_dir).path.name == "epoch_001.ckpt"  # type: ignore[union-attr]


# -- compiled checkpoints ---------------------------------------------------------------------------
@pytest.mark.slow  # torch.compile of even the MLP takes ~30-60 s on 2 shared CPU cores
def test_compiled_checkpoint_loads_evaluates_and_resumes_uncompiled(tmp_path: Path) -> None:
    from imgcls.models.classifier import ImageClassifier

    run = tmp_path / "run"
    first = run_entry(
        "train",
        "model=mlp",
        "trainer.max_epochs=1",
        "model.compile=true",
        *SMALL,
        f"hydra.run.dir={run}",
    )
    assert first.returncode == 0, first.stderr[-3000:]
    last = run / "checkpoints" / "last.ckpt"
    keys = torch.load(last, weights_only=True)["state_dict"].keys()
    assert not [k for k in keys if "_orig_mod" in k]

    model = ImageClassifier.load_from_checkpoint(last).eval()
    x = torch.rand(4, 1, 28, 28)
    assert model(x).shape == (4, 10)

    ev = run_entry("eval", f"ckpt_path={last}", f"paths.log_dir={tmp_path}", "data.test_size=500")
    assert ev.returncode == 0, ev.stderr[-3000:]
    assert "test/acc" in ev.stdout + ev.stderr

    resumed = run_entry(
        "train", "model=mlp", "trainer.max_epochs=2", "model.compile=false", *SMALL, f"resume={run}"
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _epochs_done(run) == 2


def test_old_checkpoints_with_orig_mod_keys_load_and_resume(two_epoch_run: Path, tmp_path: Path):
    """Checkpoints of versions that wrapped the net in torch.compile: ``net._orig_mod.*``."""
    from imgcls.models.classifier import ImageClassifier
    from imgcls.models.load import load_classifier

    ckpt = torch.load(two_epoch_run / "checkpoints" / "last.ckpt", weights_only=True)
    plain = dict(ckpt["state_dict"])
    ckpt["state_dict"] = {k.replace("net.", "net._orig_mod.", 1): v for k, v in plain.items()}
    assert any(k.startswith("net._orig_mod.") for k in ckpt["state_dict"])
    (tmp_path / "checkpoints").mkdir()
    old = tmp_path / "checkpoints" / "last.ckpt"
    torch.save(ckpt, old)

    model = ImageClassifier.load_from_checkpoint(old)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in plain.items())
    x = torch.rand(2, 1, 28, 28)
    assert torch.equal(model.eval()(x), load_classifier(old)(x))
    train(compose_config("train", ["model=lenet", "trainer.max_epochs=3", *SMALL], tmp_path))
    assert _epochs_done(tmp_path) == 3


def test_epoch_scheduler_continues_with_the_configured_plan(tmp_path: Path, caplog) -> None:
    """A StepLR run extended with another step_size: the new plan, the stored epoch count."""

    def step_lr(size: int) -> list[str]:
        sched = f"{{_target_:torch.optim.lr_scheduler.StepLR,_partial_:true,gamma:0.5,step_size:{size}}}"
        return ["model=mlp", "model.scheduler_interval=epoch", f"model.scheduler={sched}", *SMALL]

    train(compose_config("train", [*step_lr(1), "trainer.max_epochs=1"], tmp_path))
    caplog.set_level(logging.INFO, logger="imgcls")
    caplog.clear()
    train(compose_config("train", [*step_lr(5), "trainer.max_epochs=2"], tmp_path))
    assert "resumed StepLR at epoch 1 with this run's plan (step_size 1 -> 5)" in caplog.text
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    sched = ckpt["lr_schedulers"][0]
    assert sched["step_size"] == 5 and sched["last_epoch"] == 2
    # lr 0.003 halved once at epoch 1 under the old plan; no second halving under step_size=5
    assert ckpt["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(0.0015)

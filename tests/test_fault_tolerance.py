"""Fault tolerance: resume after SIGKILL/SIGTERM, atomic and safe checkpoints, guarded training.

One reference run (3 epochs x 20 steps of LeNet on real MNIST) is trained in-process once; the
interrupted runs use the same overrides and must end where it ends.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import namedtuple
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from imgcls.engine.checkpoints.atomic_io import atomic_torch_save
from imgcls.engine.checkpoints.resume import find_resume_checkpoint
from imgcls.errors import CheckpointError, ConfigError, TrainingError
from imgcls.models.load import load_classifier
from imgcls.tasks.train import train
from tests.conftest import ROOT, compose_config, run_entry, tiny

EPOCHS, STEPS_PER_EPOCH, EVERY = 3, 20, 5
# every validation and test image (test/acc is compared across runs), TensorBoard (its curves
# are read back) and the diagnostics callback as in a real run
BASE = tiny(
    "trainer.log_every_n_steps=5",
    "data.val_size=1000",
    f"callbacks.last_checkpoint.every_n_train_steps={EVERY}",
    epochs=EPOCHS,
    train_batches=STEPS_PER_EPOCH,
    val_batches=None,
    test_batches=None,
    logger=None,
    diagnostics=True,
    accelerator="cpu",
)
LOGGED_STEPS = list(range(4, EPOCHS * STEPS_PER_EPOCH, 5))  # trainer.log_every_n_steps=5
HELPERS_ENV = {"PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}

Progress = namedtuple("Progress", "epochs global_step")


def helper(name: str, cls: str, **kwargs: object) -> list[str]:
    """Overrides adding a ``tests.fault_helpers`` callback to a run."""
    return [f"+callbacks.{name}._target_=tests.fault_helpers.{cls}"] + [
        f"+callbacks.{name}.{k}={v}" for k, v in kwargs.items()
    ]


def progress(run_dir: Path) -> Progress:
    """Epochs (fully trained) and optimizer steps recorded in the run's last checkpoint."""
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    epochs = ckpt["loops"]["fit_loop"]["epoch_progress"]["total"]["processed"]
    return Progress(epochs, ckpt["global_step"])


def train_in_process(out: Path, *overrides: str) -> dict[str, float]:
    return train(compose_config("train", [*BASE, *overrides], out))


def scalar_steps(run_dir: Path, tag: str) -> list[int]:
    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    return [e.step for e in acc.Scalars(tag)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, float]]:
    out = tmp_path_factory.mktemp("reference")
    return out, train_in_process(out)


def copy_run(run: Path, dest: Path) -> Path:
    shutil.copytree(run / "checkpoints", dest / "checkpoints")
    return dest


# -- resume after a kill ------------------------------------------------------------------------
def test_sigkill_mid_epoch_2_then_resume_matches_uninterrupted(reference, tmp_path: Path) -> None:
    ref_dir, ref_metrics = reference
    run = tmp_path / "run"
    # checkpoints every 7 steps, logs every 5: the killed process has logged step 29 after its
    # last checkpoint (step 28), and the resumed one logs step 29 again
    every7 = "callbacks.last_checkpoint.every_n_train_steps=7"
    killed = run_entry(
        "train",
        *BASE,
        every7,
        f"hydra.run.dir={run}",
        *helper("kill", "KillAtStep", step=33),
        env=HELPERS_ENV,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    # the periodic checkpoint of step 28 (epoch 2 of 3) is what survived, and it loads safely
    assert progress(run) == Progress(epochs=1, global_step=28)
    assert 29 in scalar_steps(run, "train/loss")

    resumed = run_entry("train", *BASE, every7, f"resume={run}")

    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # continued in place, no new run dir
    log = (run / "train.log").read_text()
    assert f"resuming from {run / 'checkpoints' / 'last.ckpt'} (epoch 1, global step 28)" in log
    metrics = json.loads((run / "metrics.json").read_text())["metrics"]
    assert progress(run) == progress(ref_dir) == Progress(EPOCHS, EPOCHS * STEPS_PER_EPOCH)
    assert abs(metrics["test/acc"] - ref_metrics["test/acc"]) < 0.005
    assert metrics["test/acc"] > 0.9
    # one TensorBoard curve per metric: the stale step 29 of the killed process is purged
    assert scalar_steps(run, "train/loss") == LOGGED_STEPS
    assert scalar_steps(run, "lr-Adam") == LOGGED_STEPS


@pytest.mark.slow
def test_resume_from_epoch_end_reproduces_the_uninterrupted_run(reference, tmp_path: Path) -> None:
    ref_dir, ref_metrics = reference
    run = tmp_path / "run"
    # no step checkpoints: the crash in epoch 2 falls back to the end of epoch 1
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_in_process(
            run,
            "callbacks.last_checkpoint.every_n_train_steps=null",
            *helper("crash", "CrashAtStep", step=29),
        )
    assert progress(run) == Progress(epochs=1, global_step=20)

    metrics = train_in_process(run, "callbacks.last_checkpoint.every_n_train_steps=null")

    # optimizer, OneCycle schedule, RNG (shuffling) and val/acc_best all continued exactly
    assert progress(run) == progress(ref_dir)
    ours = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    theirs = torch.load(ref_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    for name in ("test/acc", "val/acc_best"):
        assert metrics[name] == pytest.approx(ref_metrics[name], abs=1e-6)


def test_resuming_a_finished_run_only_tests_and_reports_the_same_metrics(reference, tmp_path):
    ref_dir, ref_metrics = reference
    run = copy_run(ref_dir, tmp_path / "run")  # e.g. a job requeued after training ended

    metrics = train(compose_config("train", BASE, run))

    assert progress(run) == progress(ref_dir)
    for name in ("val/acc_best", "test/acc"):
        assert metrics[name] == pytest.approx(ref_metrics[name], abs=1e-6)


def test_sigterm_saves_a_checkpoint_and_the_resumed_run_finishes(tmp_path: Path) -> None:
    run = tmp_path / "run"
    cmd = [
        sys.executable,
        str(ROOT / "src" / "train.py"),
        *BASE,
        f"hydra.run.dir={run}",
        *helper("slow", "SlowSteps", seconds=0.1),
    ]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", **HELPERS_ENV}
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    last = run / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "run ended before it could be signalled"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)

    assert proc.returncode == 143, err[-2000:]
    assert "stopped by SIGTERM at global step" in err
    assert f"resume={run}" in err
    stopped_at = int(err.split("stopped by SIGTERM at global step ")[1].split()[0])
    assert 0 < stopped_at < EPOCHS * STEPS_PER_EPOCH
    ckpt = torch.load(last, weights_only=True)  # the SIGTERM checkpoint is safe to load
    assert ckpt["global_step"] == stopped_at

    train_in_process(run)  # resume=<run dir> itself is exercised by the SIGKILL test

    assert progress(run) == Progress(EPOCHS, EPOCHS * STEPS_PER_EPOCH)
    # same TensorBoard run, one curve from the first step to the end
    assert scalar_steps(run, "lr-Adam") == LOGGED_STEPS


# -- checkpoint files ---------------------------------------------------------------------------
def test_every_checkpoint_kind_loads_with_weights_only(reference) -> None:
    ref_dir, _ = reference
    files = sorted((ref_dir / "checkpoints").glob("*.ckpt"))
    assert {f.name for f in files} >= {"last.ckpt"} and any(
        f.name.startswith("epoch_") for f in files
    )
    for f in files:
        ckpt = torch.load(f, map_location="cpu", weights_only=True)
        assert isinstance(ckpt["hyper_parameters"], dict)
        assert ckpt["optimizer_states"] and ckpt["lr_schedulers"]
        rng = ckpt["callbacks"]["LastCheckpoint"]["rng_states"]
        assert set(rng) >= {"torch", "numpy", "python"}
        assert load_classifier(f).spec.num_classes == 10


def test_interrupted_atomic_write_keeps_the_previous_file(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "last.ckpt"
    atomic_torch_save({"state_dict": {"w": torch.ones(3)}}, target)

    def dies_mid_write(obj, f):  # half the bytes are out, then the process is told to stop
        f.write(b"PK\x03\x04 partial")
        raise KeyboardInterrupt

    monkeypatch.setattr("imgcls.engine.checkpoints.atomic_io.torch.save", dies_mid_write)
    with pytest.raises(KeyboardInterrupt):
        atomic_torch_save({"state_dict": {"w": torch.zeros(3)}}, target)
    assert torch.equal(torch.load(target, weights_only=True)["state_dict"]["w"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]

    def disk_full(obj, f):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("imgcls.engine.checkpoints.atomic_io.torch.save", disk_full)
    with pytest.raises(
        CheckpointError,
        match=rf"cannot write checkpoint {target}: .*No space left on device; the previous last.ckpt is intact",
    ):
        atomic_torch_save({"state_dict": {}}, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_truncated_last_checkpoint_falls_back_to_previous_good_file(
    reference, tmp_path: Path, caplog
) -> None:
    ref_dir, _ = reference
    run = copy_run(ref_dir, tmp_path / "run")
    last = run / "checkpoints" / "last.ckpt"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])  # a writer killed half-way (what plain writes risk)
    (run / "checkpoints" / ".last.ckpt.x1y2.tmp").write_bytes(
        data[:100]
    )  # temp file of a killed atomic write

    point = find_resume_checkpoint(run / "checkpoints")

    assert point is not None and point.path.name.startswith("epoch_")
    assert "cannot be read safely" in caplog.text and "previous good checkpoint" in caplog.text
    assert not list((run / "checkpoints").glob("*.tmp"))


def test_resume_refuses_when_no_checkpoint_is_readable(reference, tmp_path: Path) -> None:
    ref_dir, _ = reference
    run = copy_run(ref_dir, tmp_path / "run")
    for f in (run / "checkpoints").glob("*.ckpt"):
        f.write_bytes(f.read_bytes()[:1000])
    with pytest.raises(
        CheckpointError,
        match=r"no readable checkpoint to resume from: checkpoint .*last.ckpt cannot be read safely",
    ):
        train(compose_config("train", BASE, run))


def test_resume_into_another_model_names_layers_and_origin(reference, tmp_path: Path) -> None:
    ref_dir, _ = reference
    run = copy_run(ref_dir, tmp_path / "run")
    with pytest.raises(CheckpointError) as err:
        train(compose_config("train", [*BASE, "model=simple_cnn"], run))
    msg = str(err.value)
    last = run / "checkpoints" / "last.ckpt"
    assert msg.startswith(
        f"checkpoint {last} does not fit the model configured for this run "
        "(net=imgcls.models.nets.simple_cnn.SimpleCNN): net.features.0.weight: checkpoint (6, 1, 5, 5) "
        "vs model (4, 1, 3, 3); "
    )
    assert "missing in the checkpoint: net." in msg and "not in the model: net." in msg
    assert "The checkpoint was produced by net=imgcls.models.nets.lenet.LeNet" in msg
    assert '"channels": [6, 16]' in msg and "10 classes of 1x28x28 images" in msg
    assert "run overrides: trainer.max_epochs=3" in msg


def test_eval_of_checkpoint_with_wrong_layer_shape_names_it(reference, tmp_path: Path) -> None:
    ref_dir, _ = reference
    ckpt = torch.load(ref_dir / "checkpoints" / "last.ckpt", weights_only=True)
    key = next(k for k, v in ckpt["state_dict"].items() if k.endswith("weight") and v.ndim == 2)
    shape = tuple(ckpt["state_dict"][key].shape)
    ckpt["state_dict"][key] = torch.zeros(shape[0] + 1, shape[1])
    bad = tmp_path / "bad.ckpt"
    torch.save(ckpt, bad)
    expected = f"{key}: checkpoint ({shape[0] + 1}, {shape[1]}) vs model {shape}"
    with pytest.raises(
        CheckpointError, match="does not fit the model built from its own config"
    ) as err:
        load_classifier(bad)
    assert expected in str(err.value) and "produced by net=imgcls.models.nets.lenet.LeNet" in str(
        err.value
    )


# -- guarded training ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("fault", "message"),
    [
        (
            helper("nan", "NaNInputAtStep", step=13),
            "non-finite training loss (nan) at global step 12",
        ),
        (helper("nan", "NaNWeightsAtStep", step=15), "non-finite weights (net."),
    ],
    ids=["nan-loss", "nan-weights"],
)
def test_non_finite_training_stops_and_keeps_last_good_checkpoint(
    tmp_path: Path, fault, message
) -> None:
    with pytest.raises(TrainingError) as err:
        train_in_process(tmp_path, *fault)
    msg = str(err.value)
    assert msg.startswith("training stopped: ") and message in msg
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert f"The last good checkpoint is {last} (epoch 0, global step 10)" in msg
    assert "trainer.gradient_clip_val" in msg
    ckpt = torch.load(last, weights_only=True)
    assert ckpt["global_step"] == 10
    weights = {k: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    assert weights and all(torch.isfinite(v).all() for v in weights.values())
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["last.ckpt"]


def test_unwritable_run_dir_fails_before_loading_data(tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigError, match=rf"cannot write to {blocker}/run .*paths.log_dir"):
        train(compose_config("train", BASE, blocker / "run"))


def test_full_disk_fails_before_the_first_epoch(tmp_path: Path, monkeypatch) -> None:
    real = shutil.disk_usage
    monkeypatch.setattr(
        "imgcls.engine.checkpoints.atomic_io.shutil.disk_usage",
        lambda p: real(p)._replace(free=20 * 1024 * 1024),
    )
    with pytest.raises(
        ConfigError,
        match=r"not enough disk space for this run in .*: 20 MB free, about 10\d MB needed",
    ):
        train(compose_config("train", BASE, tmp_path))
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())


def test_csv_log_keeps_the_rows_before_the_resume_step(tmp_path: Path) -> None:
    from lightning.pytorch.loggers import CSVLogger

    from imgcls.engine.checkpoints.resume import continue_loggers

    first = CSVLogger(tmp_path, name="csv/", version="")
    for step in range(0, 40, 5):
        first.log_metrics({"train/loss": 1.0 / (step + 1)}, step=step)
    first.save()

    resumed = CSVLogger(tmp_path, name="csv/", version="")
    continue_loggers([resumed], step=28)  # the checkpoint was at step 28; 30 and 35 are stale
    for step in range(30, 45, 5):
        resumed.log_metrics({"train/loss": 0.5, "val/acc": 0.9}, step=step)
    resumed.save()

    lines = (tmp_path / "csv" / "metrics.csv").read_text().splitlines()
    steps = [int(line.split(",")[lines[0].split(",").index("step")]) for line in lines[1:]]
    assert steps == [0, 5, 10, 15, 20, 25, 30, 35, 40]
    assert lines[0].split(",") == ["step", "train/loss", "val/acc"]

"""Calibration: ECE as torchmetrics computes it equals a hand computation; temperature scaling
recovers a known temperature, travels in the checkpoint, and eval/predict/ONNX agree on it."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from imgcls.models.calibration import fit_temperature
from imgcls.models.classifier import ImageClassifier
from imgcls.models.load import load_classifier
from imgcls.models.metrics import stage_metrics
from tests.conftest import run_entry


def hand_ece(probs: torch.Tensor, targets: torch.Tensor, bins: int = 15) -> float:
    conf, pred = probs.max(1)
    correct = (pred == targets).float()
    edges = torch.linspace(0, 1, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            ece += float(
                inside.float().mean() * (conf[inside].mean() - correct[inside].mean()).abs()
            )
    return ece


def test_ece_equals_hand_computation() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(200, 4, generator=g) * 2
    targets = torch.randint(0, 4, (200,), generator=g)
    metrics = stage_metrics(4, "test")
    metrics.update(logits, targets)
    got = float(metrics.compute()["test/ece"])
    assert got == pytest.approx(hand_ece(logits.softmax(1), targets), abs=1e-6)
    # a small case worked by hand: confidences 0.9 (right), 0.6 (wrong) in two bins
    probs = torch.tensor([[0.9, 0.1], [0.6, 0.4]])
    m2 = stage_metrics(2, "val")
    m2.update(probs.log(), torch.tensor([0, 1]))
    assert float(m2.compute()["val/ece"]) == pytest.approx(0.5 * 0.1 + 0.5 * 0.6, abs=1e-6)


def test_fit_temperature_recovers_a_known_temperature() -> None:
    g = torch.Generator().manual_seed(1)
    z = torch.randn(20000, 10, generator=g) * 3
    targets = torch.multinomial(z.softmax(1), 1, generator=g).flatten()
    assert fit_temperature(z * 2.5, targets) == pytest.approx(2.5, rel=0.05)


def _mlp_checkpoint(path: Path, temperature: float) -> ImageClassifier:
    spec = {"num_classes": 10, "in_channels": 1, "image_size": [28, 28], "class_names": [str(i) for i in range(10)],
            "mean": [0.1307], "std": [0.3081]}  # fmt: skip
    model = ImageClassifier(
        net={"_target_": "imgcls.models.nets.mlp.MLP", "hidden": [32]},
        spec=spec,
        optimizer={"_target_": "torch.optim.Adam", "_partial_": True, "lr": 0.001},
        calibrate=True,
    )
    model.temperature.fill_(temperature)
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}, path)
    return model.eval()


def test_temperature_travels_to_predict_and_onnx(tmp_path, make_cfg, mnist_png_folder) -> None:
    from imgcls.tasks.export import export
    from imgcls.tasks.predict import predict

    ckpt = tmp_path / "calibrated.ckpt"
    _mlp_checkpoint(ckpt, 3.0)
    model = load_classifier(ckpt)
    assert float(model.temperature) == 3.0
    x = torch.randn(4, 1, 28, 28)
    assert torch.allclose(model(x), model.net(x) / 3.0)
    folder, _ = mnist_png_folder
    predict(
        make_cfg("predict", [f"ckpt_path={ckpt}", f"input={folder}", "top_k=1"], out=tmp_path / "p")
    )
    rows = pd.read_csv(tmp_path / "p" / "predictions.csv")
    out = tmp_path / "model.onnx"
    export(
        make_cfg(
            "export",
            [f"ckpt_path={ckpt}", "format=onnx", f"input={folder}", f"output={out}"],
            out=tmp_path / "e",
        )
    )
    meta = json.loads(out.with_suffix(".onnx.json").read_text())
    assert meta["temperature"] == 3.0 and meta["parity"]["passed"]
    import onnxruntime as ort

    from imgcls.data.images import load_image
    from imgcls.data.transforms import normalize

    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for _, row in rows.head(20).iterrows():
        image = load_image(folder / row["file"], 1, (28, 28))[None]
        logits = session.run(None, {"input": normalize(image, [0.1307], [0.3081]).numpy()})[0]
        prob = torch.from_numpy(logits).softmax(1).max()
        assert float(prob) == pytest.approx(row["prob"], abs=1e-5)


@pytest.mark.slow
def test_calibrate_true_does_not_worsen_test_ece_and_eval_agrees(tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = run_entry(
        "train", "model.calibrate=true", "trainer.max_epochs=1", "+trainer.limit_train_batches=60",
        "logger=none", f"hydra.run.dir={run}", "~callbacks.diagnostics",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((run / "metrics.json").read_text())["metrics"]
    assert m["test/ece"] <= m["test/ece_uncalibrated"] + 1e-4
    assert m["calibration/temperature"] != pytest.approx(1.0)
    ckpt = json.loads((run / "metrics.json").read_text())["best_checkpoint"]
    assert float(load_classifier(ckpt).temperature) == pytest.approx(m["calibration/temperature"])
    ev = tmp_path / "eval"
    proc = run_entry("eval", f"ckpt_path={ckpt}", "logger=none", f"hydra.run.dir={ev}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    e = json.loads((ev / "metrics.json").read_text())["metrics"]
    assert e["test/ece"] == pytest.approx(m["test/ece"], abs=1e-5)
    assert e["test/acc"] == pytest.approx(m["test/acc"], abs=1e-6)


def test_reliability_diagram_in_tensorboard(tmp_path: Path) -> None:
    import lightning as L
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from imgcls.callbacks.diagnostics import ClassificationDiagnostics
    from tests._tiny_mnist import TinyMNIST
    from tests.conftest import MNIST_DATA

    dm = TinyMNIST(data_dir=str(MNIST_DATA), checks={"leakage": "off"})
    dm.setup()
    model = ImageClassifier(
        net={"_target_": "imgcls.models.nets.mlp.MLP", "hidden": [16]}, spec=dm.spec.to_dict(),
        optimizer={"_target_": "torch.optim.Adam", "_partial_": True, "lr": 0.001},
    )  # fmt: skip
    logger = TensorBoardLogger(str(tmp_path), name="tb")
    trainer = L.Trainer(max_epochs=1, logger=logger, callbacks=[ClassificationDiagnostics()],
                        enable_checkpointing=False, enable_progress_bar=False)  # fmt: skip
    trainer.test(model, datamodule=dm)
    assert "test/ece" in trainer.callback_metrics
    acc = EventAccumulator(logger.log_dir).Reload()
    assert "test/reliability" in acc.Tags()["images"]


def test_sweep_summary_shows_ece(tmp_path: Path) -> None:
    from imgcls.engine.sweeps.callback import write_summary

    for num, (acc, ece) in enumerate([(0.98, 0.012), (0.99, 0.008)]):
        d = tmp_path / str(num)
        d.mkdir()
        status = {"num": num, "status": "completed", "overrides": [f"seed={num}"], "value": acc,
                  "error": "", "run_dir": str(d)}  # fmt: skip
        (d / "job_status.json").write_text(json.dumps(status))
        metrics = {"val/acc_best": acc, "test/acc": acc, "val/ece": ece, "test/ece": ece / 2}
        (d / "metrics.json").write_text(json.dumps({"metrics": metrics}))
    write_summary(tmp_path, "val/acc_best", "max")
    table = pd.read_csv(tmp_path / "summary.csv")
    assert list(table["test/ece"]) == [0.006, 0.004] and list(table["val/ece"]) == [0.012, 0.008]
    md = (tmp_path / "summary.md").read_text().splitlines()
    header = next(line for line in md if line.startswith("| job"))
    assert "| val/ece |" in header and "| test/ece |" in header

"""export.py: the exported model reproduces the checkpoint's logits; its preprocessing is written down."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from imgcls.data.images import load_image
from imgcls.data.transforms import normalize
from imgcls.errors import ExportError
from imgcls.models.load import load_classifier
from imgcls.tasks.export import export
from tests.conftest import run_entry


def real_batch(folder: Path, spec, n: int = 5) -> torch.Tensor:
    files = sorted(folder.glob("*.png"))[:n]
    images = torch.stack([load_image(f, spec.in_channels, spec.image_size) for f in files])
    return normalize(images, spec.mean, spec.std)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "pt2"])
def test_export_lenet_parity(
    fmt, trained_lenet_ckpt, mnist_png_folder, make_cfg, tmp_path: Path
) -> None:
    folder, _ = mnist_png_folder
    metrics = export(
        make_cfg("export", [f"ckpt_path={trained_lenet_ckpt}", f"format={fmt}", f"input={folder}"])
    )
    assert metrics["export/max_abs_diff"] <= 1e-4
    assert metrics["export/top1_agreement"] == 1.0

    ext = {"onnx": ".onnx", "torchscript": ".pt", "pt2": ".pt2"}[fmt]
    model_file = tmp_path / f"model{ext}"
    meta = json.loads((tmp_path / f"model{ext}.json").read_text())
    assert meta["class_names"] == [str(i) for i in range(10)]
    assert meta["preprocessing"]["mean"] == [0.1307] and meta["preprocessing"]["std"] == [0.3081]
    assert meta["preprocessing"]["channels"] == 1 and meta["preprocessing"]["image_size"] == [
        28,
        28,
    ]
    assert meta["input"]["shape"] == ["N", 1, 28, 28]
    assert meta["parity"]["checked"] and meta["parity"]["passed"]
    assert meta["parity"]["images"] == 64 and "input=" in meta["parity"]["source"]

    # A consumer following the sidecar gets the checkpoint's logits, at another batch size too.
    model = load_classifier(trained_lenet_ckpt)
    x = real_batch(folder, model.spec, n=5)
    with torch.inference_mode():
        expected = model(x).numpy()
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
        got = session.run(None, {meta["input"]["name"]: x.numpy()})[0]
    elif fmt == "torchscript":
        extra = {"imgcls.json": ""}
        loaded = torch.jit.load(str(model_file), _extra_files=extra)
        assert json.loads(extra["imgcls.json"])["class_names"] == meta["class_names"]
        got = loaded(x).detach().numpy()
    else:
        got = torch.export.load(str(model_file)).module()(x).detach().numpy()
    assert np.abs(got - expected).max() <= 1e-4


def test_export_without_onnxruntime_says_so(
    trained_lenet_ckpt, mnist_png_folder, make_cfg, tmp_path, monkeypatch, caplog
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    folder, _ = mnist_png_folder
    metrics = export(
        make_cfg(
            "export",
            [
                f"ckpt_path={trained_lenet_ckpt}",
                "format=onnx",
                f"input={folder}",
                "parity_images=4",
            ],
        )
    )
    assert metrics == {}
    assert (tmp_path / "model.onnx").stat().st_size > 0
    meta = json.loads((tmp_path / "model.onnx.json").read_text())
    assert meta["parity"] == {"checked": False, "reason": "onnxruntime is not installed"}
    assert "parity NOT checked: onnxruntime is not installed" in caplog.text


def test_export_entry_point_uses_the_training_runs_data(trained_lenet_ckpt, tmp_path: Path) -> None:
    """No input given: the parity batch comes from the data of the run that wrote the checkpoint."""
    proc = run_entry(
        "export",
        f"ckpt_path={trained_lenet_ckpt}",
        "format=torchscript",
        f"paths.log_dir={tmp_path}",
        "extras.print_config=false",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "parity OK: max |Δlogits| = " in proc.stdout
    assert (
        "64 images from the training run's data (imgcls.data.mnist_datamodule.MNISTDataModule)"
        in proc.stdout
    )
    assert len(list(tmp_path.glob("export/runs/*/model.pt"))) == 1


def test_export_bad_format(trained_lenet_ckpt, make_cfg) -> None:
    from imgcls.errors import ConfigError

    with pytest.raises(
        ConfigError, match=r"format='tflite' must be one of \['onnx', 'pt2', 'torchscript'\]"
    ):
        export(make_cfg("export", [f"ckpt_path={trained_lenet_ckpt}", "format=tflite"]))


@pytest.fixture(scope="module")
def resnet18_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A frozen ResNet-18 (random init: ``weights=null``) + head trained for two steps on MNIST."""
    from imgcls.tasks.train import train
    from tests.conftest import compose_config

    out = tmp_path_factory.mktemp("resnet18")
    cfg = compose_config(
        "train",
        [
            "model=resnet18",
            "model.weights=null",
            "model.net.freeze=true",
            "model.cache_features=false",
            "trainer.max_epochs=1",
            "+trainer.limit_train_batches=2",
            "+trainer.limit_val_batches=1",
            "data.eval_batch_size=64",
            "test=false",
        ],
        out,
    )
    train(cfg)
    return out / "checkpoints" / "last.ckpt"


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_resnet18_parity(
    fmt, resnet18_ckpt, mnist_png_folder, make_cfg, tmp_path: Path
) -> None:
    folder, _ = mnist_png_folder
    cfg = make_cfg(
        "export",
        [f"ckpt_path={resnet18_ckpt}", f"format={fmt}", f"input={folder}", "parity_images=16"],
    )
    metrics = export(cfg)
    assert metrics["export/max_abs_diff"] <= 1e-4 and metrics["export/top1_agreement"] == 1.0
    meta = json.loads(next(tmp_path.glob("model.*.json")).read_text())
    assert meta["net"] == "imgcls.models.nets.resnet.ResNetMLP"
    assert meta["parity"]["passed"] and meta["parity"]["images"] == 16


def test_export_parity_failure_is_an_error(
    trained_lenet_ckpt, mnist_png_folder, make_cfg, tmp_path, monkeypatch
) -> None:
    """An exported model that drifts from the checkpoint fails the export, with the numbers."""
    import imgcls.tasks.export as ex

    real = ex.EXPORTERS["torchscript"]

    def drifting(net, example, out, meta):  # type: ignore[no-untyped-def]
        run = real(net, example, out, meta)
        return lambda x: run(x) + 1e-3

    monkeypatch.setitem(ex.EXPORTERS, "torchscript", drifting)
    folder, _ = mnist_png_folder
    cfg = make_cfg(
        "export", [f"ckpt_path={trained_lenet_ckpt}", "format=torchscript", f"input={folder}"]
    )
    with pytest.raises(ExportError, match=r"max \|Δlogits\| = 0\.001 > tolerance 0\.0001"):
        export(cfg)
    meta = json.loads((tmp_path / "model.pt.json").read_text())
    assert meta["parity"]["checked"] and not meta["parity"]["passed"]

"""The export sidecar is complete: its steps alone, replayed with PIL + numpy + onnxruntime on a
copy of only the files it lists, give predict.py's probabilities on PNGs and large JPEGs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from imgcls.tasks.export import export
from imgcls.tasks.predict import predict

RESAMPLE = {"bilinear": Image.Resampling.BILINEAR}


def replay(path: Path, steps: list[dict]) -> np.ndarray:
    """One file -> model input (C, H, W) float32, following the sidecar's steps only."""
    img = x = None
    for step in steps:
        op = step["op"]
        if op == "open":
            img = Image.open(path)
        elif op == "jpeg_draft":
            w, h = step["size_wh"][0] // 2, step["size_wh"][1] // 2
            if img.format == "JPEG" and img.size != (w, h):
                img.draft(step["mode"], tuple(step["size_wh"]))
        elif op == "load":
            img.load()
        elif op == "convert":
            if img.mode != step["mode"]:
                img = img.convert(step["mode"])
        elif op == "resize":
            h, w = step["size_hw"]
            if img.size != (w, h):
                img = img.resize((w, h), RESAMPLE[step["resample"].split()[0]])
        elif op == "to_array":
            a = np.asarray(img, dtype=np.uint8)
            x = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
        elif op == "scale":
            x = x.astype(np.float32) * np.float32(step["factor"])
        elif op == "normalize":
            mean = np.asarray(step["mean"], np.float32)[:, None, None]
            std = np.asarray(step["std"], np.float32)[:, None, None]
            x = (x - mean) / std
        else:
            raise AssertionError(f"unknown step {op!r}: the replay must know every step")
    return x


@pytest.fixture(scope="module")
def mixed_images(mnist_png_folder, tmp_path_factory) -> Path:
    """MNIST PNGs as they are, and as large gray and RGB JPEGs (224 px, 300x260)."""
    folder, _ = mnist_png_folder
    out = tmp_path_factory.mktemp("mixed")
    for i, src in enumerate(sorted(folder.glob("*.png"))[:12]):
        digit = Image.open(src).convert("L")
        shutil.copy(src, out / f"{i:02d}_png.png")
        digit.resize((224, 224), Image.Resampling.BICUBIC).save(
            out / f"{i:02d}_gray.jpg", quality=90
        )
        rgb = Image.merge(
            "RGB", [digit, digit.point(lambda v: v // 2), digit.point(lambda v: 255 - v)]
        )
        rgb.resize((300, 260), Image.Resampling.BICUBIC).save(out / f"{i:02d}_rgb.jpg", quality=85)
    return out


def test_sidecar_steps_reproduce_predict_probabilities(
    trained_lenet_ckpt, mixed_images: Path, make_cfg, tmp_path: Path
) -> None:
    import onnxruntime as ort

    export(
        make_cfg(
            "export", [f"ckpt_path={trained_lenet_ckpt}", "format=onnx", f"input={mixed_images}"]
        )
    )
    meta = json.loads((tmp_path / "model.onnx.json").read_text())
    assert meta["files"] == ["model.onnx"]  # one self-contained file: no model.onnx.data
    assert [s["op"] for s in meta["preprocessing"]["steps"]][:3] == ["open", "jpeg_draft", "load"]
    shipped = tmp_path / "shipped"  # only what the sidecar lists
    shipped.mkdir()
    for name in meta["files"]:
        shutil.copy(tmp_path / name, shipped / name)
    session = ort.InferenceSession(
        str(shipped / meta["files"][0]), providers=["CPUExecutionProvider"]
    )

    predict(
        make_cfg(
            "predict", [f"ckpt_path={trained_lenet_ckpt}", f"input={mixed_images}", "top_k=10"]
        )
    )
    table = pd.read_csv(tmp_path / "predictions.csv", dtype={"file": str})
    assert len(table) == 36 and (table["error"].isna()).all()
    classes = meta["class_names"]
    worst = 0.0
    for _, row in table.iterrows():
        x = replay(mixed_images / row["file"], meta["preprocessing"]["steps"])
        logits = session.run(None, {meta["input"]["name"]: x[None]})[0][0].astype(np.float64)
        p = np.exp(logits - logits.max())
        p /= p.sum()
        expected = np.zeros(len(classes))
        for j in range(1, 11):
            expected[classes.index(str(row[f"top{j}"]))] = row[f"top{j}_prob"]
        worst = max(worst, float(np.abs(p - expected).max()))
        assert np.abs(p - expected).max() <= 1e-4, (row["file"], p, expected)
    print("max |Δp| over", len(table), "images:", worst)


def test_draft_changes_large_jpegs(mixed_images: Path) -> None:
    """The draft step matters: leaving it out changes the input of a large JPEG (so a sidecar
    without it would be wrong), while PNGs never take it."""
    from imgcls.data.images import decode_steps

    steps = decode_steps(1, (28, 28)) + [{"op": "scale", "factor": 1 / 255}]
    without = [s for s in steps if s["op"] != "jpeg_draft"]
    jpg = mixed_images / "00_gray.jpg"
    assert np.abs(replay(jpg, steps) - replay(jpg, without)).max() > 1e-3
    png = mixed_images / "00_png.png"
    assert np.array_equal(replay(png, steps), replay(png, without))

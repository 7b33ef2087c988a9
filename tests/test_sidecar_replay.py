"""The export sidecar is complete: its steps alone, replayed with PIL + numpy + onnxruntime on a
copy of only the files it lists, give predict.py's probabilities on PNGs and large JPEGs, for a
memory-path checkpoint (resize) and a streamed one (resize the shorter side, center crop)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from make_photo_set import make_photo
from PIL import Image

from imgcls.data.images import decode_steps
from imgcls.data.spec import DataSpec
from imgcls.engine.streaming.loader import StreamImageDataset, StreamItem, eval_decoder
from imgcls.tasks.export import export
from imgcls.tasks.predict import predict
from imgcls.tasks.predict_inputs import ImageFiles, InputItem

RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


def _box(step: dict, W: int, H: int) -> tuple[float, ...]:
    """The ``box`` step: torchvision's Resize then CenterCrop as a box in the file's pixels."""
    (ch, cw), r = step["crop"], step["resize"]
    if isinstance(r, list):
        rh, rw = r
    else:
        short, long = min(W, H), max(W, H)
        rw, rh = (r, int(r * long / short)) if W <= H else (int(r * long / short), r)
    top, left = int(round((rh - ch) / 2.0)), int(round((rw - cw) / 2.0))
    return (left * W / rw, top * H / rh, (left + cw) * W / rw, (top + ch) * H / rh)


def replay(path: Path, steps: list[dict]) -> np.ndarray:
    """One file -> model input (C, H, W) float32, following the sidecar's steps only."""
    img = x = box = None
    W = H = 0
    for step in steps:
        op = step["op"]
        if op == "open":
            img = Image.open(path)
            W, H = img.size
        elif op == "box":
            box = _box(step, W, H)
        elif op == "jpeg_draft":
            h, w = next(s["size_hw"] for s in steps if s["op"] == "resize")
            bw, bh = box[2] - box[0], box[3] - box[1]
            s = next((s for s in (8, 4, 2) if s * w <= bw and s * h <= bh), 1)
            img.draft(step["mode"], (W // s, H // s))
        elif op == "load":
            img.load()
        elif op == "convert":
            if img.mode != step["mode"]:
                img = img.convert(step["mode"])
        elif op == "resize":
            h, w = step["size_hw"]
            fx, fy = img.width / W, img.height / H
            if box != (0, 0, W, H) or img.size != (w, h):
                scaled = (box[0] * fx, box[1] * fy, box[2] * fx, box[3] * fy)
                img = img.resize((w, h), RESAMPLE[step["resample"]], box=scaled)
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
    """MNIST PNGs as they are, as large gray and RGB JPEGs (224 px, 300x260), and two
    photo-like JPEGs of 1600x1200 and 1200x1600 (both DCT scales and aspect ratios)."""
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
    make_photo(1600, 1200, 0, seed=1).save(out / "photo_wide.jpg", quality=90)
    make_photo(1200, 1600, 2, seed=2).save(out / "photo_tall.jpg", quality=90)
    return out


STREAM_EVAL = {"resize": 32, "crop": [28, 28], "interpolation": "bilinear", "antialias": True}


@pytest.fixture(scope="module")
def streamed_ckpt(trained_lenet_ckpt, tmp_path_factory) -> Path:
    """The LeNet checkpoint as the stream path records it: shorter side to 32, center crop 28."""
    blob = torch.load(trained_lenet_ckpt, map_location="cpu", weights_only=False)
    blob["hyper_parameters"]["spec"]["eval_transform"] = dict(STREAM_EVAL)
    path = tmp_path_factory.mktemp("streamed") / "streamed.ckpt"
    torch.save(blob, path)
    return path


@pytest.mark.parametrize("kind", ["memory", "stream"])
def test_sidecar_steps_reproduce_predict_probabilities(
    kind, trained_lenet_ckpt, streamed_ckpt, mixed_images: Path, make_cfg, tmp_path: Path
) -> None:
    import onnxruntime as ort

    ckpt = trained_lenet_ckpt if kind == "memory" else streamed_ckpt
    export(make_cfg("export", [f"ckpt_path={ckpt}", "format=onnx", f"input={mixed_images}"]))
    meta = json.loads((tmp_path / "model.onnx.json").read_text())
    assert meta["files"] == ["model.onnx"]  # one self-contained file: no model.onnx.data
    steps = meta["preprocessing"]["steps"]
    assert [s["op"] for s in steps][:4] == ["open", "box", "jpeg_draft", "load"]
    shipped = tmp_path / "shipped"  # only what the sidecar lists
    shipped.mkdir()
    for name in meta["files"]:
        shutil.copy(tmp_path / name, shipped / name)
    session = ort.InferenceSession(
        str(shipped / meta["files"][0]), providers=["CPUExecutionProvider"]
    )

    predict(make_cfg("predict", [f"ckpt_path={ckpt}", f"input={mixed_images}", "top_k=10"]))
    table = pd.read_csv(tmp_path / "predictions.csv", dtype={"file": str})
    assert len(table) == 38 and (table["error"].isna()).all()
    classes = meta["class_names"]
    worst = 0.0
    for _, row in table.iterrows():
        x = replay(mixed_images / row["file"], steps)
        logits = session.run(None, {meta["input"]["name"]: x[None]})[0][0].astype(np.float64)
        p = np.exp(logits - logits.max())
        p /= p.sum()
        expected = np.zeros(len(classes))
        for j in range(1, 11):
            expected[classes.index(str(row[f"top{j}"]))] = row[f"top{j}_prob"]
        worst = max(worst, float(np.abs(p - expected).max()))
        assert np.abs(p - expected).max() <= 1e-4, (row["file"], p, expected)
    print("max |Δp| over", len(table), "images:", worst)


def test_stream_eval_predict_and_sidecar_give_the_same_pixels(mixed_images: Path) -> None:
    """On large JPEGs, the stream path's validation sample, predict's input and the sidecar's
    replay (to the uint8 array) are the same pixels, decoded at a reduced DCT scale."""
    spec = DataSpec(10, 1, (28, 28), tuple("0123456789"), (0.5,), (0.5,), dict(STREAM_EVAL))
    files = sorted(mixed_images.glob("*.jpg"))
    val = StreamImageDataset([StreamItem(f, 0, "") for f in files], eval_decoder(STREAM_EVAL, 1))
    inputs, _, errors = ImageFiles([InputItem(f.name, f) for f in files], spec).__getitems__(
        list(range(len(files)))
    )
    steps = decode_steps(1, (28, 28), STREAM_EVAL)
    steps = steps[: [s["op"] for s in steps].index("to_array") + 1]
    assert errors == [""] * len(files)
    for i, f in enumerate(files):
        assert torch.equal(val[i][0], inputs[i]), f
        assert np.array_equal(replay(f, steps), inputs[i].numpy()), f


def test_draft_changes_large_jpegs(mixed_images: Path) -> None:
    """The draft step matters: leaving it out changes the input of a large JPEG (so a sidecar
    without it would be wrong), while PNGs never take it."""
    for desc in (None, STREAM_EVAL):
        steps = decode_steps(1, (28, 28), desc) + [{"op": "scale", "factor": 1 / 255}]
        without = [s for s in steps if s["op"] != "jpeg_draft"]
        for jpg in ("00_gray.jpg", "photo_wide.jpg"):
            jpg = mixed_images / jpg
            assert np.abs(replay(jpg, steps) - replay(jpg, without)).max() > 1e-3
        png = mixed_images / "00_png.png"
        assert np.array_equal(replay(png, steps), replay(png, without))

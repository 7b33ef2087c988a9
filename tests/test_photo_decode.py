"""Crop-then-decode on photos: the training boxes are torchvision's ``RandomResizedCrop``'s,
a JPEG decodes at the largest DCT scale keeping the box at or above the output size, the
result stays close to a full-resolution decode, and PNGs keep the full decode."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from make_photo_set import make_photo
from PIL import Image
from torchvision.transforms import RandomResizedCrop, v2

from imgcls.data.images import decode_image, draft_scale
from imgcls.engine.streaming.loader import StreamOptions, TrainView, train_decoder

OUT = (224, 224)


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> tuple[Path, Path]:
    """One 1600x1200 photo-like image as JPEG and as PNG."""
    d = tmp_path_factory.mktemp("photo")
    img = make_photo(1600, 1200, label=1, seed=3)
    img.save(d / "p.jpg", quality=90)
    img.save(d / "p.png")
    return d / "p.jpg", d / "p.png"


def _ks(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic."""
    grid = np.sort(np.concatenate([a, b]))
    cdf = lambda x: np.searchsorted(np.sort(x), grid, side="right") / len(x)  # noqa: E731
    return float(np.abs(cdf(a) - cdf(b)).max())


def _stats(boxes: np.ndarray, w: int, h: int) -> dict[str, np.ndarray]:
    left, top, bw, bh = boxes.T
    return {
        "area": bw * bh / (w * h),
        "log_ratio": np.log(bw / bh),
        "cx": (left + bw / 2) / w,
        "cy": (top + bh / 2) / h,
    }


def test_train_boxes_have_torchvisions_random_resized_crop_distribution(photo) -> None:
    """4000 boxes from the header of a 1600x1200 JPEG against 4000 of torchvision's v2
    ``RandomResizedCrop`` (other seed): every statistic passes a KS test at alpha=0.001
    (critical 0.044), and a wrong scale range would not."""
    n, (w, h) = 4000, (1600, 1200)
    opts = StreamOptions("random_resized_crop")
    view = TrainView(opts, OUT)
    torch.manual_seed(0)
    with Image.open(photo[0]) as img:
        ours = np.array([view(img)[0] for _ in range(n)], dtype=float)
    ours[:, 2:] -= ours[:, :2]  # (left, top, width, height)
    torch.manual_seed(1)
    tv = v2.RandomResizedCrop(list(OUT), scale=opts.scale, ratio=opts.ratio)
    frame = [torch.empty(3, h, w)]
    ref = [tv.make_params(frame) for _ in range(n)]
    theirs = np.array([[p["left"], p["top"], p["width"], p["height"]] for p in ref], float)
    a, b = _stats(ours, w, h), _stats(theirs, w, h)
    for key in a:
        assert _ks(a[key], b[key]) < 0.044, key
    narrow = theirs[_stats(theirs, w, h)["area"] > 0.2]  # as if scale were (0.2, 1)
    assert _ks(a["area"], _stats(narrow, w, h)["area"]) > 0.044
    # same seed, same boxes: it is torchvision's own sampler
    torch.manual_seed(5)
    with Image.open(photo[0]) as img:
        box = view(img)[0]
    torch.manual_seed(5)
    i, j, bh, bw = RandomResizedCrop.get_params(torch.empty(3, h, w), opts.scale, opts.ratio)
    assert box == (j, i, j + bw, i + bh)


@pytest.fixture
def resizes(monkeypatch) -> list[tuple[tuple[int, int], tuple[float, ...]]]:
    """Records (decoded image size, box in it) of every PIL resize."""
    seen = []
    orig = Image.Image.resize

    def resize(self, size, resample=None, box=None, reducing_gap=None):
        seen.append((self.size, box))
        return orig(self, size, resample, box, reducing_gap)

    monkeypatch.setattr(Image.Image, "resize", resize)
    return seen


@pytest.mark.parametrize("out", [(224, 224), (96, 128), (32, 32)])
def test_jpeg_decodes_at_the_largest_scale_keeping_the_crop_at_output_size(
    photo, resizes, out
) -> None:
    decode = train_decoder(StreamOptions("random_resized_crop"), out, 3)
    torch.manual_seed(0)
    scales = set()
    for _ in range(60):
        assert tuple(decode(photo[0]).shape) == (3, *out)
        (dw, dh), (left, top, right, bottom) = resizes[-1]
        s = 1600 / dw
        scales.add(s)
        # the crop in decoded pixels is at least the output size ...
        assert right - left >= out[1] - 1e-6 and bottom - top >= out[0] - 1e-6
        # ... and half the scale would have been below it (unless the scale is already 1/8)
        assert s == 8 or (right - left) / 2 < out[1] or (bottom - top) / 2 < out[0]
    assert len(scales) > 1 if out == (224, 224) else max(scales) == 8


def test_draft_scale_rule() -> None:
    assert draft_scale((0, 0, 1792, 1792), (224, 224)) == 8
    assert draft_scale((0, 0, 1791, 1792), (224, 224)) == 4
    assert draft_scale((10, 10, 458, 458), (224, 224)) == 2
    assert draft_scale((0, 0, 447, 4000), (224, 224)) == 1
    assert draft_scale((0, 0, 100, 100), (224, 224)) == 1  # upsampling: full decode


def test_reduced_decode_is_close_to_the_full_resolution_decode(photo) -> None:
    """The same box, decoded reduced then resized, vs decoded in full then cropped and resized
    (PIL, antialiased): within 2 grey levels on average on a photo-like JPEG."""
    box = (200, 150, 1400, 1050)  # 1200x900 -> 224: scale 1/4

    def view(img):
        return box, OUT

    fast = decode_image(photo[0], 3, view=view).astype(float)
    with Image.open(photo[0]) as img:
        full = np.asarray(img.convert("RGB").resize(OUT[::-1], Image.BILINEAR, box=box), float)
    assert np.abs(fast - full).mean() < 2.0


def test_png_keeps_the_full_decode(photo, resizes) -> None:
    """A PNG is decoded at full size (no DCT scales), then cropped and resized as before."""
    box = (200, 150, 1400, 1050)
    out = decode_image(photo[1], 3, view=lambda img: (box, OUT))
    assert resizes[-1] == ((1600, 1200), box)
    with Image.open(photo[1]) as img:
        expected = np.asarray(img.convert("RGB").resize(OUT[::-1], Image.BILINEAR, box=box))
    assert np.array_equal(out, expected)
    # the memory path: the whole PNG at the target size, bit for bit as plain PIL
    with Image.open(photo[1]) as img:
        expected = np.asarray(img.convert("RGB").resize((300, 200), Image.BILINEAR))
    assert np.array_equal(decode_image(photo[1], 3, (200, 300)), expected)


def test_a_batch_decodes_in_threads_as_one_sample_after_another(tmp_path: Path) -> None:
    """``__getitems__`` (threads) draws the crop boxes in index order: the samples are those
    ``__getitem__`` gives one after another under the same seed; with flips too, a seeded batch
    repeats itself; a broken file in the batch is named."""
    from imgcls.engine.streaming.loader import StreamImageDataset, StreamItem

    items = []
    for i in range(6):
        path = tmp_path / f"{i}.jpg"
        make_photo(640 + 32 * i, 480, label=i % 2, seed=i).save(path, quality=90)
        items.append(StreamItem(path, i % 2, f"row {i}"))
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    items.insert(3, StreamItem(tmp_path / "bad.jpg", 0, "row bad"))

    def seeded(ds: StreamImageDataset, batched: bool) -> list:
        torch.manual_seed(7)
        return ds.__getitems__(list(range(len(ds)))) if batched else [ds[i] for i in range(len(ds))]

    def same(a: list, b: list) -> bool:
        return all(
            (x is None and bx is None or torch.equal(x, bx)) and (y, e) == (by, be)
            for (x, y, e), (bx, by, be) in zip(a, b, strict=True)
        )

    crops = StreamImageDataset(items, train_decoder(StreamOptions("random_resized_crop"), OUT, 3))
    batch = seeded(crops, batched=True)
    assert crops._pool is not None  # the batch went through the thread pool
    assert same(batch, seeded(crops, batched=False))
    assert batch[3][0] is None and "bad.jpg" in batch[3][2] and "row bad" in batch[3][2]
    opts = StreamOptions("random_resized_crop", hflip=0.5, auto_augment="trivial")
    augmented = StreamImageDataset(items, train_decoder(opts, OUT, 3))
    first = seeded(augmented, batched=True)
    assert same(first, seeded(augmented, batched=True))
    assert not same(first, seeded(crops, batched=True))

"""scripts/convert_flowers.py on a tiny archive in the official format (102flowers.tgz + .mat files)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import convert_flowers
import numpy as np
import pytest
from PIL import Image

from imgcls.data.folder_datamodule import FolderDataModule

sio = pytest.importorskip("scipy.io", reason="scipy is not installed (reading .mat files needs it)")

LABELS = [1, 2, 1, 2, 10, 10, 1, 2]  # image i+1 has class LABELS[i]
SETID = {"trnid": [1, 2, 5, 7], "valid": [3, 4, 6], "tstid": [8]}


def official_files(src: Path) -> Path:
    src.mkdir(parents=True, exist_ok=True)
    with tarfile.open(src / "102flowers.tgz", "w:gz") as tar:
        for i in range(1, len(LABELS) + 1):
            buf = io.BytesIO()
            Image.new("RGB", (40 + i, 30), (20 * i, 100, 50)).save(buf, "JPEG")
            info = tarfile.TarInfo(f"jpg/image_{i:05d}.jpg")
            info.size = buf.tell()
            buf.seek(0)
            tar.addfile(info, buf)
        evil = tarfile.TarInfo("../evil.jpg")  # never written: only expected names are extracted
        evil.size = 1
        tar.addfile(evil, io.BytesIO(b"x"))
    sio.savemat(src / "imagelabels.mat", {"labels": np.array([LABELS], dtype=np.uint8)})
    sio.savemat(src / "setid.mat", {k: np.array([v], dtype=np.uint16) for k, v in SETID.items()})
    return src


def test_convert_writes_class_folders_that_data_flowers_reads(tmp_path: Path) -> None:
    src = official_files(tmp_path / "src")
    out = tmp_path / "flowers"
    assert convert_flowers.main(["--src", str(src), "--out", str(out)]) == 0
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.jpg")) == [
        "test/2/image_00008.jpg",
        "train/1/image_00001.jpg",
        "train/1/image_00007.jpg",
        "train/10/image_00005.jpg",
        "train/2/image_00002.jpg",
        "valid/1/image_00003.jpg",
        "valid/10/image_00006.jpg",
        "valid/2/image_00004.jpg",
    ]
    assert not (tmp_path / "evil.jpg").exists()
    dm = FolderDataModule(root=str(out), image_size=[16, 16], cache_dir=None)
    dm.setup()
    assert dm.spec.class_names == ("1", "2", "10")
    assert (len(dm.splits["train"]), len(dm.splits["val"]), len(dm.splits["test"])) == (4, 3, 1)


def test_convert_reports_missing_files_and_refuses_to_overwrite(tmp_path: Path, capsys) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "102flowers.tgz").write_bytes(b"")
    assert convert_flowers.main(["--src", str(src), "--out", str(tmp_path / "o")]) == 1
    assert "lacks imagelabels.mat, setid.mat" in capsys.readouterr().err

    official_files(src)
    out = tmp_path / "o"
    (out / "keep").mkdir(parents=True)
    assert convert_flowers.main(["--src", str(src), "--out", str(out)]) == 1
    assert "exists and is not empty (use --force" in capsys.readouterr().err
    assert (out / "keep").is_dir()

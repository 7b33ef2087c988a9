"""Convert the official Oxford Flowers-102 files into the class-folder layout of ``data=flowers``.

    python scripts/convert_flowers.py --src ~/Downloads/flowers102 --out data/flowers

``--src`` holds the three files published at https://www.robots.ox.ac.uk/~vgg/data/flowers/102/:
``102flowers.tgz`` (``jpg/image_00001.jpg`` ...), ``imagelabels.mat`` (``labels``: class 1..102
per image) and ``setid.mat`` (``trnid``/``valid``/``tstid``: 1-based image ids per split). The
output is ``<out>/train/<class>/``, ``<out>/valid/<class>/`` and ``<out>/test/<class>/``, with
classes named ``1``..``102`` (or by ``--names``, a JSON object mapping ``"1"`` to a name).

Reading ``.mat`` files needs scipy (``pip install scipy``, or the project's ``flowers`` extra).
The archive is streamed member by member (never ``extractall``: only the expected image
names are written), into a temporary directory renamed when complete.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tarfile
import time
from pathlib import Path

FILES = ("102flowers.tgz", "imagelabels.mat", "setid.mat")
SPLITS = {"trnid": "train", "valid": "valid", "tstid": "test"}
MEMBER = re.compile(r"^(?:\./)?jpg/image_(\d{5})\.jpg$")


class ConvertError(Exception):
    """A problem with the input files; printed as ``error: <message>``."""


def read_mat(path: Path) -> dict:
    try:
        from scipy.io import loadmat
    except ImportError:
        raise ConvertError(
            f"reading {path.name} needs scipy, which is not installed: pip install scipy "
            f"(or pip install -e '.[flowers]')"
        ) from None
    try:
        return loadmat(str(path))
    except Exception as e:  # scipy raises several types for bad files
        raise ConvertError(f"cannot read {path}: {type(e).__name__}: {e}") from None


def _ids(mat: dict, key: str, path: Path) -> list[int]:
    if key not in mat:
        keys = sorted(k for k in mat if not k.startswith("__"))
        raise ConvertError(f"{path} has no variable {key!r} (it has {keys})")
    return [int(v) for v in mat[key].ravel()]


def convert(
    src: Path, out: Path, names: dict[str, str] | None = None, force: bool = False
) -> dict[str, int]:
    """Write the class-folder layout; returns the number of images per split."""
    missing = [f for f in FILES if not (src / f).is_file()]
    if missing:
        raise ConvertError(f"{src} lacks {', '.join(missing)} (need {', '.join(FILES)})")
    if out.exists() and any(out.iterdir()) and not force:
        raise ConvertError(f"{out} exists and is not empty (use --force to replace it)")
    labels = _ids(read_mat(src / "imagelabels.mat"), "labels", src / "imagelabels.mat")
    setid = read_mat(src / "setid.mat")
    split_of: dict[int, str] = {}
    for key, split in SPLITS.items():
        for i in _ids(setid, key, src / "setid.mat"):
            if not 1 <= i <= len(labels):
                raise ConvertError(
                    f"setid.mat {key} lists image {i}, but imagelabels.mat has {len(labels)} labels"
                )
            split_of[i] = split

    def class_dir(label: int) -> str:
        name = names.get(str(label), str(label)) if names else str(label)
        return name.replace(os.sep, "_").strip() or str(label)

    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    counts = dict.fromkeys(SPLITS.values(), 0)
    try:
        try:
            with tarfile.open(src / "102flowers.tgz", "r:*") as tar:
                for member in tar:
                    m = MEMBER.match(member.name)
                    if not m or not member.isfile():
                        continue
                    i = int(m.group(1))
                    if i not in split_of:
                        continue
                    split = split_of[i]
                    target = tmp / split / class_dir(labels[i - 1]) / f"image_{i:05d}.jpg"
                    target.parent.mkdir(parents=True, exist_ok=True)
                    f = tar.extractfile(member)
                    assert f is not None
                    with f, open(target, "wb") as dst:
                        shutil.copyfileobj(f, dst, 1 << 20)
                    counts[split] += 1
        except (tarfile.TarError, EOFError, OSError) as e:
            raise ConvertError(f"cannot read {src / '102flowers.tgz'}: {e}") from None
        absent = len(split_of) - sum(counts.values())
        if absent:
            raise ConvertError(
                f"102flowers.tgz lacks {absent} of the {len(split_of)} images listed in setid.mat"
            )
        if out.exists():
            shutil.rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    root = Path(__file__).resolve().parents[1]
    parser.add_argument(
        "--src", type=Path, required=True, help="directory holding " + ", ".join(FILES)
    )
    parser.add_argument("--out", type=Path, default=root / "data" / "flowers")
    parser.add_argument(
        "--names",
        type=Path,
        help='JSON object {"1": "pink primrose", ...} to name the class folders',
    )
    parser.add_argument("--force", action="store_true", help="replace a non-empty --out")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    try:
        names = json.loads(args.names.read_text()) if args.names else None
        counts = convert(args.src, args.out, names, args.force)
    except (ConvertError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    summary = ", ".join(f"{split} {n}" for split, n in counts.items())
    print(f"{args.out}: {summary} images in {time.perf_counter() - t0:.1f} s")
    print(
        "train with: python src/train.py data=flowers"
        + (f" data.root={args.out}" if args.out != root / "data" / "flowers" else "")
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Which data a run saw, as plain data: per split a SHA-256 and the image count per class.

- File sources (CSV, folders): the hash covers the split's sorted (relative path or CSV id, file
  size, label) rows, so moving the data set elsewhere keeps it and changing a file's bytes count
  (size) or label changes it. Touching a file (mtime) does not.
- In-memory sources whose samples are not files (MNIST): the hash covers the split's uint8
  pixels and labels, in the split's order.
- Other sources (shards): the source's own cache fingerprint, hashed.

The fingerprint travels in run.json and in every checkpoint (``data_fingerprint``: strings and
ints only); eval and predict compare against it."""

from __future__ import annotations

import hashlib
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CHECKPOINT_KEY = "data_fingerprint"


def _sha(rows: list) -> str:
    return hashlib.sha256(repr(rows).encode()).hexdigest()


def _split_print(dm: Any, split: str, ds: Any) -> dict[str, Any]:
    names = list(dm.class_names)
    entries = getattr(dm, "entries", {}).get(split)
    if entries:
        rows = sorted((e.name, os.path.getsize(e.path), e.label or "") for e in entries)
        tally = Counter(r[2] for r in rows)
        counts = {c: tally[c] for c in [*names, ""] if tally[c]}
        files = _sha([r[:2] for r in rows])  # what predict's unlabeled inputs can match
        return {
            "kind": "files",
            "sha256": _sha(rows),
            "files_sha256": files,
            "n": len(rows),
            "counts": counts,
        }
    targets = getattr(ds, "targets", None)
    counts = {}
    if targets is not None:  # in class order; "" counts unlabeled (-1) images
        tally = Counter(targets.tolist())
        counts = {n: tally[i] for i, n in [*enumerate(names), (-1, "")] if tally[i]}
    images = getattr(ds, "images", None)
    if images is not None and targets is not None:
        h = hashlib.sha256(images.contiguous().numpy().tobytes())
        h.update(targets.long().numpy().tobytes())
        return {"kind": "tensors", "sha256": h.hexdigest(), "n": len(ds), "counts": counts}
    own = str(dm.fingerprint(split))
    return {"kind": "source", "sha256": _sha([own]), "n": len(ds), "counts": counts}


def data_fingerprint(dm: Any) -> dict[str, Any]:
    """Every split of a set-up datamodule; ``{}`` if the source cannot say."""
    dm.setup()
    out = {}
    for split, ds in sorted((dm.splits or {}).items()):
        try:
            out[split] = _split_print(dm, split, ds)
        except (NotImplementedError, OSError, RuntimeError) as e:
            log.info("data fingerprint: %s split not fingerprinted (%s)", split, e)
    return out


def inputs_fingerprint(paths: list[Path], ids: list[str]) -> dict[str, Any]:
    """predict's inputs: sorted (id, size) of the readable files (no labels)."""
    rows = sorted((i, os.path.getsize(p)) for i, p in zip(ids, paths, strict=True) if p.is_file())
    return {"kind": "files", "sha256": _sha(rows), "n": len(rows)}


def _valid(value: Any) -> bool:
    """Plain data of the expected shape: split -> {sha256: str, n: int, ...}."""
    return (
        isinstance(value, dict)
        and bool(value)
        and all(
            isinstance(k, str) and isinstance(v, dict) and isinstance(v.get("sha256"), str)
            for k, v in value.items()
        )
    )


def checkpoint_fingerprint(ckpt_path: str | Path) -> dict[str, Any] | None:
    """The checkpoint's stored fingerprint, or ``None`` if absent or malformed."""
    from imgcls.engine.checkpoints.load import load_checkpoint_dict

    value = load_checkpoint_dict(ckpt_path, mmap=True).get(CHECKPOINT_KEY)
    return value if _valid(value) else None


def compare_line(trained: dict[str, Any] | None, now: dict[str, Any], what: str) -> str | None:
    """One line when ``now`` differs from the training data (``None``: the same data)."""
    if trained is None:
        return f"data fingerprint: the checkpoint has no fingerprint; {what} not compared"
    differ = [
        s
        for s in sorted(set(trained) | set(now))
        if (trained.get(s) or {}).get("sha256") != (now.get(s) or {}).get("sha256")
    ]
    if not differ:
        return None
    parts = [f"{s} {_short(now.get(s))} (trained on {_short(trained.get(s))})" for s in differ]
    return f"data fingerprint: {what} differs from the checkpoint's training data: " + "; ".join(
        parts
    )


def predict_line(trained: dict[str, Any] | None, inputs: dict[str, Any]) -> str | None:
    """None when the inputs are one of the training data's held-out splits; else one line."""
    if trained is None:
        return "data fingerprint: the checkpoint has no fingerprint; inputs not compared"
    same = [s for s, v in trained.items() if v.get("files_sha256") == inputs["sha256"]]
    if "train" in same:
        return "data fingerprint: the inputs are the checkpoint's own training images"
    if same:
        return None
    return (
        f"data fingerprint: the inputs ({inputs['sha256'][:12]}, {inputs['n']} files) are not a "
        "split of the checkpoint's training data"
    )


def _short(split: dict[str, Any] | None) -> str:
    return "absent" if not split else f"{split['sha256'][:12]}, {split.get('n', '?')} images"

"""Data checks before training: exact duplicates within and across splits, near duplicates
across splits, and the same image under two labels (``data.checks``).

Hashes (``dup_hash``) come from pixels the source has decoded anyway (memory path), from one
small decode per file (stream path) or from the shard writer (``hashes.pt`` beside the shards).
The report goes to the log, ``metrics.json`` (``data_checks``) and TensorBoard; with
``leakage=error`` a train/val/test overlap stops the run before training."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from itertools import combinations
from pathlib import Path
from typing import Any

import torch

from imgcls.data.dup_hash import Hashes, near_pairs
from imgcls.errors import ConfigError, DataError
from imgcls.utils.files import atomic_write_text

log = logging.getLogger(__name__)

LEAKAGE_MODES = ("warn", "error", "off")
SPLITS = ("train", "val", "test")  # predict is unlabeled user data: not checked


@dataclass(frozen=True)
class CheckOptions:
    """``data.checks``. ``near_max_bits``: pHash bits two near duplicates may differ in;
    ``near_max_diff``: the largest pixel difference of their normalized 32x32 thumbnails, in
    units of the image's RMS contrast (1.0 reports 2 pairs on MNIST, BENCHMARKS.md);
    ``examples``: pairs named per kind."""

    leakage: str = "warn"
    near_max_bits: int = 6
    near_max_diff: float = 1.0
    examples: int = 5

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None) -> CheckOptions:
        d = dict(cfg or {})
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ConfigError(
                f"unknown data.checks option(s) {unknown}: known {cls.__annotations__}"
            )
        opts = cls(**d)
        if opts.leakage not in LEAKAGE_MODES:
            raise ConfigError(
                f"data.checks.leakage must be one of {', '.join(LEAKAGE_MODES)}, got {opts.leakage!r}"
            )
        return opts


@dataclass
class Pair:
    kind: str
    a: tuple[str, int]  # (split, index)
    b: tuple[str, int]


@dataclass
class CheckReport:
    counts: dict[str, Any] = field(default_factory=dict)
    pairs: list[Pair] = field(default_factory=list)  # the examples, for names and pictures
    names: dict[str, list[str]] = field(default_factory=dict)
    seconds: float = 0.0

    def name(self, ref: tuple[str, int]) -> str:
        return self.names[ref[0]][ref[1]]

    def examples(self) -> dict[str, list[list[str]]]:
        out: dict[str, list[list[str]]] = {}
        for p in self.pairs:
            out.setdefault(p.kind, []).append([self.name(p.a), self.name(p.b)])
        return out

    def to_dict(self) -> dict[str, Any]:
        """What ``metrics.json`` keeps under ``data_checks``."""
        return {**self.counts, "seconds": round(self.seconds, 3), "examples": self.examples()}

    @property
    def leaked(self) -> int:
        return int(self.counts["exact_across_splits"] + self.counts["near_across_splits"])


def _exact_groups(hashes: dict[str, Hashes]) -> list[list[tuple[str, int]]]:
    """Images with identical digests, grouped (groups of two or more)."""
    refs = [(s, i) for s, h in hashes.items() for i in range(len(h.exact))]
    if not refs:
        return []
    keys = torch.cat([h.exact for h in hashes.values()])
    order = torch.argsort(keys, stable=True)
    _, counts = torch.unique_consecutive(keys[order], return_counts=True)
    groups, start = [], 0
    for n in counts.tolist():
        if n > 1:
            groups.append([refs[int(k)] for k in order[start : start + n]])
        start += n
    return groups


def _label(hashes: dict[str, Hashes], ref: tuple[str, int]) -> int:
    labels = hashes[ref[0]].labels
    return -1 if labels is None else int(labels[ref[1]])


def run_checks(hashes: dict[str, Hashes], opts: CheckOptions) -> CheckReport:
    """Duplicates and label conflicts among ``hashes`` (train/val/test)."""
    t0 = time.perf_counter()
    hashes = {s: hashes[s] for s in SPLITS if s in hashes}
    report = CheckReport(names={s: h.names for s, h in hashes.items()})
    within = dict.fromkeys(hashes, 0)
    across: dict[str, int] = {}
    conflicts, exact_keys = 0, set()
    k = opts.examples

    def example(kind: str, a: tuple[str, int], b: tuple[str, int]) -> None:
        if sum(p.kind == kind for p in report.pairs) < k:
            report.pairs.append(Pair(kind, a, b))

    for group in _exact_groups(hashes):
        first = group[0]
        for ref in group[1:]:
            if ref[0] == first[0]:
                within[ref[0]] += 1
                example("exact_within_split", first, ref)
        for a, b in combinations(group, 2):
            if a[0] != b[0]:
                key = f"{a[0]}/{b[0]}"
                across[key] = across.get(key, 0) + 1
                exact_keys.add((a, b))
                example("exact_across_splits", a, b)
        labels = {_label(hashes, r) for r in group} - {-1}
        if len(labels) > 1:
            conflicts += 1
            a = next(r for r in group if _label(hashes, r) != _label(hashes, first))
            example("label_conflicts", first, a)
    near: dict[str, int] = {}
    for sa, sb in combinations(hashes, 2):
        ha, hb = hashes[sa], hashes[sb]
        pairs = near_pairs(ha, hb, opts.near_max_bits, opts.near_max_diff)
        pairs = pairs[ha.exact[pairs[:, 0]] != hb.exact[pairs[:, 1]]]  # exact ones counted above
        near[f"{sa}/{sb}"] = len(pairs)
        for i, j in pairs.tolist():
            a, b = (sa, i), (sb, j)
            example("near_across_splits", a, b)
            la, lb = _label(hashes, a), _label(hashes, b)
            if la >= 0 and lb >= 0 and la != lb:
                conflicts += 1
                example("label_conflicts", a, b)
    report.counts = {
        "images": {s: len(h.exact) for s, h in hashes.items()},
        "exact_within_split": sum(within.values()),
        "exact_across_splits": sum(across.values()),
        "near_across_splits": sum(near.values()),
        "label_conflicts": conflicts,
        "by_split": {"exact_within": within, "exact_across": across, "near_across": near},
    }
    report.seconds = time.perf_counter() - t0
    return report


def describe(report: CheckReport) -> str:
    c = report.counts
    return (
        f"{c['exact_across_splits']} exact and {c['near_across_splits']} near duplicate pair(s) "
        f"across splits, {c['exact_within_split']} exact duplicate(s) within a split, "
        f"{c['label_conflicts']} label conflict(s)"
    )


def act_on(report: CheckReport, opts: CheckOptions, source: str) -> None:
    """Log the report; ``leakage=error`` raises one line naming the leaked pairs."""
    examples = report.examples()
    leaked = [
        f"{a} = {b}"
        for kind in ("exact_across_splits", "near_across_splits")
        for a, b in examples.get(kind, [])
    ]
    if opts.leakage == "error" and report.leaked:
        raise DataError(
            f"{source}: data leakage: {describe(report)}; e.g. {'; '.join(leaked)} "
            f"(data.checks.leakage=warn trains anyway)"
        )
    found = any(v for k, v in report.counts.items() if isinstance(v, int))
    (log.warning if found else log.info)(
        "data checks (%.2f s): %s", report.seconds, describe(report)
    )
    for kind, pairs in examples.items():
        for a, b in pairs:
            log.warning("  %s: %s <-> %s", kind, a, b)


def save_report(path: Path, report: CheckReport, opts: CheckOptions) -> None:
    """Keep a fixed data set's report (counts and example pairs) for the next run."""
    pairs = [[p.kind, *p.a, *p.b] for p in report.pairs]
    data = {"options": asdict(opts) | {"leakage": None}, "counts": report.counts, "pairs": pairs}
    with contextlib.suppress(OSError):  # a read-only data dir: check again next time
        atomic_write_text(path, json.dumps(data))


def load_report(
    path: Path, opts: CheckOptions, sizes: dict[str, int] | None = None
) -> CheckReport | None:
    """The saved report if it was made with the same options on splits of these ``sizes``."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if data.get("options") != asdict(opts) | {"leakage": None}:
        return None
    if sizes is not None and data.get("counts", {}).get("images") != sizes:
        return None
    pairs = [Pair(k, (a, int(i)), (b, int(j))) for k, a, i, b, j in data["pairs"]]
    return CheckReport(counts=data["counts"], pairs=pairs)


__all__ = ["CheckOptions", "CheckReport", "act_on", "load_report", "run_checks", "save_report"]
